//! The recording store under failure: visible in logs and metrics, and with
//! `recording.strict`, new connections are refused until writes succeed again.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use tollgate::record::DecisionLabel;
use tollgate_e2e::{Agent, require_root, servers::Server, stderr, wait_for};

use crate::assert_metrics_match_records;

#[test]
fn strict_recording_refuses_connections_while_writes_fail_and_loses_nothing() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let agent = Agent::start_with("[recording]\nstrict = true\n");
    let url = format!("http://127.0.0.1:{}/", http.port());
    let curl = |expect_ok: bool| {
        let out = agent.run_job(&[("repo", "acme/rec")], &["curl", "-sS", "-m", "5", &url]);
        assert_eq!(out.status.success(), expect_ok, "curl: {}", stderr(&out));
    };
    curl(true);
    agent.wait_sessions(None, 1);

    // Another process holds an exclusive lock on the store: writes fail.
    let mut locker = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             sys.stdin.read()\n",
        ])
        .arg(&agent.db_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    assert_eq!(tollgate_e2e::first_line(&mut locker), "locked");

    curl(true); // allowed: recording was healthy when it started
    wait_for("a recording failure", Duration::from_secs(30), || {
        (agent.metric("tollgate_recording_failures_total") > 0.0).then_some(())
    });
    assert_eq!(
        agent.admin_get("/readyz").0,
        503,
        "not ready while recording fails"
    );
    assert!(
        agent.log().contains("recording write failed"),
        "failure is logged"
    );
    // The kernel path stops on the agent's next heartbeat, at most 500 ms later.
    wait_for(
        "the kernel path to be suspended",
        Duration::from_secs(5),
        || (agent.metric("tollgate_kernel_path_suspended") == 1.0).then_some(()),
    );
    curl(false); // refused: strict mode and recording is failing

    drop(locker.stdin.take());
    let _ = locker.wait();
    wait_for("recording to recover", Duration::from_secs(30), || {
        (agent.admin_get("/readyz").0 == 200).then_some(())
    });
    // The kernel path resumes on the agent's next heartbeat, at most 500 ms later.
    wait_for("the kernel path to resume", Duration::from_secs(5), || {
        (agent.metric("tollgate_kernel_path_suspended") == 0.0).then_some(())
    });
    curl(true);
    let records = agent.wait_sessions(None, 4);
    assert_eq!(records.len(), 4, "nothing lost: {records:?}");
    let denied: Vec<_> = records
        .iter()
        .filter(|s| s.decision == DecisionLabel::Deny)
        .collect();
    assert_eq!(denied.len(), 1, "{records:?}");
    assert!(
        denied[0].reason.contains("recording.strict"),
        "{:?}",
        denied[0]
    );
    // Without a policy directory the job's connects take the kernel path, which strict
    // recording suspends while writes fail: the refused one went to the proxy.
    assert_eq!(denied[0].path.as_deref(), Some("proxy"), "{:?}", denied[0]);
    assert!(
        records
            .iter()
            .filter(|s| s.decision == DecisionLabel::Allow)
            .all(|s| s.path.as_deref() == Some("kernel")),
        "{records:?}"
    );
    assert_eq!(agent.metric("tollgate_recording_dropped_total"), 0.0);
    assert_metrics_match_records(&agent);
}

#[test]
fn records_older_than_the_retention_are_pruned_and_counted() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let agent = Agent::start_with("[recording]\nretention = \"2s\"\n");
    let url = format!("http://127.0.0.1:{}/", http.port());
    let out = agent.run_job(&[("repo", "acme/old")], &["curl", "-sS", "-m", "5", &url]);
    assert!(out.status.success(), "curl: {}", stderr(&out));
    let first = agent.wait_sessions(None, 1);
    let old_job = first[0].job_id.clone().expect("the job's id");
    wait_for("the store's size", Duration::from_secs(15), || {
        (agent.metric("tollgate_recording_store_bytes") > 0.0).then_some(())
    });

    // Past the retention (plus one pruning interval), the ended job and its connection
    // are gone; a connection made since stays.
    wait_for("the pruning", Duration::from_secs(15), || {
        (agent.metric("tollgate_recording_pruned_total{kind=\"connection\"}") >= 1.0).then_some(())
    });
    let out = agent.run_job(&[("repo", "acme/new")], &["curl", "-sS", "-m", "5", &url]);
    assert!(out.status.success(), "curl: {}", stderr(&out));
    let records = agent.wait_sessions(None, 1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_ne!(records[0].job_id.as_deref(), Some(old_job.as_str()));
    assert!(agent.metric("tollgate_recording_pruned_total{kind=\"job\"}") >= 1.0);
}
