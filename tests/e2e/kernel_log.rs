//! The eBPF programs' rare-event log (aya-log): off by default, switched at runtime by
//! an operator, level-gated, and read again by an agent that adopts the programs.
//! A runtime switch lasts until the agent restarts; `[bpf] log` sets the level at start.
use std::time::Duration;

use tollgate_e2e::{
    Agent, NOBODY, agent::Tables, agent_as_nobody, output, require_root, stderr, stdout, wait_for,
};

/// A job connects straight to the proxy listener, which the kernel refuses.
fn refused_direct_connect(agent: &Agent) {
    let script = format!(
        "import socket\n\
         try:\n\
         \x20   socket.create_connection(('127.0.0.1', {port}), timeout=3); print('connected')\n\
         except OSError as e:\n\
         \x20   print(e.errno)\n",
        port = agent.proxy_port
    );
    let out = agent.run_job(&[("repo", "acme/log")], &["python3", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{}\n", libc::EPERM));
}

/// A job connects to a server the policy allows.
fn allowed_connect(agent: &Agent, port: u16) {
    let out = agent.run_job(
        &[("repo", "acme/log")],
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

fn refusal_lines(agent: &Agent) -> usize {
    let needle = format!(
        "connect refused: refused_proxy_direct (cgroup {{}}, port {})",
        agent.proxy_port
    );
    let (head, tail) = needle.split_once("{}").unwrap_or((&needle, ""));
    agent
        .log()
        .lines()
        .filter(|l| l.contains("tollgate::kernel") && l.contains(head) && l.contains(tail))
        .count()
}

fn switch(agent: &Agent, level: &str) -> String {
    let out = output(agent.tollgate().args(["kernel-log", level]));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn status_level(agent: &Agent) -> String {
    agent
        .status()
        .kernel_log
        .map(|level| level.as_str().to_owned())
        .unwrap_or_default()
}

#[test]
fn the_kernel_log_is_off_until_an_operator_turns_it_on() {
    if !require_root() {
        return;
    }
    let http = tollgate_e2e::servers::Server::http("127.0.0.1:0");
    let mut agent = Agent::start();
    assert_eq!(status_level(&agent), "off");

    // Off: the refusal is counted, not logged.
    refused_direct_connect(&agent);
    assert_eq!(
        agent.metric("tollgate_bpf_events_total{event=\"refused_proxy_direct\"}"),
        1.0
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(refusal_lines(&agent), 0, "{}", agent.log());

    // Warn logs failed map inserts only, not refusals.
    assert_eq!(switch(&agent, "warn"), "kernel log: warn (was off)\n");
    refused_direct_connect(&agent);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(refusal_lines(&agent), 0, "{}", agent.log());

    // Info: each refusal is a line with its reason, the job's cgroup and the port; an
    // allowed connect is not.
    assert_eq!(switch(&agent, "info"), "kernel log: info (was warn)\n");
    assert_eq!(status_level(&agent), "info");
    allowed_connect(&agent, http.port());
    refused_direct_connect(&agent);
    wait_for("the refusal's log line", Duration::from_secs(5), || {
        (refusal_lines(&agent) == 1).then_some(())
    });
    let kernel_lines = agent
        .log()
        .lines()
        .filter(|l| l.contains("tollgate::kernel"))
        .count();
    assert_eq!(kernel_lines, 1, "{}", agent.log());

    // Not an operator: refused, and the level stays.
    agent.open_dir();
    let denied = output(agent_as_nobody(&agent).args(["kernel-log", "off"]));
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stderr(&denied).contains(&format!("permission denied: uid {NOBODY}")),
        "{}",
        stderr(&denied)
    );
    assert_eq!(status_level(&agent), "info");

    // A runtime switch lasts until the agent restarts: an agent that adopts the running
    // programs sets the configured level, and reads the adopted programs' log.
    agent.restart();
    assert_eq!(agent.status().attachment, "adopted");
    assert_eq!(status_level(&agent), "off");
    assert_eq!(switch(&agent, "info"), "kernel log: info (was off)\n");
    refused_direct_connect(&agent);
    wait_for(
        "the adopted programs' log line",
        Duration::from_secs(5),
        || (refusal_lines(&agent) == 2).then_some(()),
    );

    // Off again: counted, not logged.
    assert_eq!(switch(&agent, "off"), "kernel log: off (was info)\n");
    refused_direct_connect(&agent);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(refusal_lines(&agent), 2, "{}", agent.log());
    assert_eq!(
        agent.metric("tollgate_bpf_events_total{event=\"refused_proxy_direct\"}"),
        5.0
    );
}

#[test]
fn the_kernel_log_level_comes_from_the_config_and_bad_levels_are_refused() {
    if !require_root() {
        return;
    }
    let agent = Agent::start_tables(Tables {
        bpf: "log = \"info\"",
        ..Tables::default()
    });
    assert_eq!(status_level(&agent), "info");
    refused_direct_connect(&agent);
    wait_for("the refusal's log line", Duration::from_secs(5), || {
        (refusal_lines(&agent) == 1).then_some(())
    });
    let bad = output(agent.tollgate().args(["kernel-log", "loud"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("unknown kernel log level \"loud\""),
        "{}",
        stderr(&bad)
    );
    assert_eq!(status_level(&agent), "info");
}
