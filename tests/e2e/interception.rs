//! Interception and attribution of real clients.
use std::process::Command;

use tollgate::record::DecisionLabel;
use tollgate_e2e::{
    Agent, output, postgres, require_root,
    servers::{HTTP_BODY, Server},
    stderr, stdout,
};

use crate::{assert_metrics_match_records, first_line_pid};

#[test]
fn curl_and_psql_in_a_job_are_intercepted_and_attributed() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let http = Server::http("127.0.0.1:0");
    let agent = Agent::start();
    // The agent reads a process's exe from /proc when it handles the connect; a client
    // gone within a millisecond of its connect is recorded without it (docs/user-guide.md).
    let url = format!("http://127.0.0.1:{}/slow", http.port());
    let sql = "select 42 as answer, current_user, length(version()) > 10";

    let direct_curl = output(Command::new("curl").args(["-sS", &url]));
    let direct_psql = output(Command::new("psql").args(&pg.psql_args("127.0.0.1", sql)[1..]));
    assert!(direct_curl.status.success() && direct_psql.status.success());
    assert_eq!(stdout(&direct_curl), HTTP_BODY);

    let labels = [("repo", "acme/api"), ("workflow", "deploy")];
    let job_curl = agent.run_job(
        &labels,
        &["sh", "-c", &format!("echo $$ >&2; exec curl -sS {url}")],
    );
    assert!(
        job_curl.status.success(),
        "curl in job: {}",
        stderr(&job_curl)
    );
    assert_eq!(
        stdout(&job_curl),
        stdout(&direct_curl),
        "curl output differs in a job"
    );
    let curl_pid = first_line_pid(&stderr(&job_curl));

    let psql = pg.psql_args("127.0.0.1", sql).join("' '");
    let job_psql = agent.run_job(
        &labels,
        &["sh", "-c", &format!("echo $$ >&2; exec '{psql}'")],
    );
    assert!(
        job_psql.status.success(),
        "psql in job: {}",
        stderr(&job_psql)
    );
    assert_eq!(
        stdout(&job_psql),
        stdout(&direct_psql),
        "psql output differs in a job"
    );
    let psql_pid = first_line_pid(&stderr(&job_psql));

    let records = agent.wait_sessions(None, 2);
    assert_eq!(
        records.len(),
        2,
        "exactly one record per connection: {records:?}"
    );
    for (comm, pid, destination) in [
        ("curl", curl_pid, format!("127.0.0.1:{}", http.port())),
        ("psql", psql_pid, format!("127.0.0.1:{}", pg.port)),
    ] {
        let s = records
            .iter()
            .find(|s| s.comm.as_deref() == Some(comm))
            .unwrap_or_else(|| panic!("no {comm} record in {records:?}"));
        assert_eq!(s.pid.map(u64::from), Some(pid), "{comm} pid");
        assert_eq!(s.uid, Some(0), "{comm} uid");
        assert_eq!(s.gid, Some(0), "{comm} gid");
        assert_eq!(
            s.destination.as_deref(),
            Some(destination.as_str()),
            "{comm} destination"
        );
        assert_eq!(s.job_labels["repo"], "acme/api", "{comm} labels");
        assert_eq!(s.job_labels["workflow"], "deploy", "{comm} labels");
        assert_eq!(s.decision, DecisionLabel::Allow);
        assert!(s.reason.contains("default allow"), "{s:?}");
        assert!(
            s.exe.as_deref().is_some_and(|exe| exe.ends_with(comm)),
            "{comm} exe: {s:?}"
        );
        assert!(s.attributed);
        assert!(s.bytes_up > 0 && s.bytes_down > 0);
        assert!(s.error.is_none(), "{s:?}");
        assert!(s.source.starts_with("127.0.0.1:"));
    }
    assert_ne!(
        records[0].job_id, records[1].job_id,
        "one job per tollgate run"
    );
    assert!(agent.jobs().is_empty(), "jobs ended with their commands");
    assert_metrics_match_records(&agent);
}

#[test]
fn clients_outside_jobs_are_not_intercepted() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let http = Server::http("127.0.0.1:0");
    let agent = Agent::start();
    let curl =
        output(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{}/", http.port())]));
    assert!(curl.status.success());
    let psql = output(Command::new("psql").args(&pg.psql_args("127.0.0.1", "select 1")[1..]));
    assert!(psql.status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        agent.sessions(None).is_empty(),
        "direct clients were recorded"
    );
    assert_eq!(agent.metric("tollgate_proxy_intercepted_total"), 0.0);
    assert_eq!(
        agent.metric("tollgate_bpf_events_total{event=\"redirected\"}"),
        0.0
    );

    // A process outside any job that connects to the proxy itself has no kernel record:
    // it is refused and recorded as unattributed.
    let probe = output(Command::new("python3").args([
        "-c",
        &format!(
            "import socket\ns=socket.create_connection(('127.0.0.1',{}))\n\
             try:\n  s.sendall(b'x'); print(repr(s.recv(1)))\nexcept OSError as e:\n  print('reset', e.errno)",
            agent.proxy_port
        ),
    ]));
    assert!(
        stdout(&probe).starts_with("reset") || stdout(&probe).trim() == "b''",
        "{}",
        stdout(&probe)
    );
    let records = agent.wait_sessions(None, 1);
    assert_eq!(records[0].decision, DecisionLabel::Unattributed);
    assert!(!records[0].attributed);
    assert_eq!(agent.metric("tollgate_proxy_unattributed_total"), 1.0);
    assert_metrics_match_records(&agent);
}

#[test]
fn ipv6_and_ipv4_mapped_destinations_are_recorded_canonically() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let http6 = Server::http("[::1]:0");
    let http4 = Server::http("127.0.0.1:0");
    let agent = Agent::start();
    let labels = [("repo", "acme/v6")];
    for url in [
        format!("http://[::1]:{}/", http6.port()),
        format!("http://[::ffff:127.0.0.1]:{}/", http4.port()),
    ] {
        let out = agent.run_job(&labels, &["curl", "-sS", "-g", &url]);
        assert!(out.status.success(), "{url}: {}", stderr(&out));
        assert_eq!(stdout(&out), HTTP_BODY);
    }
    let psql = pg.psql_args("::1", "select 'v6'");
    let psql: Vec<&str> = psql.iter().map(String::as_str).collect();
    let out = agent.run_job(&labels, &psql);
    assert!(out.status.success(), "psql -h ::1: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "v6");

    let records = agent.wait_sessions(None, 3);
    let destinations: Vec<&str> = records
        .iter()
        .map(|s| s.destination.as_deref().unwrap_or_default())
        .collect();
    for expected in [
        format!("[::1]:{}", http6.port()),
        format!("127.0.0.1:{}", http4.port()),
        format!("[::1]:{}", pg.port),
    ] {
        assert!(
            destinations.contains(&expected.as_str()),
            "{expected} not in {destinations:?}"
        );
    }
    assert!(
        !destinations.iter().any(|d| d.contains("ffff")),
        "IPv4-mapped destination not canonical: {destinations:?}"
    );
    assert_metrics_match_records(&agent);
}

#[test]
fn getpeername_in_a_job_returns_the_original_destination() {
    if !require_root() {
        return;
    }
    let http4 = Server::http("127.0.0.1:0");
    let http6 = Server::http("[::1]:0");
    let agent = Agent::start();
    let script = format!(
        "import socket\n\
         s=socket.create_connection(('127.0.0.1',{p4})); print(s.getpeername()); s.close()\n\
         s=socket.create_connection(('::1',{p6})); print(s.getpeername()[:2]); s.close()\n\
         s=socket.socket(socket.AF_INET6); s.connect(('::ffff:127.0.0.1',{p4})); print(s.getpeername()[:2]); s.close()\n",
        p4 = http4.port(),
        p6 = http6.port()
    );
    let out = agent.run_job(&[("repo", "acme/peer")], &["python3", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = format!(
        "('127.0.0.1', {p4})\n('::1', {p6})\n('::ffff:127.0.0.1', {p4})\n",
        p4 = http4.port(),
        p6 = http6.port()
    );
    assert_eq!(stdout(&out), expected);
    assert_eq!(agent.wait_sessions(None, 3).len(), 3);
}

#[test]
fn a_jobs_direct_connect_to_the_proxy_listener_is_refused() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let script = format!(
        "import socket\n\
         for host in ('127.0.0.1', '::1', '::ffff:127.0.0.1', '127.0.0.2'):\n\
         \x20   try:\n\
         \x20       socket.create_connection((host, {port}), timeout=3); print(host, 'connected')\n\
         \x20   except OSError as e:\n\
         \x20       print(host, e.errno)\n",
        port = agent.proxy_port
    );
    let out = agent.run_job(&[("repo", "acme/sneaky")], &["python3", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let eperm = libc::EPERM;
    assert_eq!(
        stdout(&out),
        format!("127.0.0.1 {eperm}\n::1 {eperm}\n::ffff:127.0.0.1 {eperm}\n127.0.0.2 {eperm}\n")
    );
    assert_eq!(
        agent.metric("tollgate_bpf_events_total{event=\"refused_proxy_direct\"}"),
        4.0
    );
    assert_eq!(agent.metric("tollgate_proxy_intercepted_total"), 0.0);
}

#[test]
fn a_refused_upstream_is_mirrored_as_a_prompt_reset() {
    if !require_root() {
        return;
    }
    // The proxy path (on the kernel path the job sees the refusal itself).
    let agent = Agent::start_with_proxy("kernel_verdicts = false");
    let closed = tollgate_e2e::ephemeral_port();
    let script = format!(
        "import socket, time\n\
         t=time.monotonic()\n\
         try:\n\
         \x20   s=socket.create_connection(('127.0.0.1',{closed}), timeout=5)\n\
         \x20   s.sendall(b'hello'); r=s.recv(10); print('eof' if r==b'' else 'data')\n\
         except OSError as e:\n\
         \x20   print('error', e.errno)\n\
         print(round(time.monotonic()-t, 3))\n"
    );
    let out = agent.run_job(&[("repo", "acme/closed")], &["python3", "-c", &script]);
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(format!("error {}", libc::ECONNRESET).as_str()),
        "{text}"
    );
    let elapsed: f64 = lines.next().and_then(|l| l.parse().ok()).expect("elapsed");
    assert!(elapsed < 1.0, "reset took {elapsed}s");
    let records = agent.wait_sessions(None, 1);
    assert!(
        records[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{:?}",
        records[0]
    );
    assert_eq!(
        agent.metric("tollgate_proxy_upstream_connect_errors_total{kind=\"refused\"}"),
        1.0
    );
    assert_metrics_match_records(&agent);
}

#[test]
fn a_remote_host_in_a_network_namespace_is_intercepted() {
    if !require_root() {
        return;
    }
    let mut host = tollgate_e2e::netns::NetnsHost::create(7);
    let www = tempfile::tempdir().expect("tempdir");
    std::fs::write(www.path().join("index.txt"), "from the netns host\n").expect("write");
    host.serve_http(8080, www.path());
    let agent = Agent::start();
    let url = format!("http://{}:8080/index.txt", host.peer_ip);

    let direct = output(Command::new("curl").args(["-sS", &url]));
    assert_eq!(stdout(&direct), "from the netns host\n");
    let job = agent.run_job(&[("repo", "acme/remote")], &["curl", "-sS", &url]);
    assert!(job.status.success(), "{}", stderr(&job));
    assert_eq!(stdout(&job), stdout(&direct));

    let records = agent.wait_sessions(None, 1);
    assert_eq!(records.len(), 1, "only the job's connection is recorded");
    assert_eq!(
        records[0].destination.as_deref(),
        Some(format!("{}:8080", host.peer_ip).as_str())
    );
    assert_eq!(records[0].comm.as_deref(), Some("curl"));
    assert_eq!(records[0].job_labels["repo"], "acme/remote");
    assert_metrics_match_records(&agent);
}
