//! Real client libraries through Tollgate: psycopg (pipelines, COPY, binary results),
//! tokio-postgres (prepared statements), and statements prepared before a reload.

use super::*;
use tollgate_e2e::python;

#[test]
fn psycopg_parameters_pipelines_copy_and_binary_results_through_tollgate() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    rows_table(pg, "tollgate_psycopg_rows");
    let agent = agent(pg.port);
    let dsn = pg.dsn();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/psycopg_client.py");
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    let out = agent.run_job(
        &[("repository", "acme/api")],
        &[
            python.to_str().expect("path"),
            script.to_str().expect("path"),
            &dsn,
        ],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let seen: Value = serde_json::from_str(stdout(&out).trim()).expect("the client's JSON");
    assert_eq!(seen["params"], serde_json::json!([42, "forty-two"]));
    assert_eq!(seen["ddl"], "42501", "{seen}");
    assert!(
        seen["ddl_message"]
            .as_str()
            .is_some_and(|m| m.contains("policy no-ddl-in-production")),
        "{seen}"
    );
    assert_eq!(
        seen["after_denial"], "25P02",
        "the server agrees the transaction failed"
    );
    assert_eq!(seen["recovered"], "recovered");
    assert_eq!(seen["pipeline_max"], 5);
    // What the client sees is masked: text, binary and COPY alike; ints untouched.
    assert_eq!(seen["binary"], serde_json::json!([1, "****@example.com"]));
    assert_eq!(seen["text"], serde_json::json!([1, "****@example.com"]));
    let copy_out = seen["copy_out"].as_array().expect("copy rows");
    assert_eq!(copy_out.len(), 7);
    assert_eq!(copy_out[5], serde_json::json!(["6", "****@example.net"]));
    assert_eq!(copy_out[6], serde_json::json!(["7", "plain text"]));
    // The data itself is intact.
    assert_eq!(
        direct_psql(pg, "select email from tollgate_psycopg_rows where id = 6"),
        "copied@example.net"
    );

    // Every statement is on record, with its protocol.
    let sessions = agent.wait_sessions(None, 1);
    let statements = wait_statements(&agent, &sessions, 15);
    let inserts = statements
        .iter()
        .filter(|s| s.sql.starts_with("INSERT INTO tollgate_psycopg_rows"))
        .count();
    assert_eq!(inserts, 5, "executemany: one record per execution");
    let denied: Vec<&StatementRecord> = statements
        .iter()
        .filter(|s| s.decision == DecisionLabel::Deny)
        .collect();
    assert_eq!(denied.len(), 1, "{statements:#?}");
    assert_eq!(denied[0].protocol, "extended");
    assert!(
        statements
            .iter()
            .any(|s| { s.sql.starts_with("COPY tollgate_psycopg_rows") && s.rows == Some(2) })
    );
    direct_psql(pg, "DROP TABLE tollgate_psycopg_rows");
}

#[test]
fn tokio_postgres_prepared_statements_through_tollgate() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    rows_table(pg, "tollgate_tokio_rows");
    let agent = agent(pg.port);
    let dsn = pg.dsn();
    let out = agent.run_job(
        &[("repository", "acme/api")],
        &[
            &tollgate_e2e::helper(env!("CARGO_BIN_EXE_tokio_pg_client")),
            &dsn,
        ],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let seen: Value = serde_json::from_str(stdout(&out).trim()).expect("the client's JSON");
    assert_eq!(seen["sums"], serde_json::json!([2, 42]));
    assert_eq!(seen["inserted"], 3);
    assert_eq!(
        seen["emails"],
        serde_json::json!(["****@example.com", "****@example.com", "****@example.com"])
    );
    assert_eq!(seen["denied"], "42501");
    assert_eq!(seen["after"], 100);
    let sessions = agent.wait_sessions(None, 1);
    let statements = wait_statements(&agent, &sessions, 8);
    let executions = |prefix: &str| {
        statements
            .iter()
            .filter(|s| s.sql.starts_with(prefix))
            .count()
    };
    assert_eq!(executions("SELECT $1::int4 + 1"), 3, "{statements:#?}");
    assert_eq!(executions("INSERT INTO tollgate_tokio_rows"), 3);
    let insert = statements
        .iter()
        .find(|s| s.sql.starts_with("INSERT"))
        .expect("an INSERT");
    assert_eq!(
        insert.params[1], "****@example.com",
        "parameters are recorded masked"
    );
    assert_eq!(
        direct_psql(pg, "select count(*) from tollgate_tokio_rows"),
        "3",
        "the DROP never ran"
    );
    direct_psql(pg, "DROP TABLE tollgate_tokio_rows");
}

#[test]
fn a_reload_applies_to_statements_prepared_before_it() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    rows_table(pg, "tollgate_tokio_rows");
    let agent = agent(pg.port);
    let dsn = pg.dsn();
    let mut job = agent
        .run_command(
            &[("repository", "acme/api")],
            &[
                &tollgate_e2e::helper(env!("CARGO_BIN_EXE_tokio_pg_client")),
                &dsn,
                "--across-reload",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client job");
    let mut stdin = job.stdin.take().expect("stdin");
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(job.stdout.take().expect("stdout")));
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("prepared")
    );

    // Writes are no longer permitted: the statement prepared (and decided) before the
    // reload must not run again.
    let read_only = POLICY.replace(
        "action in [Action::\"sql:read\", Action::\"sql:write\"]",
        "action == Action::\"sql:read\"",
    );
    assert_ne!(read_only, POLICY);
    let generation = agent.status().policy.generation;
    std::fs::write(agent.policy_dir().join("pg.cedar"), read_only).expect("policy");
    wait_for("the reload", Duration::from_secs(10), || {
        (agent.status().policy.generation > generation).then_some(())
    });
    writeln!(stdin, "go").expect("write");
    let seen: Value = serde_json::from_str(
        &lines
            .next()
            .and_then(Result::ok)
            .expect("the client's JSON"),
    )
    .expect("JSON");
    let status = job.wait().expect("client");
    assert!(status.success(), "{seen}");
    assert_eq!(seen["before"], 1);
    assert_eq!(seen["after"], "42501", "denied after the reload: {seen}");
    assert_eq!(
        seen["rows"], 1,
        "the session goes on, and the row was not inserted"
    );
    assert_eq!(
        direct_psql(pg, "select count(*) from tollgate_tokio_rows"),
        "1"
    );

    let sessions = agent.wait_sessions(None, 1);
    let statements = wait_statements(&agent, &sessions, 3);
    let inserts: Vec<DecisionLabel> = statements
        .iter()
        .filter(|s| s.sql.starts_with("INSERT"))
        .map(|s| s.decision)
        .collect();
    assert_eq!(
        inserts,
        [DecisionLabel::Allow, DecisionLabel::Deny],
        "{statements:#?}"
    );
    direct_psql(pg, "DROP TABLE tollgate_tokio_rows");
}
