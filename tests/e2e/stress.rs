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
