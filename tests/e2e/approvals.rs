//! Just-in-time approval with a real PostgreSQL and psql in a job: a statement that
//! needs approval waits in the client's own session, with a notice; a reviewer's
//! `tollgate approvals approve` lets it run, `deny` refuses it with the reason (42501),
//! and without a decision it times out. The session goes on after each.
use std::{thread, time::Duration};

use tollgate::{approvals::ApprovalRecord, record::DecisionLabel};
use tollgate_e2e::{
    Agent, output, output_with_stdin, postgres::Postgres, require_root, stderr, stdout, wait_for,
};

const POLICY: &str = r#"
@id("pg-connect")
permit(principal, action == Action::"connect", resource)
when { resource.name == "pg" };

@id("pg-read-write")
permit(principal, action in [Action::"sql:read", Action::"sql:write"], resource)
when { resource.name == "pg" };

@id("ddl-needs-approval")
@approval("required")
permit(principal, action == Action::"sql:ddl", resource)
when { resource.name == "pg" };
"#;

/// An agent whose policy holds DDL on `pg` for approval, timing out after `timeout`.
fn agent(pg: &Postgres, timeout: &str) -> Agent {
    let config = format!(
        "[approvals]\ntimeout = \"{timeout}\"\n\n[[targets]]\nname = \"pg\"\n\
         cidrs = [\"127.0.0.1/32\"]\nports = [{}]\nprotocol = \"postgres\"\n",
        pg.port
    );
    Agent::start_with_policy("", &config, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("pg.cedar"), POLICY).expect("policy");
    })
}

fn direct_psql(pg: &Postgres, sql: &str) -> String {
    let args = pg.psql_args("127.0.0.1", sql);
    let out = output(std::process::Command::new(&args[0]).args(&args[1..]));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// Runs `script` with psql in a job, on another thread (it waits for a reviewer).
fn psql_in_job(agent: &Agent, pg: &Postgres, script: &str) -> thread::JoinHandle<(String, String)> {
    let args = pg.psql_session_args("127.0.0.1");
    let mut command = agent.run_command(
        &[("repository", "acme/api"), ("workflow", "deploy")],
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let script = script.to_owned();
    thread::spawn(move || {
        let out = output_with_stdin(&mut command, script.as_bytes());
        (stdout(&out), stderr(&out))
    })
}

fn pending(agent: &Agent) -> Vec<ApprovalRecord> {
    let all: serde_json::Value = agent.typed(&["approvals", "list", "--pending", "--json"]);
    serde_json::from_value(all["approvals"].clone()).expect("approval records")
}

/// The one request that waits now.
fn wait_pending(agent: &Agent) -> ApprovalRecord {
    wait_for(
        "a pending approval request",
        Duration::from_secs(20),
        || {
            let mut pending = pending(agent);
            (pending.len() == 1).then(|| pending.remove(0))
        },
    )
}

fn approvals_cli(agent: &Agent, args: &[&str]) -> std::process::Output {
    output(agent.tollgate().arg("approvals").args(args))
}

/// The last line psql printed (the result of the script's last query).
fn last(out: &str) -> &str {
    out.trim().lines().last().unwrap_or_default().trim()
}

fn has_column(pg: &Postgres, table: &str, column: &str) -> bool {
    direct_psql(
        pg,
        &format!(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' \
             AND column_name = '{column}'"
        ),
    ) == "1"
}

#[test]
fn a_held_statement_runs_once_approved_and_is_refused_when_denied_or_timed_out() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_held; CREATE TABLE tollgate_held (id int)",
    );
    let agent = agent(pg, "4s");

    // Approved: the ALTER runs, and the session goes on.
    let psql = psql_in_job(
        &agent,
        pg,
        "INSERT INTO tollgate_held VALUES (1);\nALTER TABLE tollgate_held ADD COLUMN approved int;\nSELECT count(*) FROM tollgate_held;\n",
    );
    let request = wait_pending(&agent);
    assert_eq!(request.kind.as_deref(), Some("ddl"), "{request:?}");
    assert!(
        request
            .sql
            .as_deref()
            .unwrap_or("")
            .contains("ADD COLUMN approved"),
        "{request:?}"
    );
    assert_eq!(
        request.identity.get("repository").map(String::as_str),
        Some("acme/api")
    );
    assert_eq!(request.policy_ids, ["ddl-needs-approval"]);
    assert!(
        !has_column(pg, "tollgate_held", "approved"),
        "held, not run"
    );
    let out = approvals_cli(&agent, &["approve", &request.id, "--reason", "release 42"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = psql.join().expect("psql");
    assert!(
        err.contains("waits for approval") && err.contains(&request.id),
        "{err}"
    );
    assert!(has_column(pg, "tollgate_held", "approved"), "{err}");
    assert_eq!(last(&out), "1", "the session went on: {out} {err}");
    let sessions = agent.wait_sessions(None, 1);
    let statements = agent.wait_statements(&sessions, 3);
    let ddl = &statements[1];
    assert_eq!(ddl.decision, DecisionLabel::Allow, "{ddl:?}");
    assert_eq!(
        ddl.approval.as_deref(),
        Some(request.id.as_str()),
        "{ddl:?}"
    );
    assert!(ddl.reason.contains("approved by"), "{ddl:?}");
    // The insert before it, not held, links to nothing.
    assert_eq!(statements[0].approval, None);

    // Denied: 42501 with the reviewer's reason; the table is unchanged; the session goes on.
    let psql = psql_in_job(
        &agent,
        pg,
        "\\set VERBOSITY verbose\nALTER TABLE tollgate_held ADD COLUMN denied int;\nSELECT 2;\n",
    );
    let request = wait_pending(&agent);
    let out = approvals_cli(&agent, &["deny", &request.id]);
    assert!(!out.status.success(), "a denial needs a reason");
    let out = approvals_cli(
        &agent,
        &["deny", &request.id, "--reason", "not on a friday"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = psql.join().expect("psql");
    assert!(err.contains("42501"), "{err}");
    assert!(
        err.contains("not on a friday") && err.contains("denied by"),
        "{err}"
    );
    assert!(!has_column(pg, "tollgate_held", "denied"));
    assert_eq!(last(&out), "2", "the session went on: {err}");
    let decided: ApprovalRecord = agent.typed(&["approvals", "show", &request.id, "--json"]);
    assert_eq!(
        decided.state,
        Some(tollgate::approvals::ApprovalState::Denied)
    );
    assert_eq!(decided.reason.as_deref(), Some("not on a friday"));

    // No decision: refused after the timeout, and recorded as timed out.
    let psql = psql_in_job(
        &agent,
        pg,
        "ALTER TABLE tollgate_held ADD COLUMN late int;\nSELECT 3;\n",
    );
    let request = wait_pending(&agent);
    let (out, err) = psql.join().expect("psql");
    assert!(err.contains("no reviewer decided within 4s"), "{err}");
    assert!(!has_column(pg, "tollgate_held", "late"));
    assert_eq!(last(&out), "3", "{err}");
    let timed_out: ApprovalRecord = agent.typed(&["approvals", "show", &request.id, "--json"]);
    assert_eq!(
        timed_out.state,
        Some(tollgate::approvals::ApprovalState::TimedOut)
    );
    // A decision after the time is refused.
    let out = approvals_cli(&agent, &["approve", &request.id]);
    assert!(!out.status.success());
    assert_eq!(
        agent.metric("tollgate_approvals_decisions_total{outcome=\"approved\"}"),
        1.0
    );
    assert_eq!(
        agent.metric("tollgate_approvals_decisions_total{outcome=\"denied\"}"),
        1.0
    );
    assert_eq!(
        agent.metric("tollgate_approvals_decisions_total{outcome=\"timed_out\"}"),
        1.0
    );
    assert_eq!(agent.metric("tollgate_approvals_pending"), 0.0);
    direct_psql(pg, "DROP TABLE tollgate_held");
}

#[test]
fn a_non_reviewer_cannot_decide_and_the_refusal_is_audited() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_held2; CREATE TABLE tollgate_held2 (id int)",
    );
    let agent = agent(pg, "30s");
    let psql = psql_in_job(
        &agent,
        pg,
        "ALTER TABLE tollgate_held2 ADD COLUMN x int;\nSELECT 1;\n",
    );
    let request = wait_pending(&agent);
    // nobody (65534) is no reviewer: refused, recorded, and the request still waits.
    let out =
        output(tollgate_e2e::agent_as_nobody(&agent).args(["approvals", "approve", &request.id]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a reviewer"), "{}", stderr(&out));
    assert_eq!(pending(&agent).len(), 1);
    wait_for(
        "the refusal in the audit trail",
        Duration::from_secs(10),
        || {
            agent
                .audit(&[])
                .iter()
                .any(|a| a.outcome == "refused" && a.detail.contains("not a reviewer"))
                .then_some(())
        },
    );
    let out = approvals_cli(&agent, &["approve", &request.id, "--scope", "sometimes"]);
    assert!(!out.status.success(), "an unknown scope is refused");
    let out = approvals_cli(&agent, &["approve", &request.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = psql.join().expect("psql");
    assert_eq!(last(&out), "1", "{err}");
    assert!(has_column(pg, "tollgate_held2", "x"));
    direct_psql(pg, "DROP TABLE tollgate_held2");
}
