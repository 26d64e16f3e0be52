//! The kernel path's event ring: while it is full, connects fall back to the proxy path
//! and none goes unrecorded; a pinned ring of another size is refused until cleanup.
use std::{process::Stdio, thread, time::Duration};

use serde_json::Value;
use tollgate_e2e::{Agent, require_root, servers::Server, stderr, stdout};

use super::{gets, paths};

/// Says `ready`, waits for the file `argv[3]`, then makes `n` connections that each send
/// a few bytes and close, as fast as it can; says how many it made.
const BURST: &str = r#"
import os, socket, sys, time
port, n, trigger = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print("ready", flush=True)
while not os.path.exists(trigger):
    time.sleep(0.005)
made = 0
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"ring-full burst\n")
    s.close()
    made += 1
print("made", made, flush=True)
"#;

#[test]
fn while_the_event_ring_is_full_connects_take_the_proxy_path_and_none_goes_unrecorded() {
    if !require_root() {
        return;
    }
    const N: usize = 200;
    let sink = Server::sink("127.0.0.1:0");
    // No policy directory: every connect of a job may take the kernel path. The ring
    // holds a couple of dozen events.
    let agent = Agent::start_tables(tollgate_e2e::Tables {
        bpf: "events_ring_bytes = 4096",
        ..Default::default()
    });
    if !agent.covers("kernel_path") {
        return;
    }
    let trigger = agent.dir.path().join("go");
    let (port, n) = (sink.port().to_string(), N.to_string());
    let mut job = agent
        .run_command(
            &[("repository", "acme/api")],
            &[
                "python3",
                "-c",
                BURST,
                &port,
                &n,
                &trigger.to_string_lossy(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate run");
    assert_eq!(tollgate_e2e::first_line(&mut job), "ready");
    let fallback = "tollgate_kernel_verdicts_connects_total{outcome=\"fallback\"}";
    let before = agent.metric(fallback);
    // A stopped agent reads no events, so the ring fills; its heartbeat (500 ms apart,
    // 2 s allowed) stays fresh for the second it is stopped.
    agent.signal(libc::SIGSTOP);
    std::fs::write(&trigger, "").expect("trigger");
    thread::sleep(Duration::from_millis(1_000));
    agent.signal(libc::SIGCONT);
    let out = job.wait_with_output().expect("job");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("made {N}"));
    tollgate_e2e::wait_for(
        "the sink to see every connection",
        Duration::from_secs(10),
        || (sink.accepted.load(std::sync::atomic::Ordering::Relaxed) == N).then_some(()),
    );
    // Kernel-path connections whose close was lost are found by the 5 s sweep.
    let sessions = agent.wait_sessions(None, N);
    assert_eq!(sessions.len(), N, "{sessions:#?}");
    let (proxy, kernel) = paths(&sessions);
    eprintln!("ring full: {proxy} proxy, {kernel} kernel");
    assert_eq!(proxy + kernel, N);
    assert!(kernel >= 1, "the ring took some events first");
    assert!(proxy >= N / 2, "{proxy} of {N} took the proxy path");
    assert_eq!(
        agent.metric(fallback) - before,
        proxy as f64,
        "every proxy-path connection is a counted fallback\n{}",
        agent.metrics()
    );
    // The proxy relayed every byte of its connections; none failed.
    for s in sessions
        .iter()
        .filter(|s| s.path.as_deref() == Some("proxy"))
    {
        assert_eq!(s.bytes_up, 16, "{s:#?}");
        assert!(s.error.is_none(), "{s:#?}");
    }
    // A kernel-path connection whose close event was lost says so.
    for s in sessions
        .iter()
        .filter(|s| s.path.as_deref() == Some("kernel"))
    {
        let error = s.error.as_deref().unwrap_or("");
        assert!(
            s.bytes_up == 16 || error.contains("kernel events lost"),
            "{s:#?}"
        );
    }
    crate::assert_metrics_match_records(&agent);
}

#[test]
fn a_pinned_event_ring_of_another_size_is_refused_until_cleanup() {
    if !require_root() {
        return;
    }
    let mut agent = Agent::start_tables(tollgate_e2e::Tables {
        bpf: "events_ring_bytes = 4096",
        ..Default::default()
    });
    agent.stop();
    let config = std::fs::read_to_string(&agent.config_path).expect("config");
    let resized = config.replace("events_ring_bytes = 4096", "events_ring_bytes = 65536");
    assert_ne!(config, resized);
    std::fs::write(&agent.config_path, resized).expect("config");
    // The pins stay (an agent that stops keeps enforcing): the new size is refused.
    let refused = tollgate_e2e::output(
        std::process::Command::new(tollgate_e2e::agent::tollgate_bin())
            .args(["agent", "--config"])
            .arg(&agent.config_path),
    );
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("holds 4096 bytes"), "{message}");
    assert!(message.contains("bpf.events_ring_bytes"), "{message}");
    assert!(message.contains("tollgate agent --cleanup"), "{message}");
    // The control: after cleanup the agent starts with the new size.
    let cleanup = tollgate_e2e::output(
        std::process::Command::new(tollgate_e2e::agent::tollgate_bin())
            .args(["agent", "--cleanup", "--config"])
            .arg(&agent.config_path),
    );
    assert!(cleanup.status.success(), "{}", stderr(&cleanup));
    agent.start_again();
    let info = tollgate_e2e::output(
        std::process::Command::new("bpftool")
            .args(["--json", "map", "show", "pinned"])
            .arg(agent.pin_dir.join("EVENTS")),
    );
    let info: Value = serde_json::from_str(&stdout(&info)).expect("bpftool json");
    assert_eq!(info["max_entries"], 65536, "{info}");
    assert!(gets(Some(&agent), Server::http("127.0.0.1:0").port(), 1).starts_with("HTTP/1.1 200"));
}
