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
