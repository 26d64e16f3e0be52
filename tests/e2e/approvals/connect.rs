//! Approval of L4 connects (held accepted, connected upstream only once approved; reset
//! when denied), and requests left pending by a killed agent (abandoned, the client
//! errors rather than hangs).
use std::{sync::atomic::Ordering, thread};

use tollgate::approvals::{ApprovalRecord, ApprovalState};
use tollgate_e2e::{Agent, output, require_root, servers::Server, stderr, stdout};

use super::{approvals_cli, psql_in_job, wait_pending};

#[test]
fn a_held_connect_reaches_its_upstream_only_once_approved() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let config = format!(
        "[approvals]\ntimeout = \"30s\"\n\n[[targets]]\nname = \"web\"\n\
         cidrs = [\"127.0.0.1/32\"]\nports = [{}]\n",
        http.port()
    );
    let policy = "@id(\"web-needs-approval\")\n@approval(\"required\")\n\
                  permit(principal, action == Action::\"connect\", resource)\n\
                  when { resource.name == \"web\" };\n";
    let agent = Agent::start_with_policy("", &config, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("web.cedar"), policy).expect("policy");
    });
    let url = format!("http://127.0.0.1:{}/held", http.port());
    let curl = |agent: &Agent| {
        let mut command = agent.run_command(
            &[("repository", "acme/api")],
            &["curl", "-sS", "--max-time", "60", &url],
        );
        thread::spawn(move || output(&mut command))
    };

    let approved = curl(&agent);
    let request = wait_pending(&agent);
    assert_eq!(request.action, "connect");
    assert_eq!(request.policy_ids, ["web-needs-approval"]);
    assert_eq!(
        http.accepted.load(Ordering::Relaxed),
        0,
        "held: not yet upstream"
    );
    assert!(
        approvals_cli(&agent, &["approve", &request.id])
            .status
            .success()
    );
    let out = approved.join().expect("curl");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("hello"), "{}", stdout(&out));
    assert_eq!(http.accepted.load(Ordering::Relaxed), 1);

    let denied = curl(&agent);
    let request = wait_pending(&agent);
    let out = approvals_cli(&agent, &["deny", &request.id, "--reason", "no web today"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = denied.join().expect("curl");
    assert!(!out.status.success(), "reset: {}", stdout(&out));
    assert_eq!(
        http.accepted.load(Ordering::Relaxed),
        1,
        "never reached upstream"
    );
    let sessions = agent.wait_sessions(None, 2);
    assert!(
        sessions
            .iter()
            .any(|s| s.reason.contains("denied by") && s.reason.contains("no web today")),
        "{sessions:?}"
    );
    assert!(
        sessions.iter().any(|s| s.reason.contains("approved by")),
        "{sessions:?}"
    );
}

#[test]
fn a_request_pending_when_the_agent_is_killed_is_abandoned_and_the_client_errors() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    let mut agent = super::agent(pg, "60s");
    let psql = psql_in_job(
        &agent,
        pg,
        "ALTER TABLE tollgate_never_there ADD COLUMN x int;\nSELECT 1;\n",
    );
    let request = wait_pending(&agent);
    agent.kill9();
    let (out, err) = psql.join().expect("psql");
    assert!(
        err.contains("server closed the connection") || err.contains("connection"),
        "the client got an error, not a hang: {out}\n{err}"
    );
    agent.start_again();
    let record: ApprovalRecord = agent.typed(&["approvals", "show", &request.id, "--json"]);
    assert_eq!(record.state, Some(ApprovalState::Abandoned), "{record:?}");
    let out = approvals_cli(&agent, &["approve", &request.id]);
    assert!(
        !out.status.success(),
        "an abandoned request cannot be approved"
    );
}

#[test]
fn webhooks_get_each_request_and_decision_and_a_down_one_blocks_nothing() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    let receiver = Server::collector("127.0.0.1:0");
    // A port nothing listens on: the second webhook fails (after its retries).
    let down = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let down_port = down.local_addr().expect("addr").port();
    drop(down);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let hooks = format!(
        "timeout = \"30s\"\n\n[[approvals.webhooks]]\nurl = \"http://127.0.0.1:{}/hook\"\n\
         token_file = \"{}\"\n\n[[approvals.webhooks]]\nurl = \"http://127.0.0.1:{down_port}/hook\"\n\
         format = \"slack\"\n",
        receiver.port(),
        token.display(),
    );
    let agent = super::agent_with(pg, &hooks, super::POLICY);
    let psql = psql_in_job(
        &agent,
        pg,
        "ALTER TABLE tollgate_hooked_missing ADD COLUMN x int;\nSELECT 'went on';\n",
    );
    let request = wait_pending(&agent);
    let out = approvals_cli(&agent, &["deny", &request.id, "--reason", "hooked"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = psql.join().expect("psql");
    assert!(
        out.contains("went on"),
        "the down webhook blocked nothing: {err}"
    );
    let bodies = tollgate_e2e::wait_for(
        "two webhook posts",
        std::time::Duration::from_secs(20),
        || {
            let all = receiver.collected.lock().expect("collected").clone();
            (all.len() >= 2).then_some(all)
        },
    );
    let events: Vec<serde_json::Value> = bodies
        .iter()
        .map(|(auth, body)| {
            assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
            serde_json::from_str(body).expect("JSON payload")
        })
        .collect();
    assert_eq!(events[0]["event"], "requested");
    assert_eq!(events[0]["request"]["id"], request.id.as_str());
    assert_eq!(events[0]["request"]["state"], "pending");
    assert_eq!(events[1]["event"], "decided");
    assert_eq!(events[1]["request"]["state"], "denied");
    assert_eq!(events[1]["request"]["reason"], "hooked");
    tollgate_e2e::wait_for(
        "the failed webhook counted",
        std::time::Duration::from_secs(30),
        || {
            (agent.metric("tollgate_approvals_webhooks_total{outcome=\"failed\"}") >= 2.0)
                .then_some(())
        },
    );
    assert_eq!(
        agent.metric("tollgate_approvals_webhooks_total{outcome=\"sent\"}"),
        2.0
    );
}

#[test]
fn a_client_that_hangs_up_while_held_abandons_its_request() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    let agent = super::agent(pg, "60s");
    // psql is killed once its statement is held (a fixed delay raced psql's TLS
    // handshake under emulated guests).
    let args = pg.psql_session_args("127.0.0.1");
    let mut command = agent.run_command(
        &[("repository", "acme/api")],
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let psql = thread::spawn(move || {
        tollgate_e2e::output_with_stdin(
            &mut command,
            b"ALTER TABLE tollgate_hangs_up ADD COLUMN x int;\nSELECT 1;\n",
        )
    });
    let request = wait_pending(&agent);
    let pid = request.pid.expect("the held connection's process") as libc::pid_t;
    // SAFETY: kill(2) takes no pointers; pid is the held psql, a child of this test.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill psql");
    let out = psql.join().expect("psql");
    assert!(!out.status.success(), "psql was killed while it waited");
    let record = tollgate_e2e::wait_for(
        "the request abandoned",
        std::time::Duration::from_secs(10),
        || {
            let record: ApprovalRecord = agent.typed(&["approvals", "show", &request.id, "--json"]);
            (record.state == Some(ApprovalState::Abandoned)).then_some(record)
        },
    );
    assert!(record.reason.unwrap_or_default().contains("ended"));
    assert_eq!(
        agent.metric("tollgate_approvals_decisions_total{outcome=\"abandoned\"}"),
        1.0
    );
    assert_eq!(agent.metric("tollgate_approvals_pending"), 0.0);
}
