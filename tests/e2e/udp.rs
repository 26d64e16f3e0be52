//! UDP of jobs other than DNS: decided per flow (`udp:send`), denied by default (refused
//! in the kernel with EPERM), carried by the relay when permitted, and recorded with its
//! datagrams and bytes each way. The same probe runs directly for the paired control:
//! what a permitted flow shows the job is what it shows the probe outside a job.
use std::{process::Command, sync::LazyLock, time::Duration};

use tollgate::record::{DecisionLabel, UdpFlowRecord};
use tollgate_e2e::{
    Agent, netns::NetnsHost, output, require_root, servers::Server, stderr, stdout, wait_for,
};

/// The UDP probe (tests/src/bin/udp_probe.rs).
static PROBE: LazyLock<String> =
    LazyLock::new(|| tollgate_e2e::helper(env!("CARGO_BIN_EXE_udp_probe")));

/// An echo server outside every job, on `bind` (port 0: any free one).
struct Echo {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Echo {
    fn start(bind: &str) -> Self {
        let mut child = Command::new(&*PROBE)
            .args(["echo", bind])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("echo server");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut out, &mut line).expect("echo says where it listens");
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("echo: {line:?}"));
        Self { child, addr }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn probe(agent: Option<&Agent>, args: &[&str]) -> String {
    let mut argv = vec![PROBE.as_str()];
    argv.extend_from_slice(args);
    let out = match agent {
        Some(agent) => agent.run_job(&[("repository", "acme/api")], &argv),
        None => output(Command::new(&*PROBE).args(args)),
    };
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

fn flows(agent: &Agent, what: &str, done: impl Fn(&[UdpFlowRecord]) -> bool) -> Vec<UdpFlowRecord> {
    wait_for(what, Duration::from_secs(15), || {
        let flows = agent.udp_flows(&["--limit", "1000"]);
        done(&flows).then_some(flows)
    })
}

#[test]
fn udp_is_refused_in_the_kernel_until_a_policy_permits_it() {
    if !require_root() {
        return;
    }
    let echo = Echo::start("127.0.0.1:0");
    let http = Server::http("127.0.0.1:0");
    // No policy at all: connects are allowed, UDP other than DNS is not.
    let agent = Agent::start();
    let dest = echo.addr.to_string();
    let direct = probe(None, &["sendto", &dest, "1"]);
    assert!(
        direct.contains("reply 0 probe-0- from"),
        "control: {direct}"
    );

    // In one job: the datagram, a connected UDP socket and QUIC's port are refused at
    // once (EPERM, so clients fall back), while TCP to a server works.
    let script = format!(
        "{probe} sendto {dest} 1; {probe} connect {dest} 1; {probe} sendto 127.0.0.1:443 1; \
         curl -sS http://127.0.0.1:{}/",
        http.port(),
        probe = *PROBE,
    );
    let out = agent.run_job(&[("repository", "acme/api")], &["sh", "-c", &script]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("error"))
            .collect::<Vec<_>>(),
        [
            "error sendto 0 EPERM",
            "error connect EPERM",
            "error sendto 0 EPERM"
        ],
        "{text}"
    );
    assert!(
        text.contains(tollgate_e2e::servers::HTTP_BODY.trim()),
        "{text}"
    );

    let recorded = flows(&agent, "3 refused flows", |f| f.len() >= 3);
    for flow in &recorded {
        assert_eq!(flow.decision, DecisionLabel::Deny, "{flow:?}");
        assert_eq!(flow.enforced_by, "kernel", "{flow:?}");
        assert!(flow.job_id.is_some(), "{flow:?}");
        assert_eq!(flow.comm, "udp_probe", "{flow:?}");
        assert!(flow.reason.contains("udp:send"), "{flow:?}");
    }
    let dsts: Vec<&str> = recorded.iter().map(|f| f.dst.as_str()).collect();
    assert!(
        dsts.contains(&dest.as_str()) && dsts.contains(&"127.0.0.1:443"),
        "{dsts:?}"
    );
    assert!(
        agent.metric("tollgate_udp_flows_total{decision=\"deny\",enforced_by=\"kernel\"}") >= 3.0
    );
    assert!(agent.metric("tollgate_bpf_events_total{event=\"refused_udp\"}") >= 3.0);
}

const POLICY: &str = r#"
@id("connect")
permit(principal, action == Action::"connect", resource);

@id("echo-udp")
permit(principal, action == Action::"udp:send", resource)
when { resource.port == ?PORT };
"#;

#[test]
fn permitted_udp_is_relayed_as_if_direct_and_other_udp_is_denied() {
    if !require_root() {
        return;
    }
    let echo4 = Echo::start("127.0.0.1:0");
    let port = echo4.port();
    // The same port on ::1, for the IPv6 cases (kept until the end of the test).
    let _echo6 = Echo::start(&format!("[::1]:{port}"));
    let other = Echo::start("127.0.0.1:0");
    let mut netns = NetnsHost::create(13);
    let remote = format!("{}:{port}", netns.peer_ip);
    netns.spawn(&PROBE, &["echo", &remote]);
    wait_for(
        "the echo server in the netns",
        Duration::from_secs(10),
        || {
            probe(None, &["sendto", &remote, "1"])
                .contains("reply 0")
                .then_some(())
        },
    );
    let policy = POLICY.replace("?PORT", &port.to_string());
    let agent = Agent::start_with_policy("", "[udp]\nidle_timeout = \"2s\"\n", |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("udp.cedar"), policy).expect("policy");
    });

    // The same probe, directly and in a job, prints the same lines: every reply comes
    // from the address the job sent to, connected or not, v4, v6 and v4-mapped, on
    // loopback and to a host in a network namespace.
    let v4 = echo4.addr.to_string();
    let v6 = format!("[::1]:{port}");
    let mapped = format!("[::ffff:127.0.0.1]:{port}");
    for args in [
        vec!["sendto", v4.as_str(), "3"],
        vec!["connect", v4.as_str(), "3"],
        vec!["sendto", v6.as_str(), "3"],
        vec!["connect", v6.as_str(), "3"],
        vec!["sendto", mapped.as_str(), "2"],
        vec!["connect", mapped.as_str(), "2"],
        vec!["sendto", remote.as_str(), "2"],
        vec!["connect", remote.as_str(), "2"],
        // One socket, two destinations in turn: each reply from its own.
        vec!["alternate", v4.as_str(), remote.as_str(), "6"],
    ] {
        let direct = probe(None, &args);
        assert!(!direct.contains("error"), "control {args:?}: {direct}");
        assert_eq!(probe(Some(&agent), &args), direct, "{args:?}");
    }

    // Another port: the first datagram is dropped by the relay, the next are refused
    // in the kernel; the paired allowed flow in the same job works.
    let denied = other.addr.to_string();
    let script = format!(
        "{probe} sendto {denied} 3; {probe} sendto {v4} 1",
        probe = *PROBE
    );
    let out = agent.run_job(&[("repository", "acme/api")], &["sh", "-c", &script]);
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "sent 0\nerror recvfrom 0 timeout\nerror sendto 1 EPERM\nerror sendto 2 EPERM\n"
        ),
        "{text}"
    );
    assert!(text.contains("reply 0 probe-0- from"), "{text}");

    // Every flow is on record, complete once it has been idle: the allowed ones with
    // the datagrams and bytes each way.
    let recorded = flows(&agent, "the flows, ended", |flows| {
        flows.len() >= 12 && flows.iter().all(|f| f.ended.is_some())
    });
    let allowed: Vec<&UdpFlowRecord> = recorded
        .iter()
        .filter(|f| f.decision == DecisionLabel::Allow)
        .collect();
    for flow in &allowed {
        assert_eq!(flow.enforced_by, "relay", "{flow:?}");
        assert_eq!(flow.policy_ids[0], "echo-udp", "{flow:?}");
        assert_eq!(flow.packets_out, flow.packets_in, "{flow:?}");
        assert_eq!(flow.bytes_out, flow.bytes_in, "{flow:?}");
        assert!(flow.packets_out >= 1, "{flow:?}");
        assert!(flow.last_at >= flow.first_at, "{flow:?}");
        assert_eq!(flow.ended.as_deref(), Some("idle"), "{flow:?}");
    }
    // sendto: "probe-0-", "probe-1-" + 100 x, "probe-2-" + 200 x.
    assert!(
        allowed
            .iter()
            .any(|f| f.dst == v4.as_str() && f.packets_out == 3 && f.bytes_out == 8 * 3 + 300),
        "the 3-datagram v4 flow: {allowed:#?}"
    );
    let relay_denied: Vec<&UdpFlowRecord> = recorded
        .iter()
        .filter(|f| f.dst == denied.as_str())
        .collect();
    assert!(
        relay_denied.iter().any(|f| f.enforced_by == "relay"
            && f.decision == DecisionLabel::Deny
            && f.packets_out == 1),
        "{relay_denied:#?}"
    );
    assert!(
        relay_denied
            .iter()
            .any(|f| f.enforced_by == "kernel" && f.packets_out == 2),
        "{relay_denied:#?}"
    );
    assert!(
        agent.metric("tollgate_udp_flows_total{decision=\"allow\",enforced_by=\"relay\"}") >= 9.0
    );
}

#[test]
fn a_new_policy_ends_a_flow_it_no_longer_permits() {
    if !require_root() {
        return;
    }
    let echo = Echo::start("127.0.0.1:0");
    let policy = POLICY.replace("?PORT", &echo.port().to_string());
    let agent = Agent::start_with_policy("", "", |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("udp.cedar"), &policy).expect("policy");
    });
    let dest = echo.addr.to_string();
    assert!(probe(Some(&agent), &["sendto", &dest, "1"]).contains("reply 0"));
    // Without the UDP permit, the kernel refuses again at once.
    std::fs::write(
        agent.policy_dir().join("udp.cedar"),
        POLICY.split("@id(\"echo-udp\")").next().unwrap_or_default(),
    )
    .expect("policy");
    agent.signal(libc::SIGHUP);
    wait_for("the new policy", Duration::from_secs(15), || {
        (probe(Some(&agent), &["sendto", &dest, "1"]).trim() == "error sendto 0 EPERM")
            .then_some(())
    });
    flows(&agent, "the ended flow and the refusal", |flows| {
        flows
            .iter()
            .any(|f| f.decision == DecisionLabel::Allow && f.ended.as_deref() == Some("policy"))
            && flows
                .iter()
                .any(|f| f.enforced_by == "kernel" && f.decision == DecisionLabel::Deny)
    });
}

#[test]
fn flows_beyond_max_flows_are_refused_and_counted_not_kept() {
    if !require_root() {
        return;
    }
    let echoes: Vec<Echo> = (0..4).map(|_| Echo::start("127.0.0.1:0")).collect();
    let agent = Agent::start_with_policy("", "[udp]\nmax_flows = 2\n", |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(
            dir.join("udp.cedar"),
            r#"permit(principal, action == Action::"udp:send", resource);"#,
        )
        .expect("policy");
    });
    // One process, four destinations, one datagram each: two flows fit.
    let script = echoes
        .iter()
        .map(|e| format!("{} sendto {} 1", *PROBE, e.addr))
        .collect::<Vec<_>>()
        .join("; ");
    let out = agent.run_job(&[("repository", "acme/api")], &["sh", "-c", &script]);
    let text = stdout(&out);
    assert_eq!(text.matches("reply 0").count(), 2, "{text}");
    assert_eq!(
        text.matches("error recvfrom 0 timeout").count(),
        2,
        "{text}"
    );
    let recorded = flows(&agent, "the flows", |f| f.len() >= 3);
    assert_eq!(
        recorded
            .iter()
            .filter(|f| f.decision == DecisionLabel::Allow)
            .count(),
        2,
        "{recorded:#?}"
    );
    let refused: Vec<&UdpFlowRecord> = recorded
        .iter()
        .filter(|f| f.decision == DecisionLabel::Deny)
        .collect();
    assert!(!refused.is_empty(), "{recorded:#?}");
    for flow in &refused {
        assert!(flow.reason.contains("udp.max_flows (2)"), "{flow:?}");
    }
    let refused_datagrams: u64 = refused.iter().map(|f| f.packets_out).sum();
    assert_eq!(refused_datagrams, 2, "{refused:#?}");
}

#[test]
fn a_flow_that_reached_its_destination_survives_an_agent_kill() {
    if !require_root() {
        return;
    }
    let echo = Echo::start("127.0.0.1:0");
    let policy = POLICY.replace("?PORT", &echo.port().to_string());
    // Records wait 10 s for their batch: only the journal can keep this flow.
    let mut agent =
        Agent::start_with_policy("", "[recording]\nflush_interval = \"10s\"\n", |dir| {
            std::fs::create_dir_all(dir).expect("policy dir");
            std::fs::write(dir.join("udp.cedar"), &policy).expect("policy");
        });
    let script = format!("{} sendto {} 1; exec sleep 60", *PROBE, echo.addr);
    let mut job = agent
        .run_command(&[("repository", "acme/api")], &["sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("job");
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(job.stdout.take().expect("stdout")));
    let reply = lines
        .find_map(|line| {
            line.ok()
                .filter(|l| l.starts_with("reply") || l.starts_with("error"))
        })
        .expect("the probe's answer");
    assert!(reply.starts_with("reply 0"), "{reply}");
    agent.kill9();
    agent.start_again();
    let recorded = flows(&agent, "the flow, from the journal", |flows| {
        flows.iter().any(|f| f.decision == DecisionLabel::Allow)
    });
    let _ = job.kill();
    let _ = job.wait();
    let flow = recorded
        .iter()
        .find(|f| f.decision == DecisionLabel::Allow)
        .expect("the allowed flow");
    assert_eq!(flow.dst, echo.addr.to_string(), "{flow:?}");
    assert_eq!(flow.packets_out, 1, "{flow:?}");
    assert_eq!(
        flow.ended.as_deref(),
        Some("the agent stopped before the flow ended"),
        "{flow:?}"
    );
}
