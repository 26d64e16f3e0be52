//! Just-in-time approval with a real PostgreSQL and psql in a job: a statement that
//! needs approval waits in the client's own session, with a notice; a reviewer's
//! `tollgate approvals approve` lets it run, `deny` refuses it with the reason (42501),
//! and without a decision it times out. The session goes on after each.
mod connect;
mod http;

use std::{thread, time::Duration};

use tollgate::{approvals::ApprovalRecord, record::DecisionLabel};
use tollgate_e2e::{
    Agent, output, output_with_stdin, postgres::Postgres, python, require_root, stderr, stdout,
    wait_for,
};

pub(crate) const POLICY: &str = r#"
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
    agent_with(pg, &format!("timeout = \"{timeout}\"\n"), POLICY)
}

/// An agent with `approvals` as its `[approvals]` section, `policy` as its policy, and
/// the target `pg` (PostgreSQL).
pub(crate) fn agent_with(pg: &Postgres, approvals: &str, policy: &str) -> Agent {
    let config = format!(
        "[approvals]\n{approvals}\n[[targets]]\nname = \"pg\"\n\
         cidrs = [\"127.0.0.1/32\"]\nports = [{}]\nprotocol = \"postgres\"\n",
        pg.port
    );
    Agent::start_with_policy("", &config, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("policy.cedar"), policy).expect("policy");
    })
}

pub(crate) fn direct_psql(pg: &Postgres, sql: &str) -> String {
    let args = pg.psql_args("127.0.0.1", sql);
    let out = output(std::process::Command::new(&args[0]).args(&args[1..]));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// Runs `script` with psql in a job, on another thread (it waits for a reviewer).
pub(crate) fn psql_in_job(
    agent: &Agent,
    pg: &Postgres,
    script: &str,
) -> thread::JoinHandle<(String, String)> {
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

/// The one request that waits now. (A client that starts slowly, such as a Python
/// MCP client in a TCG guest, may take a while to ask.)
pub(crate) fn wait_pending(agent: &Agent) -> ApprovalRecord {
    wait_for(
        "a pending approval request",
        tollgate_e2e::scaled(Duration::from_secs(20)),
        || {
            let mut pending = pending(agent);
            (pending.len() == 1).then(|| pending.remove(0))
        },
    )
}

pub(crate) fn approvals_cli(agent: &Agent, args: &[&str]) -> std::process::Output {
    output(agent.tollgate().arg("approvals").args(args))
}

/// The last line psql printed (the result of the script's last query).
pub(crate) fn last(out: &str) -> &str {
    out.trim().lines().last().unwrap_or_default().trim()
}

pub(crate) fn has_column(pg: &Postgres, table: &str, column: &str) -> bool {
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
    // Short, so that the timed-out case ends soon; long enough for a slow guest to
    // see the request and approve it (a 7.2 single-threaded TCG guest took over 4 s).
    let timeout = format!("{}s", 4 * tollgate_e2e::time_scale());
    let agent = agent(pg, &timeout);

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
    assert!(
        err.contains(&format!("no reviewer decided within {timeout}")),
        "{err}"
    );
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
    let capped = POLICY.replace(
        "@approval(\"required\")",
        "@approval(\"required\")\n@approval_scope(\"job\")",
    );
    let agent = agent_with(pg, "timeout = \"30s\"\n", &capped);
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
    // The policy caps the scope at a job (@approval_scope("job")).
    assert_eq!(request.scope_cap.as_deref(), Some("job"));
    let out = approvals_cli(&agent, &["approve", &request.id, "--scope", "30m"]);
    assert!(
        stderr(&out).contains("wider than the policy allows"),
        "{}",
        stderr(&out)
    );
    let out = approvals_cli(&agent, &["approve", &request.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = psql.join().expect("psql");
    assert_eq!(last(&out), "1", "{err}");
    assert!(has_column(pg, "tollgate_held2", "x"));
    direct_psql(pg, "DROP TABLE tollgate_held2");
}

/// psycopg's pipelined transaction (`approval_pipeline.py`) in a job, on another thread.
fn pipeline_in_job(
    agent: &Agent,
    pg: &Postgres,
    table: &str,
    column: &str,
) -> thread::JoinHandle<serde_json::Value> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/approval_pipeline.py");
    let python = python();
    let args = [
        python.to_string_lossy().into_owned(),
        script.to_string_lossy().into_owned(),
        pg.dsn(),
        table.to_owned(),
        column.to_owned(),
    ];
    let mut command = agent.run_command(
        &[("repository", "acme/api")],
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    thread::spawn(move || {
        let out = output(&mut command);
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
        serde_json::from_str(stdout(&out).trim()).expect("the client's JSON")
    })
}

#[test]
fn held_statements_in_transactions_and_pipelines_leave_both_sides_agreeing() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_tx; CREATE TABLE tollgate_tx (id int)",
    );
    let agent = agent(pg, "30s");

    // psql, simple protocol, inside BEGIN … COMMIT: approved, all of it commits.
    let script = "BEGIN;\nINSERT INTO tollgate_tx VALUES (1);\n\
                  ALTER TABLE tollgate_tx ADD COLUMN a int;\nINSERT INTO tollgate_tx VALUES (2);\n\
                  COMMIT;\nSELECT count(*) FROM tollgate_tx;\n";
    let psql = psql_in_job(&agent, pg, script);
    let request = wait_pending(&agent);
    assert!(
        approvals_cli(&agent, &["approve", &request.id])
            .status
            .success()
    );
    let (out, err) = psql.join().expect("psql");
    assert_eq!(last(&out), "2", "{out}\n{err}");
    assert!(has_column(pg, "tollgate_tx", "a"));

    // Denied inside the transaction: the server aborted it as for its own error; the
    // COMMIT rolls back; the session is usable.
    let script = "BEGIN;\nINSERT INTO tollgate_tx VALUES (3);\n\
                  ALTER TABLE tollgate_tx ADD COLUMN b int;\nINSERT INTO tollgate_tx VALUES (4);\n\
                  COMMIT;\nSELECT count(*) FROM tollgate_tx;\n";
    let psql = psql_in_job(&agent, pg, script);
    let request = wait_pending(&agent);
    let out = approvals_cli(&agent, &["deny", &request.id, "--reason", "no"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = psql.join().expect("psql");
    assert!(err.contains("current transaction is aborted"), "{err}");
    assert!(out.contains("ROLLBACK"), "{out}");
    assert_eq!(
        last(&out),
        "2",
        "nothing of the transaction stayed: {out}\n{err}"
    );
    assert!(!has_column(pg, "tollgate_tx", "b"));

    // psycopg's pipeline (extended protocol): the Execute waits; approved, it commits.
    let approved = pipeline_in_job(&agent, pg, "tollgate_tx", "c");
    let request = wait_pending(&agent);
    assert!(
        request
            .sql
            .as_deref()
            .unwrap_or("")
            .contains("ADD COLUMN c")
    );
    assert!(
        approvals_cli(&agent, &["approve", &request.id])
            .status
            .success()
    );
    let seen = approved.join().expect("pipeline");
    assert_eq!(seen["result"], "committed", "{seen}");
    assert_eq!(seen["status"], "IDLE", "{seen}");
    assert_eq!(seen["rows"], 4, "{seen}");
    assert!(has_column(pg, "tollgate_tx", "c"));

    // Denied in the pipeline: 42501, the transaction rolled back, the session idle.
    let denied = pipeline_in_job(&agent, pg, "tollgate_tx", "d");
    let request = wait_pending(&agent);
    let out = approvals_cli(&agent, &["deny", &request.id, "--reason", "not now"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = denied.join().expect("pipeline");
    assert_eq!(seen["result"], "error", "{seen}");
    assert_eq!(seen["sqlstate"], "42501", "{seen}");
    assert!(
        seen["message"]
            .as_str()
            .is_some_and(|m| m.contains("not now")),
        "{seen}"
    );
    assert_eq!(seen["status"], "IDLE", "{seen}");
    assert_eq!(
        seen["rows"], 4,
        "the pipeline's inserts rolled back: {seen}"
    );
    assert!(!has_column(pg, "tollgate_tx", "d"));
    direct_psql(pg, "DROP TABLE tollgate_tx");
}

#[test]
fn a_job_grant_passes_the_same_shape_in_that_job_only_and_two_jobs_wait_independently() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_scope; CREATE TABLE tollgate_scope (id int, v int)",
    );
    let agent = agent(pg, "30s");
    // One job: the first statement asks; approved with scope job, the second (the same
    // shape, another constant) passes without asking.
    let psql = psql_in_job(
        &agent,
        pg,
        "ALTER TABLE tollgate_scope ALTER COLUMN v SET DEFAULT 1;\n\
         ALTER TABLE tollgate_scope ALTER COLUMN v SET DEFAULT 2;\nSELECT 'done';\n",
    );
    let request = wait_pending(&agent);
    let out = approvals_cli(&agent, &["approve", &request.id, "--scope", "job"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = psql.join().expect("psql");
    assert_eq!(last(&out), "done", "{out}\n{err}");
    assert_eq!(
        err.matches("waits for approval").count(),
        1,
        "the second passed on the grant: {err}"
    );
    let sessions = agent.wait_sessions(None, 1);
    let statements = agent.wait_statements(&sessions, 2);
    let decided: ApprovalRecord = agent.typed(&["approvals", "show", &request.id, "--json"]);
    let grant = decided.grant_id.clone().expect("a grant");
    assert_eq!(statements[1].approval.as_deref(), Some(grant.as_str()));
    assert!(
        statements[1].reason.contains("grant"),
        "{:?}",
        statements[1]
    );
    assert_eq!(
        agent.metric("tollgate_approvals_decisions_total{outcome=\"granted\"}"),
        1.0
    );

    // Two other jobs, at once: each asks (the grant was that job's), each is decided on
    // its own.
    let first = psql_in_job(
        &agent,
        pg,
        "ALTER TABLE tollgate_scope ALTER COLUMN v SET DEFAULT 3;\nSELECT 'first';\n",
    );
    let second = psql_in_job(
        &agent,
        pg,
        "ALTER TABLE tollgate_scope ALTER COLUMN v SET DEFAULT 4;\nSELECT 'second';\n",
    );
    let both = wait_for("two pending requests", Duration::from_secs(20), || {
        let pending = pending(&agent);
        (pending.len() == 2).then_some(pending)
    });
    assert_ne!(both[0].job_id, both[1].job_id);
    let (approve, deny) = if both[0].sql.as_deref().unwrap_or("").contains("DEFAULT 3") {
        (&both[0], &both[1])
    } else {
        (&both[1], &both[0])
    };
    let out = approvals_cli(&agent, &["deny", &deny.id, "--reason", "second one no"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, err) = second.join().expect("psql");
    assert!(err.contains("second one no"), "{err}");
    let out = approvals_cli(&agent, &["approve", &approve.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = first.join().expect("psql");
    assert_eq!(last(&out), "first", "{err}");
    assert_eq!(
        direct_psql(
            pg,
            "SELECT column_default FROM information_schema.columns \
             WHERE table_name = 'tollgate_scope' AND column_name = 'v'"
        ),
        "3"
    );
    // The job grant ended with its job: nothing to revoke.
    let out = approvals_cli(&agent, &["revoke", &grant]);
    assert!(!out.status.success(), "the job's grant ended with it");

    // A duration grant covers the repository and workflow across jobs, until revoked.
    let statement = |n: u32| {
        format!("ALTER TABLE tollgate_scope ALTER COLUMN v SET DEFAULT {n};\nSELECT 'ok';\n")
    };
    let asking = psql_in_job(&agent, pg, &statement(5));
    let request = wait_pending(&agent);
    let out = approvals_cli(&agent, &["approve", &request.id, "--scope", "30m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = asking.join().expect("psql");
    assert_eq!(last(&out), "ok", "{err}");
    let (out, err) = psql_in_job(&agent, pg, &statement(6)).join().expect("psql");
    assert_eq!(last(&out), "ok", "{err}");
    assert!(
        !err.contains("waits for approval"),
        "another job, covered: {err}"
    );
    let decided: ApprovalRecord = agent.typed(&["approvals", "show", &request.id, "--json"]);
    let grant = decided.grant_id.expect("a grant");
    let out = approvals_cli(&agent, &["revoke", &grant]);
    assert!(out.status.success(), "{}", stderr(&out));
    let asking = psql_in_job(&agent, pg, &statement(7));
    let request = wait_pending(&agent);
    assert!(
        approvals_cli(&agent, &["deny", &request.id, "--reason", "revoked"])
            .status
            .success()
    );
    let (_, err) = asking.join().expect("psql");
    assert!(err.contains("revoked"), "{err}");
    direct_psql(pg, "DROP TABLE tollgate_scope");
}

#[test]
fn self_approval_is_refused_for_the_jobs_actor() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_self; CREATE TABLE tollgate_self (id int)",
    );
    let reviewers = format!("reviewers = [\"uid:{}\"]\n", tollgate_e2e::NOBODY);
    let agent = agent_with(pg, &reviewers, POLICY);
    let args = pg.psql_session_args("127.0.0.1");
    let mut command = agent.run_command(
        &[("repository", "acme/api"), ("actor", "nobody")],
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let psql = thread::spawn(move || {
        let out = output_with_stdin(
            &mut command,
            b"ALTER TABLE tollgate_self ADD COLUMN x int;\nSELECT 'after';\n",
        );
        (stdout(&out), stderr(&out))
    });
    let request = wait_pending(&agent);
    let out =
        output(tollgate_e2e::agent_as_nobody(&agent).args(["approvals", "approve", &request.id]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("self-approval"), "{}", stderr(&out));
    // nobody may still list (a reviewer), and deny.
    let listed =
        output(tollgate_e2e::agent_as_nobody(&agent).args(["approvals", "list", "--pending"]));
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(stdout(&listed).contains(&request.id));
    assert!(
        approvals_cli(&agent, &["approve", &request.id])
            .status
            .success()
    );
    let (out, err) = psql.join().expect("psql");
    assert_eq!(last(&out), "after", "{err}");
    direct_psql(pg, "DROP TABLE tollgate_self");
}
