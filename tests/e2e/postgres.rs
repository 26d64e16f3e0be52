//! PostgreSQL-aware interception with real clients: statements classified, decided by
//! policy (a denied statement gets SQLSTATE 42501 and both sides agree on the
//! transaction state), and recorded, simple and extended protocol alike.
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
    let log = strip_ansi(&agent.log());
    let access = log
        .lines()
        .find(|l| l.contains(&format!("id={id}")) && l.contains("connection"))
        .unwrap_or_else(|| panic!("no access event for {id} in\n{log}"));
    assert!(access.contains("statements=8"), "{access}");
    assert!(access.contains("refused_statements=1"), "{access}");
}

/// The text of a log without its terminal colours.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ending in a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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
    let init = output(
        Command::new("pgbench")
            .args([
                "-i",
                "-q",
                "-s",
                "1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
            ])
            .arg(pg.port.to_string())
            .arg("postgres"),
    );
    assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
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
fn sensitive_values_are_masked_unless_the_job_is_exempt_and_never_recorded() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let setup = "DROP TABLE IF EXISTS tollgate_customers; \
        CREATE TABLE tollgate_customers (id int, name text, email text, card text, ssn text, age int, account int8); \
        INSERT INTO tollgate_customers VALUES \
        (1, 'Alice', 'alice@example.com', '4111 1111 1111 1111', '123-45-6789', 41, 4111111111111111), \
        (2, 'Bob', 'bob@example.org', 'no card on file', NULL, 37, 4567890123456791)";
    direct_psql(pg, setup);
    let targets = format!(
        "[[targets]]\nname = \"pg\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{port}]\n\
         protocol = \"postgres\"\nmasking = {{ results = \"detect\" }}\n\n\
         [[masking.rules]]\ncolumns = [\"ssn\", \"*_ssn\"]\ntables = [\"tollgate_customers\"]\n",
        port = pg.port
    );
    let policy = format!(
        "{POLICY}\n@id(\"auditors-see-clear\")\n\
         permit(principal, action == Action::\"mask:exempt\", resource)\n\
         when {{ principal.hasTag(\"team\") && principal.getTag(\"team\") == \"audit\" }};\n"
    );
    let agent = Agent::start_with_policy("", &targets, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("pg.cedar"), &policy).expect("policy");
    });
    let query = pg.psql_args(
        "127.0.0.1",
        "SELECT name, email, card, ssn, age, account FROM tollgate_customers ORDER BY id",
    );
    let query: Vec<&str> = query.iter().map(String::as_str).collect();

    let masked = agent.run_job(&[("repository", "acme/api")], &query);
    assert!(masked.status.success(), "{}", stderr(&masked));
    assert_eq!(
        stdout(&masked).lines().collect::<Vec<_>>(),
        [
            "Alice|****@example.com|************1111|****|41|4111111111111111",
            "Bob|****@example.org|no card on file||37|4567890123456791",
        ],
        "text columns masked for a job without an exemption; the int8 never"
    );
    let clear = agent.run_job(&[("repository", "acme/api"), ("team", "audit")], &query);
    assert!(clear.status.success(), "{}", stderr(&clear));
    assert_eq!(
        stdout(&clear).lines().collect::<Vec<_>>(),
        [
            "Alice|alice@example.com|4111 1111 1111 1111|123-45-6789|41|4111111111111111",
            "Bob|bob@example.org|no card on file||37|4567890123456791",
        ],
        "clear for an exempt job"
    );
    assert_eq!(
        agent.metric("tollgate_postgres_masked_rows_total"),
        2.0,
        "both rows of the first job had masked values"
    );

    // What is recorded is masked too, exempt or not.
    let insert = pg.psql_args(
        "127.0.0.1",
        "INSERT INTO tollgate_customers VALUES (3, 'Carol', 'carol@example.net', '5500 0000 0000 0004', NULL, 29, 1)",
    );
    let insert: Vec<&str> = insert.iter().map(String::as_str).collect();
    let out = agent.run_job(&[("repository", "acme/api"), ("team", "audit")], &insert);
    assert!(out.status.success(), "{}", stderr(&out));
    let sessions = agent.wait_sessions(None, 3);
    let recorded: Vec<String> = sessions
        .iter()
        .flat_map(|s| statements(&agent, s))
        .map(|s| s.sql.to_string())
        .collect();
    let insert_sql = recorded
        .iter()
        .find(|s| s.starts_with("INSERT INTO tollgate_customers"))
        .unwrap_or_else(|| panic!("no INSERT recorded: {recorded:?}"));
    assert!(
        insert_sql.contains("'****@example.net'") && insert_sql.contains("'************0004'"),
        "{insert_sql}"
    );
    assert!(
        !recorded.iter().any(|s| s.contains("carol@")),
        "{recorded:?}"
    );
    direct_psql(pg, "DROP TABLE tollgate_customers");
}

#[test]
fn masking_and_exemptions_follow_a_reload_in_live_sessions() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_codes; CREATE TABLE tollgate_codes (code text); \
         INSERT INTO tollgate_codes VALUES ('XYZ-123')",
    );
    let targets = format!(
        "[[targets]]\nname = \"pg\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{}]\n\
         protocol = \"postgres\"\n",
        pg.port
    );
    let exemption = "@id(\"auditors-see-clear\")\n\
        permit(principal, action == Action::\"mask:exempt\", resource)\n\
        when { principal.hasTag(\"team\") && principal.getTag(\"team\") == \"audit\" };\n";
    let agent = Agent::start_with_policy("", &targets, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("pg.cedar"), format!("{POLICY}\n{exemption}")).expect("policy");
    });
    let select = "SELECT code FROM tollgate_codes;";
    let mut plain = LiveSession::open(&agent, pg, &[("repository", "acme/api")]);
    let mut audit = LiveSession::open(&agent, pg, &[("repository", "acme/api"), ("team", "audit")]);
    assert_eq!(
        plain.query(select),
        "XYZ-123",
        "no rule covers the column yet"
    );
    assert_eq!(audit.query(select), "XYZ-123");

    // Appends to the agent's config file; returns what it held before.
    let append = |text: &str| {
        let before = std::fs::read_to_string(&agent.config_path).expect("config");
        std::fs::write(&agent.config_path, format!("{before}\n{text}")).expect("config");
        before
    };
    let generation = |agent: &Agent| agent.status().policy.generation;
    let before = generation(&agent);
    append("[[masking.rules]]\ncolumns = [\"code\"]\n");
    wait_for("the masking reload", Duration::from_secs(10), || {
        (generation(&agent) > before).then_some(())
    });
    assert_eq!(
        plain.query(select),
        "****",
        "the live session masks after the reload"
    );
    assert_eq!(
        audit.query(select),
        "XYZ-123",
        "an exempt job still sees clear"
    );

    // A broken rule is refused; the rule in force stays.
    let errors = |agent: &Agent| agent.metric("tollgate_policy_reloads_total{result=\"error\"}");
    let failed = errors(&agent);
    let config = append("[[masking.rules]]\ncolumns = []\n");
    wait_for("the failed reload", Duration::from_secs(10), || {
        (errors(&agent) > failed).then_some(())
    });
    assert!(
        agent.log().contains("masking.rules"),
        "the error names the key"
    );
    assert_eq!(plain.query(select), "****");

    // Withdrawing the exemption masks the auditor's live session too.
    // (Config first: the reload that loads the three policies has read both.)
    std::fs::write(&agent.config_path, &config).expect("config");
    std::fs::write(agent.policy_dir().join("pg.cedar"), POLICY).expect("policy");
    wait_for("the policy reload", Duration::from_secs(10), || {
        (agent.status().policy.policies == 3).then_some(())
    });
    assert_eq!(audit.query(select), "****", "the exemption was withdrawn");
    let mut fresh = LiveSession::open(&agent, pg, &[("repository", "acme/api")]);
    assert_eq!(fresh.query(select), "****", "a new session masks as well");
    for session in [plain, audit, fresh] {
        session.close();
    }
    direct_psql(pg, "DROP TABLE tollgate_codes");
}

/// The Python with psycopg 3 that `cargo xtask setup` installs.
fn python() -> std::path::PathBuf {
    std::env::var_os("TOLLGATE_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python"),
        std::path::PathBuf::from,
    )
}

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

#[test]
fn tls_is_terminated_with_the_local_ca_and_originated_to_the_server() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let agent = agent(pg.port);
    // The CA the agent created in its state directory.
    let ca = output(
        agent
            .tollgate()
            .args(["ca", "export", "--config"])
            .arg(&agent.config_path),
    );
    assert!(ca.status.success(), "{}", stderr(&ca));
    let ca_file = agent.dir.path().join("tollgate-ca.pem");
    std::fs::write(&ca_file, stdout(&ca)).expect("CA file");
    let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    // SCRAM through a terminated TLS session: SCRAM-SHA-256-PLUS is not offered, and
    // under `prefer` the server connection is plaintext so that the server does not
    // demand channel binding.
    for (user, mode, server_tls) in [
        ("postgres", "require", "t"),
        ("postgres", "verify-full", "t"),
        (tollgate_e2e::postgres::SCRAM_USER, "verify-full", "f"),
    ] {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres sslmode={mode} sslrootcert={}",
            pg.port,
            ca_file.display()
        );
        let out = output(
            agent
                .run_command(
                    &[("repository", "acme/api")],
                    &["psql", "-X", "-A", "-t", &conninfo, "-c", sql],
                )
                .env("PGPASSWORD", tollgate_e2e::postgres::SCRAM_PASSWORD),
        );
        assert!(
            out.status.success(),
            "{user} sslmode={mode}: {}\n{}",
            stderr(&out),
            agent.log()
        );
        assert_eq!(stdout(&out).trim(), server_tls, "{user}: TLS to the server");
    }
    // Without Tollgate's CA, verify-full fails: the client really talks to Tollgate.
    let strict = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert=/dev/null",
        pg.port
    );
    let out = agent.run_job(
        &[("repository", "acme/api")],
        &["psql", "-X", "-A", "-t", &strict, "-c", "select 1"],
    );
    assert!(
        !out.status.success(),
        "verify-full without the CA must fail"
    );
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

/// A PostgreSQL server stand-in without TLS: answers SSLRequest with `N`, then refuses
/// the startup with an error naming itself. Counts the SSLRequests it got.
fn tls_less_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::{
        io::Read as _,
        net::TcpListener,
        sync::{Arc, atomic::AtomicUsize},
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let ssl_requests = Arc::new(AtomicUsize::new(0));
    let counter = ssl_requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                loop {
                    let mut head = [0u8; 8];
                    if stream.read_exact(&mut head).is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                    if head[4..8] == tollgate_pgwire::SSL_REQUEST.to_be_bytes() {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = stream.write_all(b"N");
                        continue;
                    }
                    let mut rest = vec![0u8; len.saturating_sub(8)];
                    let _ = stream.read_exact(&mut rest);
                    let refusal = tollgate_pgwire::backend::error_response(
                        "28000",
                        "tls-less stand-in",
                        None,
                        None,
                    );
                    let _ = stream.write_all(&refusal);
                    return;
                }
            });
        }
    });
    (port, ssl_requests)
}

#[test]
fn a_client_is_offered_tls_only_when_the_server_leg_has_it() {
    if !require_root() {
        return;
    }
    let (port, ssl_requests) = tls_less_server();
    let agent = agent(port);
    let conninfo =
        |mode: &str| format!("host=127.0.0.1 port={port} user=app dbname=app sslmode={mode}");
    // Directly, a client that requires TLS is refused by this server...
    let direct = output(Command::new("psql").args(["-X", &conninfo("require"), "-c", "select 1"]));
    assert!(!direct.status.success());
    assert!(
        stderr(&direct).contains("server does not support SSL"),
        "{}",
        stderr(&direct)
    );
    // ...and so it is through Tollgate: the agent asked the server and answered as it did.
    let job = agent.run_job(
        &[("repository", "acme/api")],
        &["psql", "-X", &conninfo("require"), "-c", "select 1"],
    );
    assert!(!job.status.success());
    assert!(
        stderr(&job).contains("server does not support SSL"),
        "the client must not get TLS from Tollgate when the server has none: {}\n{}",
        stderr(&job),
        agent.log()
    );
    // A client that merely prefers TLS goes on in plaintext and reaches the server.
    let job = agent.run_job(
        &[("repository", "acme/api")],
        &["psql", "-X", &conninfo("prefer"), "-c", "select 1"],
    );
    assert!(!job.status.success());
    assert!(
        stderr(&job).contains("tls-less stand-in"),
        "{}\n{}",
        stderr(&job),
        agent.log()
    );
    // Each session asked the server, and no leg of either was TLS (the client that
    // required TLS gave up before its startup, so its session has no startup at all).
    assert!(ssl_requests.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    let sessions = agent.wait_sessions(None, 2);
    for session in &sessions {
        assert_ne!(session.client_tls, Some(true), "{session:?}");
        assert_ne!(session.server_tls, Some(true), "{session:?}");
    }
    assert!(
        sessions
            .iter()
            .any(|s| s.client_tls == Some(false) && s.db_user.as_deref() == Some("app")),
        "the prefer client's startup is recorded, in plaintext: {sessions:?}"
    );
}
