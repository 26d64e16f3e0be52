//! Tollgate end-to-end tests: the real kernel hooks, real clients (curl, psql, python
//! sockets) and a real PostgreSQL. Run with `cargo xtask test` (root, serially).
mod addresses;
mod approvals;
mod central;
mod console;
mod control;
mod direct_tls;
mod dns;
mod durable;
mod encoding;
mod failclosed;
mod http;
mod http_tls;
mod identity;
mod install;
mod interception;
mod kernel_log;
mod kernel_path;
mod mcp;
mod outside;
mod policy;
mod postgres;
mod recording;
mod refusals;
mod run_cli;
mod sockets;
mod stress;
mod tls_names;
mod udp;
mod unix;

use tollgate::record::DecisionLabel;
use tollgate_e2e::Agent;

/// Every recorded session is reflected in the metrics, and vice versa.
pub fn assert_metrics_match_records(agent: &Agent) {
    let records = agent.sessions(None);
    let count =
        |decision: DecisionLabel| records.iter().filter(|r| r.decision == decision).count() as f64;
    let metrics = agent.metrics();
    let m = |series: &str| tollgate_e2e::agent::metric_value(&metrics, series);
    // The proxy accepted what was not on the kernel path; the kernel let the rest pass.
    let kernel = records
        .iter()
        .filter(|r| r.path.as_deref() == Some("kernel"))
        .count();
    assert_eq!(
        m("tollgate_proxy_intercepted_total"),
        (records.len() - kernel) as f64,
        "intercepted"
    );
    assert_eq!(
        m("tollgate_kernel_verdicts_connects_total{outcome=\"hit\"}"),
        kernel as f64,
        "kernel path"
    );
    assert_eq!(
        m("tollgate_proxy_decisions_total{decision=\"allow\"}"),
        count(DecisionLabel::Allow),
        "allow"
    );
    assert_eq!(
        m("tollgate_proxy_decisions_total{decision=\"deny\"}"),
        count(DecisionLabel::Deny),
        "deny"
    );
    assert_eq!(
        m("tollgate_proxy_unattributed_total"),
        count(DecisionLabel::Unattributed),
        "unattributed"
    );
    assert_eq!(m("tollgate_proxy_active_connections"), 0.0, "active");
    let up: u64 = records.iter().map(|r| r.bytes_up).sum();
    let down: u64 = records.iter().map(|r| r.bytes_down).sum();
    assert_eq!(
        m("tollgate_proxy_bytes_total{direction=\"up\"}"),
        up as f64,
        "bytes up"
    );
    assert_eq!(
        m("tollgate_proxy_bytes_total{direction=\"down\"}"),
        down as f64,
        "bytes down"
    );
}

/// The first line a job's shell printed to stderr with `echo $$ >&2` (its pid).
pub fn first_line_pid(stderr: &str) -> u64 {
    stderr
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid on the first stderr line: {stderr}"))
}
