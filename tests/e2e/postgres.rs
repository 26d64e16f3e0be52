//! PostgreSQL-aware interception with real clients: statements classified, decided by
//! policy (a denied statement gets SQLSTATE 42501 and both sides agree on the
//! transaction state), and recorded, simple and extended protocol alike.
mod clients;
mod masking;
mod tls;

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tollgate::record::{ConnectionRecord, DecisionLabel, StatementRecord};
use tollgate_e2e::{
    Agent, output, output_with_stdin, postgres, postgres::LiveSession, require_root, stderr,
    stdout, wait_for,
};

const POLICY: &str = r#"
@id("pg-connect")
permit(principal, action == Action::"connect", resource)
when { resource.name == "pg" };

@id("pg-read-write")
permit(principal, action in [Action::"sql:read", Action::"sql:write"], resource)
when { resource.name == "pg" };

@id("no-ddl-in-production")
forbid(principal, action == Action::"sql:ddl", resource)
when { resource.hasTag("env") && resource.getTag("env") == "production" };
"#;

fn agent(pg_port: u16) -> Agent {
    let targets = format!(
        "[[targets]]\nname = \"pg\"\ncidrs = [\"127.0.0.1/32\", \"::1/128\"]\nports = [{pg_port}]\n\
         protocol = \"postgres\"\ntags = {{ env = \"production\" }}\n\
         masking = {{ results = \"detect\" }}\n"
    );
    Agent::start_with_policy("", &targets, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("pg.cedar"), POLICY).expect("policy");
    })
}

/// Runs psql in a job with `script` on stdin (errors do not stop it).
fn psql_script(
    agent: &Agent,
    pg: &tollgate_e2e::postgres::Postgres,
    script: &str,
) -> std::process::Output {
    let args = pg.psql_session_args("127.0.0.1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    output_with_stdin(
        &mut agent.run_command(&[("repository", "acme/api")], &args),
        script.as_bytes(),
    )
}

fn direct_psql(pg: &tollgate_e2e::postgres::Postgres, sql: &str) -> String {
    let args = pg.psql_args("127.0.0.1", sql);
    let out = output(Command::new(&args[0]).args(&args[1..]));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// A fresh, empty `name (id int, email text)`, as the client programs expect it.
fn rows_table(pg: &tollgate_e2e::postgres::Postgres, name: &str) {
    direct_psql(
        pg,
        &format!("DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int, email text)"),
    );
}

fn statements(agent: &Agent, session: &ConnectionRecord) -> Vec<StatementRecord> {
    agent.statements(session)
}

/// The statements of `sessions` once at least `n` are on record (written asynchronously).
fn wait_statements(agent: &Agent, sessions: &[ConnectionRecord], n: usize) -> Vec<StatementRecord> {
    agent.wait_statements(sessions, n)
}

#[test]
fn a_denied_ddl_inside_a_transaction_fails_it_on_both_sides() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let agent = agent(pg.port);
    let script = "BEGIN;\nSELECT 'one';\nCREATE TABLE tollgate_denied_ddl (id int);\n\
                  SELECT 'two';\nROLLBACK;\nSELECT 'after';\nSELECT 1; SELECT 2;\n";
    let out = psql_script(&agent, pg, script);
    let (out_text, err_text) = (stdout(&out), stderr(&out));
    assert_eq!(
        out_text.lines().collect::<Vec<_>>(),
        ["BEGIN", "one", "ROLLBACK", "after", "1", "2"],
        "stdout: {out_text}\nstderr: {err_text}"
    );
    assert!(
        err_text.contains("tollgate: ddl statement denied: policy no-ddl-in-production"),
        "{err_text}"
    );
    // The server is in the failed-transaction state too: the next statement is refused.
    assert!(
        err_text.contains("current transaction is aborted"),
        "{err_text}"
    );
    assert_eq!(
        direct_psql(
            pg,
            "select count(*) from pg_tables where tablename = 'tollgate_denied_ddl'"
        ),
        "0"
    );

    let records = agent.wait_sessions(None, 1);
    let session = &records[0];
    assert_eq!(session.protocol.as_deref(), Some("postgres"));
    assert_eq!(session.db_user.as_deref(), Some("postgres"));
    assert_eq!(session.db_name.as_deref(), Some("postgres"));
    assert_eq!(session.application_name.as_deref(), Some("psql"));
    let statements = agent.wait_statement_records(session, 8);
    let summary: Vec<(String, String, String)> = statements
        .iter()
        .map(|s| {
            (
                s.sql.to_string(),
                s.kind.to_string(),
                s.decision.as_str().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("BEGIN", "transaction", "allow"),
        ("SELECT 'one'", "read", "allow"),
        ("CREATE TABLE tollgate_denied_ddl (id int)", "ddl", "deny"),
        ("SELECT 'two'", "read", "allow"),
        ("ROLLBACK", "transaction", "allow"),
        ("SELECT 'after'", "read", "allow"),
        ("SELECT 1", "read", "allow"),
        ("SELECT 2", "read", "allow"),
    ];
    assert_eq!(
        summary,
        expected
            .iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
            .collect::<Vec<_>>()
    );
    let denied = &statements[2];
    assert_eq!(denied.sqlstate.as_deref(), Some("42501"));
    assert_eq!(
        denied.policy_ids.first().map(String::as_str),
        Some("no-ddl-in-production")
    );
    assert_eq!(
        denied.tables.first().map(String::as_str),
        Some("tollgate_denied_ddl")
    );
    assert_eq!(
        statements[3].sqlstate.as_deref(),
        Some("25P02"),
        "refused by the server"
    );
    // The metrics count every statement decision.
    assert_eq!(
        agent.metric("tollgate_postgres_statements_total{decision=\"deny\",kind=\"ddl\"}"),
        1.0
    );
    assert_eq!(
        agent.metric("tollgate_postgres_statements_total{decision=\"allow\",kind=\"read\"}"),
        5.0
    );
    assert_eq!(statements[1].rows, Some(1));
    assert!(statements.iter().all(|s| s.protocol == "simple"));
    // The session's one access-log event counts its statements, and the refused one.
    let id = session.id.clone();
    let log = agent.plain_log();
    let access = log
        .lines()
        .find(|l| l.contains(&format!("id={id}")) && l.contains("connection"))
        .unwrap_or_else(|| panic!("no access event for {id} in\n{log}"));
    assert!(access.contains("statements=8"), "{access}");
    assert!(access.contains("refused_statements=1"), "{access}");
}

fn pgbench(agent: &Agent, pg_port: u16, args: &[&str]) -> std::process::Output {
    let port = pg_port.to_string();
    let mut cmd: Vec<&str> = vec!["pgbench", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    cmd.extend_from_slice(args);
    cmd.push("postgres");
    agent.run_job(&[("repository", "acme/api")], &cmd)
}

#[test]
fn pgbench_simple_extended_and_prepared_are_followed_and_recorded() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    // Initialized directly: its DDL would be denied in a job.
    pg.pgbench_init();
    let agent = agent(pg.port);
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&agent, pg.port, &["-n", "-t", "25", "-M", mode]);
        assert!(
            out.status.success(),
            "pgbench -M {mode}: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("number of transactions actually processed: 25/25"),
            "{}",
            stdout(&out)
        );
    }
    // Each pgbench run opens a short setup session, then the benchmark's.
    let sessions = agent.wait_sessions(None, 6);
    let mut by_protocol = std::collections::BTreeMap::new();
    for session in &sessions {
        // TPC-B: 7 statements per transaction.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let statements = loop {
            let s = statements(&agent, session);
            let is_setup = !s.is_empty() && s.len() < 20;
            if is_setup || s.len() >= 25 * 7 || std::time::Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        if statements.len() < 20 {
            continue;
        }
        assert_eq!(statements.len(), 25 * 7, "{session:?}");
        let protocol = statements[0].protocol.to_string();
        let writes = statements.iter().filter(|s| s.kind == "write").count();
        assert_eq!(
            writes,
            25 * 4,
            "{protocol}: 3 UPDATEs and an INSERT per transaction"
        );
        assert!(
            statements
                .iter()
                .all(|s| s.decision == DecisionLabel::Allow && s.sqlstate.is_none()),
            "{protocol}: {statements:#?}"
        );
        let update = statements
            .iter()
            .find(|s| s.sql.starts_with("UPDATE pgbench_accounts"))
            .expect("an UPDATE");
        assert_eq!(update.tables[0], "pgbench_accounts");
        assert_eq!(update.rows, Some(1));
        if protocol == "extended" {
            assert!(!update.params.is_empty(), "{update:?}");
        }
        *by_protocol.entry(protocol).or_insert(0) += 1;
    }
    assert_eq!(by_protocol.get("simple"), Some(&1), "{by_protocol:?}");
    assert_eq!(by_protocol.get("extended"), Some(&2), "{by_protocol:?}");

    // A denied statement in the extended protocol: the error comes back, the session
    // recovers at Sync, and the next transaction is denied in the same way.
    let script = Path::new(&agent.dir.path().to_owned()).join("ddl.sql");
    std::fs::write(
        &script,
        "CREATE TABLE IF NOT EXISTS tollgate_bench_ddl (id int);\n",
    )
    .expect("script");
    let out = pgbench(
        &agent,
        pg.port,
        &[
            "-n",
            "-t",
            "1",
            "-M",
            "extended",
            "-f",
            script.to_str().expect("path"),
        ],
    );
    assert!(!out.status.success(), "the DDL must fail");
    assert!(
        stderr(&out).contains("tollgate: ddl statement denied: policy no-ddl-in-production"),
        "{}",
        stderr(&out)
    );
}

/// Sends `payload` after a valid startup message, from inside a job, and returns what
/// came back.
fn hostile(agent: &Agent, pg_port: u16, payload_hex: &str) -> String {
    let script = format!(
        r#"
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", {pg_port}))
params = b"user\0postgres\0database\0postgres\0\0"
s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
got = b""
while not got.endswith(b"Z\0\0\0\x05I"):
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
s.sendall(bytes.fromhex("{payload_hex}"))
s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    reply += chunk
sys.stdout.write(reply.decode("utf-8", "replace"))
"#
    );
    let out = agent.run_job(&[("repository", "acme/api")], &["python3", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn hostile_bytes_get_a_protocol_error_and_the_session_is_recorded() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let agent = agent(pg.port);
    // A Query whose length word is negative, then one far over the size limit, then a
    // Query that ends in the middle of its text.
    let cases = [
        ("51ffffffff", "invalid message length -1"),
        ("517fffff00", "exceeds the limit"),
        (
            "510000000a73656c",
            "the client closed in the middle of a message",
        ),
    ];
    for (payload, _) in &cases[..2] {
        let reply = hostile(&agent, pg.port, payload);
        assert!(
            reply.contains("08P01")
                && reply.contains("tollgate: malformed message from the client"),
            "{payload}: {reply:?}"
        );
    }
    let reply = hostile(&agent, pg.port, cases[2].0);
    assert!(
        reply.contains("tollgate: truncated message from the client"),
        "{reply:?}"
    );
    let sessions = agent.wait_sessions(None, 3);
    for (_, error) in cases {
        assert!(
            sessions
                .iter()
                .any(|s| s.error.as_deref().is_some_and(|e| e.contains(error))),
            "no session recorded with `{error}`: {sessions:#?}"
        );
    }
    // The agent is unaffected.
    let ok = psql_script(&agent, pg, "SELECT 'still fine';\n");
    assert_eq!(stdout(&ok).trim(), "still fine", "{}", stderr(&ok));
}

#[test]
fn psql_copy_in_and_out_through_tollgate() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_copy; CREATE TABLE tollgate_copy (id int, note text)",
    );
    let agent = agent(pg.port);
    let dir = agent.dir.path();
    let input = dir.join("in.csv");
    std::fs::write(&input, "1,hello\n2,mail dana@example.com\n3,bye\n").expect("csv");
    let output_file = dir.join("out.csv");
    let script = format!(
        "\\copy tollgate_copy FROM '{}' WITH (FORMAT csv)\n\
         \\copy tollgate_copy TO '{}' WITH (FORMAT csv)\n",
        input.display(),
        output_file.display()
    );
    let out = psql_script(&agent, pg, &script);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        direct_psql(pg, "select count(*) from tollgate_copy"),
        "3",
        "COPY FROM STDIN went through"
    );
    assert_eq!(
        std::fs::read_to_string(&output_file).expect("out.csv"),
        "1,hello\n2,mail ****@example.com\n3,bye\n",
        "COPY TO STDOUT went through, masked"
    );
    let sessions = agent.wait_sessions(None, 1);
    let statements = wait_statements(&agent, &sessions[..1], 2);
    assert_eq!(statements[0].kind, "write");
    assert_eq!(statements[0].rows, Some(3));
    assert_eq!(statements[1].kind, "read");
    assert_eq!(statements[1].rows, Some(3));
    direct_psql(pg, "DROP TABLE tollgate_copy");
}

#[test]
fn listen_notify_and_the_function_call_message_pass_through() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let agent = agent(pg.port);
    let blob = agent.dir.path().join("blob.bin");
    std::fs::write(&blob, b"large object through tollgate").expect("blob");
    // \lo_import uses libpq's fast-path FunctionCall messages.
    let script = format!(
        "LISTEN tollgate_channel;\nNOTIFY tollgate_channel, 'hello';\n\\lo_import '{}'\n\
         SELECT count(*) > 0 FROM pg_largeobject_metadata;\n",
        blob.display()
    );
    let out = psql_script(&agent, pg, &script);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains("Asynchronous notification \"tollgate_channel\" with payload \"hello\""),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("lo_import"), "{}", stdout(&out));
    assert!(stdout(&out).trim_end().ends_with('t'), "{}", stdout(&out));
    let sessions = agent.wait_sessions(None, 1);
    let statements = tollgate_e2e::wait_for(
        "the function calls",
        std::time::Duration::from_secs(10),
        || {
            let s = statements(&agent, &sessions[0]);
            s.iter().any(|s| s.protocol == "function").then_some(s)
        },
    );
    let calls: Vec<&StatementRecord> = statements
        .iter()
        .filter(|s| s.protocol == "function")
        .collect();
    assert!(
        calls
            .iter()
            .all(|s| s.kind == "procedural" && s.decision == DecisionLabel::Allow)
    );
    direct_psql(pg, "SELECT lo_unlink(oid) FROM pg_largeobject_metadata");
}
