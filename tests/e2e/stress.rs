//! Many short connections from concurrent jobs: every one attributed to its own job and
//! process, none unattributed, and the kernel maps empty afterwards.
use std::{collections::BTreeMap, process::Stdio, time::Duration};

use tollgate::record::DecisionLabel;
use tollgate_e2e::{Agent, require_root, servers::Server, stderr, stdout, wait_for};

use crate::assert_metrics_match_records;

const CONNECTIONS: usize = 5000;

const CLIENT: &str = "\
import os, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
ports = []
for _ in range(n):
    s = socket.create_connection(('127.0.0.1', port))
    ports.append(s.getsockname()[1])
    s.sendall(b'x')
    s.close()
print(os.environ['TOLLGATE_JOB_ID'])
print(os.getpid())
print(','.join(map(str, ports)))
";

#[test]
fn two_concurrent_jobs_make_5000_connections_each_without_misattribution() {
    if !require_root() {
        return;
    }
    let sink = Server::sink("127.0.0.1:0");
    let agent = Agent::start();
    let n = CONNECTIONS.to_string();
    let port = sink.port().to_string();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            agent
                .run_command(&[("job", name)], &["python3", "-c", CLIENT, &port, &n])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("tollgate run")
        })
        .collect();
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output().expect("tollgate run");
        assert!(out.status.success(), "client failed: {}", stderr(&out));
        let text = stdout(&out);
        let mut lines = text.lines();
        let job_id = lines.next().expect("job id");
        let pid: u64 = lines.next().and_then(|l| l.parse().ok()).expect("pid");
        // The kernel may reuse a source port (TIME_WAIT reuse on loopback): compare
        // the multiset of (source, count).
        let mut ports: BTreeMap<String, usize> = BTreeMap::new();
        for port in lines.next().expect("ports").split(',') {
            *ports.entry(format!("127.0.0.1:{port}")).or_default() += 1;
        }
        assert_eq!(ports.values().sum::<usize>(), CONNECTIONS);
        let sessions = agent.wait_sessions(Some(job_id), CONNECTIONS);
        assert_eq!(sessions.len(), CONNECTIONS, "job {job_id}: records");
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for s in &sessions {
            assert_eq!(s.pid.map(u64::from), Some(pid), "misattributed: {s:?}");
            assert_eq!(s.decision, DecisionLabel::Allow, "{s:?}");
            let source = s.source.as_str();
            assert!(ports.contains_key(source), "foreign source: {s:?}");
            *seen.entry(source.to_owned()).or_default() += 1;
        }
        assert_eq!(seen, ports, "job {job_id}: every connection recorded once");
        total += CONNECTIONS;
    }
    assert_eq!(agent.metric("tollgate_proxy_unattributed_total"), 0.0);
    assert_eq!(
        agent.metric("tollgate_proxy_reused_port_records_total{outcome=\"ambiguous\"}"),
        0.0
    );
    // Each connection went through the proxy or straight through on a kernel verdict.
    assert_eq!(
        agent.metric("tollgate_proxy_intercepted_total")
            + agent.metric("tollgate_kernel_verdicts_connects_total{outcome=\"hit\"}"),
        total as f64
    );
    wait_for("empty maps", Duration::from_secs(10), || {
        let maps = agent.status().maps;
        maps.is_some_and(|m| m.conn_by_cookie == 0 && m.conn_by_tuple == 0)
            .then_some(())
    });
    assert_eq!(
        agent.metric("tollgate_bpf_map_entries{map=\"conn_by_tuple\"}"),
        0.0
    );
    assert_eq!(
        agent.metric("tollgate_bpf_map_entries{map=\"conn_by_cookie\"}"),
        0.0
    );
    assert_metrics_match_records(&agent);
}

/// Two connections from one source port, to two destinations, while the proxy is
/// stopped: the second reuses the first's port (its TIME_WAIT) before the proxy accepted
/// the first. A proxy that lags on a busy host meets the same. Each is recorded with its
/// own destination, none unattributed: a newer connection does not take the place of an
/// older one that still waits with the same tuple.
const REUSE_CLIENT: &str = "\
import os, socket, sys, time
go, first, second = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
probe = socket.socket()
probe.bind(('127.0.0.1', 0))
port = probe.getsockname()[1]
probe.close()
open(go + '.ready', 'w').close()
while not os.path.exists(go):
    time.sleep(0.01)
for dst in (first, second):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', port))
    s.settimeout(30)
    s.connect(('127.0.0.1', dst))
    s.sendall(b'x')
    s.close()
    # The close becomes a TIME_WAIT once the FIN is acknowledged.
    time.sleep(0.5)
print(os.environ['TOLLGATE_JOB_ID'])
print(port)
";

#[test]
fn a_source_port_reused_before_the_proxy_accepted_keeps_each_connection_its_own_record() {
    if !require_root() {
        return;
    }
    let (first, second) = (Server::sink("127.0.0.1:0"), Server::sink("127.0.0.1:0"));
    let agent = Agent::start_with_proxy("kernel_verdicts = false");
    let dir = tempfile::tempdir().expect("tempdir");
    let go = dir.path().join("go");
    let go_arg = go.to_string_lossy().into_owned();
    let ports = [first.port().to_string(), second.port().to_string()];
    let child = agent
        .run_command(
            &[("job", "reuse")],
            &["python3", "-c", REUSE_CLIENT, &go_arg, &ports[0], &ports[1]],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate run");
    // The job's client runs (it waits for `go`); the proxy stops accepting. (A job
    // that merely exists may not have started its command: enrolling it needs the
    // agent, which then would be stopped before it, and the test would not test.)
    let ready = dir.path().join("go.ready");
    wait_for(
        "the job's client",
        tollgate_e2e::scaled(Duration::from_secs(20)),
        || ready.exists().then_some(()),
    );
    agent.signal(libc::SIGSTOP);
    std::fs::write(&go, b"").expect("go");
    // Long enough for the second connect to be made, past the kernel's 1 s SYN retry.
    std::thread::sleep(Duration::from_secs(3));
    agent.signal(libc::SIGCONT);
    let out = child.wait_with_output().expect("tollgate run");
    assert!(out.status.success(), "client failed: {}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let job_id = lines.next().expect("job id");
    let source = format!("127.0.0.1:{}", lines.next().expect("port"));
    let sessions = agent.wait_sessions(Some(job_id), 2);
    let mut destinations: Vec<String> = sessions
        .iter()
        .map(|s| {
            assert_eq!(s.source, source, "{s:?}");
            assert!(s.attributed, "{s:?}");
            s.destination.clone().unwrap_or_default()
        })
        .collect();
    destinations.sort();
    let mut expected = vec![
        format!("127.0.0.1:{}", first.port()),
        format!("127.0.0.1:{}", second.port()),
    ];
    expected.sort();
    assert_eq!(
        destinations, expected,
        "each connection its own destination"
    );
    assert_eq!(agent.metric("tollgate_proxy_unattributed_total"), 0.0);
    // The first, reset by the second's SYN, was accepted dead while both records
    // waited, and was told apart by the kernel's marks (not by slot or age alone).
    assert_eq!(
        agent.metric("tollgate_proxy_reused_port_records_total{outcome=\"chosen\"}"),
        1.0
    );
    wait_for("an empty tuple map", Duration::from_secs(10), || {
        agent
            .status()
            .maps
            .is_some_and(|m| m.conn_by_tuple == 0)
            .then_some(())
    });
}
