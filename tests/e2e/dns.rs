//! DNS of jobs: every query (UDP and TCP, v4 and v6, to any server the job names) is
//! answered by Tollgate's resolver, decided by name (`dns:query`) and recorded. The same
//! client outside a job asks the upstream directly, for the paired control.
use std::process::Command;

use tollgate::record::DecisionLabel;
use tollgate::record::DnsRecord;
use tollgate_e2e::{
    Agent, dns::Upstream, output, require_root, servers::Server, stderr, stdout, wait_for,
};

const POLICY: &str = r#"
@id("connect")
permit(principal, action == Action::"connect", resource);

@id("corp-dns")
permit(principal, action == Action::"dns:query", resource)
when { resource.hostname like "*.corp.example" };
"#;

fn agent(upstream: &Upstream) -> Agent {
    let extra = format!("[dns]\nupstreams = [\"127.0.0.1:{}\"]\n", upstream.port);
    Agent::start_with_policy("", &extra, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("dns.cedar"), POLICY).expect("policy");
    })
}

fn upstream() -> Upstream {
    Upstream::start(&[
        ("corp.example", "127.0.0.1"),
        ("denied.example", "127.0.0.1"),
    ])
}

fn queries(agent: &Agent, n: usize) -> Vec<DnsRecord> {
    wait_for(
        &format!("{n} DNS records"),
        std::time::Duration::from_secs(10),
        || {
            let queries = agent.dns_queries(&["--limit", "1000"]);
            (queries.len() >= n).then_some(queries)
        },
    )
}

/// dig's one-line answer: the address, or `status: CODE` when there is none.
fn dig(agent: Option<&Agent>, args: &[&str]) -> String {
    let mut argv = vec!["dig", "+tries=1", "+time=3"];
    argv.extend_from_slice(args);
    let out = match agent {
        Some(agent) => agent.run_job(&[("repository", "acme/api")], &argv),
        None => output(Command::new("dig").args(&argv[1..])),
    };
    let text = stdout(&out);
    if let Some(line) = text
        .lines()
        .find(|l| !l.starts_with(';') && l.contains("\tA\t") || l.contains("\tAAAA\t"))
    {
        return line.rsplit('\t').next().unwrap_or_default().to_owned();
    }
    text.lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| format!("status: {}", s.split(',').next().unwrap_or_default()))
        .unwrap_or_else(|| format!("no answer: {text}{}", stderr(&out)))
}

#[test]
fn a_jobs_dns_goes_to_the_resolver_and_is_decided_by_name() {
    if !require_root() {
        return;
    }
    let upstream = upstream();
    let agent = agent(&upstream);
    let port = upstream.port.to_string();

    // Control: directly, the upstream answers both names.
    for name in ["api.corp.example", "www.denied.example"] {
        assert_eq!(dig(None, &["-p", &port, "@127.0.0.1", name]), "127.0.0.1");
    }
    // In a job, whatever server is named (here one that does not exist, over UDP and
    // TCP, v4 and v6), the resolver answers the permitted name and refuses the other.
    for server in ["@192.0.2.1", "@::1"] {
        for transport in ["+notcp", "+tcp"] {
            assert_eq!(
                dig(Some(&agent), &[transport, server, "api.corp.example"]),
                "127.0.0.1",
                "{server} {transport}"
            );
            assert_eq!(
                dig(Some(&agent), &[transport, server, "www.denied.example"]),
                "status: REFUSED",
                "{server} {transport}"
            );
        }
    }
    let recorded = queries(&agent, 8);
    assert_eq!(recorded.len(), 8, "{recorded:#?}");
    for q in &recorded {
        assert!(q.job_id.is_some(), "attributed: {q:?}");
        // dig sends from one of its threads (isc-net-*), which is what the kernel saw.
        let comm = q.comm.as_deref().unwrap_or_default();
        assert!(comm == "dig" || comm.starts_with("isc-"), "{q:?}");
        assert!(q.pid.is_some_and(|p| p > 1), "{q:?}");
        assert_eq!(q.qtype, "A");
        match Some(q.name.as_str()) {
            Some("api.corp.example") => {
                assert_eq!(q.decision, DecisionLabel::Allow, "{q:?}");
                assert_eq!(q.rcode, "NOERROR");
                assert_eq!(q.answers[0], "A 127.0.0.1");
                assert_eq!(q.policy_ids[0], "corp-dns");
            }
            Some("www.denied.example") => {
                assert_eq!(q.decision, DecisionLabel::Deny, "{q:?}");
                assert_eq!(q.rcode, "REFUSED");
                assert!(q.answers.is_empty());
            }
            other => panic!("unexpected name {other:?}"),
        }
    }
    let servers: Vec<&str> = recorded
        .iter()
        .filter_map(|q| q.server.as_deref())
        .collect();
    assert!(
        servers.contains(&"192.0.2.1:53") && servers.contains(&"[::1]:53"),
        "{servers:?}"
    );
    let transports: Vec<&str> = recorded.iter().map(|q| q.transport.as_str()).collect();
    assert_eq!(transports.iter().filter(|t| **t == "tcp").count(), 4);
    // The denied name never reached the upstream from the job; the permitted one was
    // asked once and then answered from the cache.
    assert_eq!(
        upstream.queries_for("www.denied.example"),
        1,
        "only the control's"
    );
    assert!(recorded.iter().any(|q| q.cached), "{recorded:#?}");
    assert_eq!(
        agent.metric("tollgate_dns_queries_total{decision=\"deny\",rcode=\"REFUSED\"}"),
        4.0
    );
}

#[test]
fn getent_and_curl_resolve_by_name_through_the_resolver() {
    if !require_root() {
        return;
    }
    let upstream = upstream();
    let agent = agent(&upstream);
    let http = Server::http("127.0.0.1:0");
    let labels = [("repository", "acme/api")];
    // The host's resolver configuration (whatever nameserver it names) is used as is.
    let getent = agent.run_job(&labels, &["getent", "ahostsv4", "web.corp.example"]);
    assert!(getent.status.success(), "{}", stderr(&getent));
    assert!(stdout(&getent).contains("127.0.0.1"), "{}", stdout(&getent));
    let refused = agent.run_job(&labels, &["getent", "ahostsv4", "web.denied.example"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "not found: {}",
        stdout(&refused)
    );

    let url = |host: &str| format!("http://{host}:{}/", http.port());
    let curl = agent.run_job(&labels, &["curl", "-sS", "-4", &url("web.corp.example")]);
    assert!(curl.status.success(), "{}", stderr(&curl));
    assert_eq!(stdout(&curl), tollgate_e2e::servers::HTTP_BODY);
    let denied = agent.run_job(&labels, &["curl", "-sS", "-4", &url("web.denied.example")]);
    assert_eq!(
        denied.status.code(),
        Some(6),
        "could not resolve: {}",
        stderr(&denied)
    );
    assert_eq!(http.accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The connection curl made is on record as well, with its job.
    let sessions = agent.wait_sessions(None, 1);
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    assert_eq!(sessions[0].comm.as_deref(), Some("curl"));
}

#[test]
fn a_malformed_dns_packet_gets_formerr_and_the_resolver_keeps_serving() {
    if !require_root() {
        return;
    }
    let upstream = upstream();
    let agent = agent(&upstream);
    let script = "import socket\n\
                  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n\
                  s.sendto(b'\\x12\\x34 not a dns message', ('192.0.2.1', 53))\n\
                  data, peer = s.recvfrom(512)\n\
                  print(data[:2].hex(), data[3] & 15, peer[0], peer[1])\n";
    let out = agent.run_job(&[("repository", "acme/api")], &["python3", "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
    // FORMERR (1), with the query's id, from the server the job addressed.
    assert_eq!(stdout(&out), "1234 1 192.0.2.1 53\n");
    assert_eq!(
        dig(Some(&agent), &["@192.0.2.1", "api.corp.example"]),
        "127.0.0.1"
    );
    let recorded = queries(&agent, 2);
    let malformed: Vec<_> = recorded
        .iter()
        .filter(|q| q.decision == DecisionLabel::Malformed)
        .collect();
    assert_eq!(malformed.len(), 1, "{recorded:#?}");
    assert_eq!(malformed[0].rcode, "FORMERR");
    assert!(
        malformed[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("malformed"))
    );
}

#[test]
fn a_dns_named_target_matches_by_the_name_the_job_resolved() {
    if !require_root() {
        return;
    }
    let upstream = upstream();
    let http = Server::http("127.0.0.1:0");
    // The agent cannot resolve the name itself (the host's resolver does not know it):
    // only what the job resolved can make the address this target.
    let extra = format!(
        "[dns]\nupstreams = [\"127.0.0.1:{}\"]\n\n\
         [[targets]]\nname = \"web\"\ndns_names = [\"web.corp.example\"]\nports = [{}]\n",
        upstream.port,
        http.port()
    );
    let policy = r#"
@id("web-only")
permit(principal, action == Action::"connect", resource) when { resource.name == "web" };
@id("corp-dns")
permit(principal, action == Action::"dns:query", resource)
when { resource.hostname like "*.corp.example" };
"#;
    let agent = Agent::start_with_policy("", &extra, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("web.cedar"), policy).expect("policy");
    });
    let labels = [("repository", "acme/api")];
    let url = |host: &str| format!("http://{host}:{}/", http.port());
    // Control: directly, the address answers.
    let direct = output(Command::new("curl").args(["-sS", &url("127.0.0.1")]));
    assert!(direct.status.success(), "{}", stderr(&direct));
    // By the name the job resolved: the target, allowed.
    let by_name = agent.run_job(&labels, &["curl", "-sS", "-4", &url("web.corp.example")]);
    assert!(by_name.status.success(), "{}", stderr(&by_name));
    assert_eq!(stdout(&by_name), tollgate_e2e::servers::HTTP_BODY);
    // By address only, in a job that resolved nothing: no target, default deny.
    let by_ip = agent.run_job(&labels, &["curl", "-sS", &url("127.0.0.1")]);
    assert!(!by_ip.status.success(), "denied without the name");

    let sessions = agent.wait_sessions(None, 2);
    let allowed = sessions
        .iter()
        .find(|s| s.decision == DecisionLabel::Allow)
        .expect("the allowed connection");
    assert_eq!(
        allowed.hostname.as_deref(),
        Some("web.corp.example"),
        "{allowed:?}"
    );
    assert_eq!(allowed.target.as_deref(), Some("web"));
    assert_eq!(allowed.policy_ids[0], "web-only");
    let denied = sessions
        .iter()
        .find(|s| s.decision == DecisionLabel::Deny)
        .expect("the denied connection");
    assert!(denied.hostname.is_none(), "{denied:?}");
    assert_eq!(denied.target.as_deref(), Some("(unknown)"));
}
