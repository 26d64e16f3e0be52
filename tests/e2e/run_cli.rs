//! `tollgate run` semantics, and the CLI's errors.
use std::{os::unix::process::ExitStatusExt as _, process::Command, time::Duration};

use tollgate::record::DecisionLabel;
use tollgate_e2e::{Agent, agent::tollgate_bin, output, require_root, stderr, stdout, wait_for};

#[test]
fn run_propagates_exit_codes_and_signals_and_leaves_no_cgroup() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let ok = agent.run_job(&[], &["sh", "-c", "exit 0"]);
    assert_eq!(ok.status.code(), Some(0));
    let three = agent.run_job(&[], &["sh", "-c", "exit 3"]);
    assert_eq!(three.status.code(), Some(3));
    let killed = agent.run_job(&[], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(
        killed.status.signal(),
        Some(libc::SIGTERM),
        "{:?}",
        killed.status
    );
    let missing = agent.run_job(&[], &["/nonexistent/command"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("/nonexistent/command"),
        "{}",
        stderr(&missing)
    );
    assert!(
        agent.job_cgroups().is_empty(),
        "left behind: {:?}",
        agent.job_cgroups()
    );
    assert!(agent.jobs().is_empty());
}

#[test]
fn run_forwards_signals_to_the_command() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let mut child = agent
        .run_command(
            &[],
            &[
                "sh",
                "-c",
                "trap 'exit 42' USR1; echo ready; while :; do sleep 0.05; done",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tollgate run");
    assert_eq!(tollgate_e2e::first_line(&mut child), "ready");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(42), "{status:?}");
}

#[test]
fn run_kills_background_children_when_the_job_ends() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let out = agent.run_job(&[("repo", "acme/bg")], &["sh", "-c", "sleep 300 & echo $!"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: u32 = stdout(&out).trim().parse().expect("background pid");
    wait_for(
        "the background child to die",
        Duration::from_secs(10),
        || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            (stat.is_empty() || state == Some("Z")).then_some(())
        },
    );
    assert!(agent.job_cgroups().is_empty());
}

#[test]
fn run_without_an_agent_fails_clearly() {
    let out = output(
        Command::new(tollgate_bin())
            .env("TOLLGATE_CONTROL_SOCKET", "/nonexistent/tollgate.sock")
            .args(["run", "--label", "a=b", "--", "true"]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the Tollgate agent at /nonexistent/tollgate.sock"),
        "{err}"
    );
    assert!(err.contains("is the agent running?"), "{err}");
}

#[test]
fn a_malformed_config_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, expected) in [
        ("[proxy]\nport = \"abc\"\n", ":2:8: `proxy.port`"),
        ("[recording]\nstrictt = true\n", "strictt"),
        ("[proxy]\nport = 0\n", "`proxy.port`: must be a fixed port"),
        ("[admin]\nlisten = \"nowhere\"\n", "`admin.listen`"),
    ] {
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).expect("write");
        let out = output(
            Command::new(tollgate_bin())
                .arg("agent")
                .arg("--config")
                .arg(&path),
        );
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = stderr(&out);
        assert!(err.contains(&path.display().to_string()), "{text}: {err}");
        assert!(
            err.contains(expected),
            "{text}: expected {expected} in {err}"
        );
    }
    let label = output(
        Command::new(tollgate_bin())
            .env("TOLLGATE_CONTROL_SOCKET", "/nonexistent")
            .args(["run", "--label", "novalue", "--", "true"]),
    );
    assert_eq!(label.status.code(), Some(2), "clap usage error");
    assert!(stderr(&label).contains("not key=value"));
}

#[test]
fn run_as_another_user_is_intercepted_and_cannot_leave_its_job() {
    if !require_root() {
        return;
    }
    let http = tollgate_e2e::servers::Server::http("127.0.0.1:0");
    let agent = Agent::start();
    let root_procs = tollgate_e2e::agent::cgroup2_mount().join("cgroup.procs");
    let script = format!(
        "id -u; id -g; \
         curl -sS -o /dev/null -w '%{{http_code}}\\n' http://127.0.0.1:{port}/; \
         if echo $$ > {procs} 2>/dev/null; then echo moved; else echo stayed; fi; \
         sed -n 's/^0:://p' /proc/self/cgroup",
        port = http.port(),
        procs = root_procs.display()
    );
    let out = output(
        agent
            .tollgate()
            .args([
                "run",
                "--user",
                "nobody",
                "--label",
                "repo=acme/unprivileged",
                "--",
            ])
            .args(["sh", "-c", &script]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], tollgate_e2e::NOBODY.to_string(), "{text}");
    assert_eq!(lines[2], "200", "{text}");
    assert_eq!(
        lines[3], "stayed",
        "a non-root job cannot move itself: {text}"
    );
    assert!(
        lines[4].starts_with(&format!("/{}/job-", agent.name)),
        "still in its job: {text}"
    );
    let sessions = agent.wait_sessions(None, 1);
    assert_eq!(sessions[0].uid, Some(tollgate_e2e::NOBODY));
    assert_eq!(sessions[0].decision, DecisionLabel::Allow);

    // Only root can switch users.
    let as_nobody =
        output(tollgate_e2e::agent_as_nobody(&agent).args(["run", "--user", "root", "--", "true"]));
    assert!(!as_nobody.status.success());
    assert!(
        stderr(&as_nobody).contains("--user needs root"),
        "{}",
        stderr(&as_nobody)
    );
    let unknown = output(
        agent
            .tollgate()
            .args(["run", "--user", "no-such-user", "--", "true"]),
    );
    assert!(
        stderr(&unknown).contains("no such user: no-such-user"),
        "{}",
        stderr(&unknown)
    );
}
