//! The fleet's central store: a real PostgreSQL (a server of the test's own, reached
//! with SCRAM over TLS) and three agents on this machine, each with its own cgroup
//! parent, pins, ports and state. Every record arrives centrally exactly once, the
//! chains verify, and tampering with the central rows or the local file is caught by
//! `tollgate audit verify`, which names the record.
mod fleet;
mod outage;

use std::{path::Path, process::Command};

use tollgate_e2e::{
    Agent, output,
    postgres::{OwnPostgres, Postgres, SCRAM_PASSWORD, SCRAM_USER, own_postgres, postgres},
    require_root,
    servers::Server,
    stderr, stdout, wait_for,
};

/// A central store, its schema migrated, and the password file agents use.
pub(crate) struct Central {
    pub pg: OwnPostgres,
    pub url: String,
    pub password_file: tempfile::NamedTempFile,
}

impl Central {
    pub fn start() -> Self {
        let pg = own_postgres();
        let url = format!(
            "postgresql://{SCRAM_USER}@127.0.0.1:{}/postgres?sslmode=require",
            pg.port
        );
        let password_file = tempfile::NamedTempFile::new().expect("password file");
        std::fs::write(password_file.path(), format!("{SCRAM_PASSWORD}\n")).expect("password");
        let central = Self {
            pg,
            url,
            password_file,
        };
        let out = central.tollgate(&["central", "migrate"]);
        assert!(out.status.success(), "migrate: {}", stderr(&out));
        assert!(
            stdout(&out).contains("schema migrated from version 0 to 2"),
            "{}",
            stdout(&out)
        );
        // Once more: nothing to do.
        let again = central.tollgate(&["central", "migrate"]);
        assert!(
            stdout(&again).contains("schema is at version 2"),
            "{}",
            stdout(&again)
        );
        central
    }

    /// `tollgate ARGS --url … --password-file …`.
    pub fn tollgate(&self, args: &[&str]) -> std::process::Output {
        output(
            Command::new(tollgate_e2e::agent::tollgate_bin())
                .args(args)
                .args(["--url", &self.url, "--password-file"])
                .arg(self.password_file.path()),
        )
    }

    /// One value (or rows, a line each) of `sql` on the central store.
    pub fn sql(&self, sql: &str) -> String {
        let args = self.pg.psql_args("127.0.0.1", sql);
        let out = output(Command::new(&args[0]).args(&args[1..]));
        assert!(out.status.success(), "{sql}: {}", stderr(&out));
        stdout(&out).trim().to_owned()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.sql(sql)
            .parse()
            .unwrap_or_else(|_| panic!("{sql}: not a count"))
    }

    /// `[central]` for an agent named `host`, plus `extra` keys.
    pub fn config(&self, host: &str, extra: &str) -> String {
        format!(
            "[central]\nurl = \"{}\"\npassword_file = \"{}\"\nhost = \"{host}\"\n\
             checkpoint_interval = \"1s\"\n{extra}\n",
            self.url,
            self.password_file.path().display()
        )
    }

    /// An agent shipping here as `host`, following `pg` at L7 (its key not enrolled).
    pub fn agent_unenrolled(&self, host: &str, pg: &Postgres) -> Agent {
        Agent::start_with(&format!("{}\n{}", self.config(host, ""), pg.target()))
    }

    /// An agent shipping here as `host`, following `pg` at L7, its key enrolled.
    pub fn agent(&self, host: &str, pg: &Postgres, extra: &str) -> Agent {
        let agent = Agent::start_with(&format!("{}\n{}", self.config(host, extra), pg.target()));
        let enrolled = enroll(&agent);
        assert!(stdout(&enrolled).contains(&format!("enrolled host {host}")));
        agent
    }

    /// `tollgate audit verify --central` for `host` (all hosts when None).
    pub fn verify(&self, agent: &Agent, host: Option<&str>) -> std::process::Output {
        let mut cmd = agent.tollgate();
        cmd.args(["audit", "verify", "--central", &self.url, "--config"])
            .arg(&agent.config_path);
        if let Some(host) = host {
            cmd.args(["--host", host]);
        }
        output(&mut cmd)
    }
}

/// `tollgate central enroll-host` for `agent` (asserted to succeed).
pub(crate) fn enroll(agent: &Agent) -> std::process::Output {
    let enrolled = output(
        agent
            .tollgate()
            .args(["central", "enroll-host", "--config"])
            .arg(&agent.config_path),
    );
    assert!(
        enrolled.status.success(),
        "enroll-host: {}",
        stderr(&enrolled)
    );
    enrolled
}

/// A count from an agent's local store.
pub(crate) fn local_count(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("local store");
    conn.query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// Every record of `host`'s local chain is in the central store exactly once, with its
/// checkpoints.
pub(crate) fn assert_all_shipped_once(central: &Central, agent: &Agent, host: &str) {
    let local = local_count(&agent.db_path, "SELECT count(*) FROM chain");
    let local_max = local_count(&agent.db_path, "SELECT max(seq) FROM chain");
    assert!(local > 0, "{host} recorded nothing");
    let q = |what: &str| {
        central.count(&format!(
            "SELECT {what} FROM tollgate.records WHERE host = '{host}'"
        ))
    };
    assert_eq!(q("count(*)"), local, "{host}: records central vs local");
    assert_eq!(
        q("count(DISTINCT seq)"),
        local,
        "{host}: a record arrived twice"
    );
    assert_eq!(q("max(seq)"), local_max, "{host}: the newest record");
    let statements = local_count(&agent.db_path, "SELECT count(*) FROM statements");
    assert_eq!(
        central.count(&format!(
            "SELECT count(*) FROM tollgate.statements WHERE host = '{host}'"
        )),
        statements,
        "{host}: statements"
    );
    // The typed tables (schema version 2) hold each record's newest version: the same
    // chain position and body as the newest of its records, one row per local row.
    for (kind, table, local_table) in [
        ("connection", "connection_rows", "connections"),
        ("statement", "statement_rows", "statements"),
        ("job", "job_rows", "jobs"),
    ] {
        let local_rows = local_count(
            &agent.db_path,
            &format!("SELECT count(*) FROM {local_table}"),
        );
        assert_eq!(
            central.count(&format!(
                "SELECT count(*) FROM tollgate.{table} r JOIN tollgate.latest l \
                 ON l.host = r.host AND l.kind = '{kind}' AND l.record_id = r.id \
                 AND l.seq = r.chain_seq AND l.body = r.body WHERE r.host = '{host}'"
            )),
            local_rows,
            "{host}: {table} against the newest records"
        );
        assert_eq!(
            central.count(&format!(
                "SELECT count(*) FROM tollgate.{table} WHERE host = '{host}'"
            )),
            local_rows,
            "{host}: {table}"
        );
    }
    let checkpoints = local_count(&agent.db_path, "SELECT count(*) FROM checkpoints");
    assert_eq!(
        central.count(&format!(
            "SELECT count(*) FROM tollgate.checkpoints WHERE host = '{host}'"
        )),
        checkpoints,
        "{host}: checkpoints"
    );
}

/// psql, pgbench and curl in a job of `agent`.
pub(crate) fn workload(agent: &Agent, pg: &Postgres, web: &Server, tag: &str) {
    let sql = format!("SELECT '{tag}' AS who, 1; SELECT count(*) FROM pgbench_branches");
    let args = pg.psql_args("127.0.0.1", &sql);
    let out = agent.run_job(
        &[("repository", "acme/api")],
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "psql: {}", stderr(&out));
    let port = pg.port.to_string();
    let out = agent.run_job(
        &[("repository", "acme/api")],
        &[
            "pgbench",
            "-n",
            "-S",
            "-t",
            "30",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "postgres",
        ],
    );
    assert!(out.status.success(), "pgbench: {}", stderr(&out));
    let url = format!("http://127.0.0.1:{}/", web.port());
    let out = agent.run_job(&[("repository", "acme/web")], &["curl", "-sf", &url]);
    assert!(out.status.success(), "curl: {}", stderr(&out));
}

#[test]
fn three_agents_ship_every_record_exactly_once_and_tampering_is_named() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    pg.pgbench_init();
    let web = Server::http("127.0.0.1:0");
    let central = Central::start();
    let hosts = ["runner-a", "runner-b", "runner-c"];
    let mut agents: Vec<Agent> = hosts.iter().map(|h| central.agent(h, pg, "")).collect();
    for (agent, host) in agents.iter().zip(hosts) {
        workload(agent, pg, &web, host);
    }
    // Shipping while running: the lag comes back to zero.
    for agent in &agents {
        wait_for(
            "the backlog shipped",
            std::time::Duration::from_secs(20),
            || {
                (agent.metric("tollgate_central_backlog_records") == 0.0
                    && agent.metric("tollgate_central_shipped_total{what=\"records\"}") > 0.0)
                    .then_some(())
            },
        );
        assert_eq!(agent.metric("tollgate_central_up"), 1.0);
    }
    // A clean stop signs the last records and ships them.
    for agent in &mut agents {
        agent.stop();
    }
    for (agent, host) in agents.iter().zip(hosts) {
        assert_all_shipped_once(&central, agent, host);
        let local = output(
            agent
                .tollgate()
                .args(["audit", "verify", "--config"])
                .arg(&agent.config_path),
        );
        assert!(
            local.status.success(),
            "local verify {host}: {}{}",
            stdout(&local),
            stderr(&local)
        );
        assert!(
            stdout(&local).contains(&format!("host {host}: ok")),
            "{}",
            stdout(&local)
        );
    }
    let all = central.verify(&agents[0], None);
    assert!(all.status.success(), "{}{}", stdout(&all), stderr(&all));
    for host in hosts {
        assert!(
            stdout(&all).contains(&format!("host {host}: ok")),
            "{}",
            stdout(&all)
        );
    }
    // The same workload on each host: statements are recorded with the host.
    assert_eq!(
        central.sql(
            "SELECT string_agg(DISTINCT host, ',' ORDER BY host) FROM tollgate.statements \
             WHERE sql LIKE 'SELECT ''runner-%'"
        ),
        "runner-a,runner-b,runner-c"
    );
    fleet_reads_span_hosts(&central, &agents[0], &agents[1].db_path);
    tampering_is_named(&central, &agents[0], "runner-a");
    local_tampering_is_named(&agents[1], "runner-b");
}

/// `sessions list|show` and `audit` with `--central` read every host's records, or one
/// host's with `--host`, as the local store shows them.
fn fleet_reads_span_hosts(central: &Central, agent: &Agent, b_db: &Path) {
    let read = |args: &[&str]| -> serde_json::Value {
        let out = output(
            agent
                .tollgate()
                .args(args)
                .args(["--json", "--central", &central.url, "--central-config"])
                .arg(&agent.config_path),
        );
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out)).expect("json")
    };
    let all = read(&["sessions", "list"]);
    let all = all.as_array().expect("sessions");
    let hosts: std::collections::BTreeSet<&str> =
        all.iter().filter_map(|s| s["host"].as_str()).collect();
    assert_eq!(
        hosts.into_iter().collect::<Vec<_>>(),
        ["runner-a", "runner-b", "runner-c"]
    );
    // The same sessions as runner-b's own store has.
    let b = read(&["sessions", "list", "--host", "runner-b"]);
    let b = b.as_array().expect("sessions");
    let local_b = local_count(b_db, "SELECT count(*) FROM connections");
    assert!(local_b > 0);
    assert!(b.iter().all(|s| s["host"] == "runner-b"));
    assert_eq!(b.len() as i64, local_b);
    assert_eq!(
        b.len(),
        all.iter().filter(|s| s["host"] == "runner-b").count()
    );
    // One PostgreSQL session of runner-b, with its statements and its job's labels.
    let psql = b
        .iter()
        .find(|s| s["comm"] == "psql")
        .expect("runner-b's psql session");
    let id = psql["id"].as_str().expect("id");
    let shown = read(&["sessions", "show", &id[..20], "--host", "runner-b"]);
    assert_eq!(shown["host"], "runner-b");
    assert_eq!(shown["job_labels"]["repository"], "acme/api");
    let sqls: Vec<&str> = shown["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .filter_map(|st| st["sql"].as_str())
        .collect();
    assert!(sqls.iter().any(|s| s.contains("'runner-b'")), "{sqls:?}");
    let audit = read(&["audit", "--host", "runner-c"]);
    let audit = audit.as_array().expect("audit");
    assert!(!audit.is_empty() && audit.iter().all(|e| e["host"] == "runner-c"));
}

/// Each central tamper fails `audit verify` with its kind and the record; the rows are
/// put back between tampers, and the untampered hosts still verify.
fn tampering_is_named(central: &Central, agent: &Agent, host: &str) {
    central.sql(&format!(
        "CREATE TABLE saved AS SELECT * FROM tollgate.records WHERE host = '{host}'"
    ));
    let restore = || {
        central.sql(&format!(
            "DELETE FROM tollgate.records WHERE host = '{host}'; \
             INSERT INTO tollgate.records SELECT * FROM saved"
        ));
        let out = central.verify(agent, Some(host));
        assert!(out.status.success(), "restored: {}", stdout(&out));
    };
    let statement = central.sql(&format!(
        "SELECT record_id || ' ' || seq FROM tollgate.records WHERE host = '{host}' \
         AND kind = 'statement' ORDER BY seq LIMIT 1 OFFSET 3"
    ));
    let (statement_id, statement_seq) = statement.split_once(' ').expect("a statement");
    let connection = central.sql(&format!(
        "SELECT record_id || ' ' || seq FROM tollgate.records WHERE host = '{host}' \
         AND kind = 'connection' ORDER BY seq LIMIT 1"
    ));
    let (connection_id, connection_seq) = connection.split_once(' ').expect("a connection");
    let last: i64 = central.count(&format!(
        "SELECT max(seq) FROM tollgate.records WHERE host = '{host}'"
    ));
    let cases: Vec<(String, String)> = vec![
        (
            format!(
                "UPDATE tollgate.records SET body = replace(body, '\"sql\":\"', '\"sql\":\"DROP TABLE x; ') \
                 WHERE host = '{host}' AND seq = {statement_seq}"
            ),
            format!("record #{statement_seq} (statement {statement_id}): changed"),
        ),
        (
            format!(
                "DELETE FROM tollgate.records WHERE host = '{host}' AND kind = 'connection' \
                 AND record_id = '{connection_id}'"
            ),
            format!("record #{connection_seq} (absent): missing"),
        ),
        (
            format!("DELETE FROM tollgate.records WHERE host = '{host}' AND seq > {last} - 10"),
            format!(
                "record #{} (absent): truncated after a checkpoint",
                last - 9
            ),
        ),
        (
            format!(
                "UPDATE tollgate.records SET seq = -1 WHERE host = '{host}' AND seq = {a}; \
                 UPDATE tollgate.records SET seq = {a} WHERE host = '{host}' AND seq = {b}; \
                 UPDATE tollgate.records SET seq = {b} WHERE host = '{host}' AND seq = -1",
                a = last - 20,
                b = last - 19
            ),
            format!("record #{}", last - 20),
        ),
    ];
    for (i, (tamper, expected)) in cases.iter().enumerate() {
        central.sql(tamper);
        let out = central.verify(agent, None);
        assert!(
            !out.status.success(),
            "tamper {i} not caught: {}",
            stdout(&out)
        );
        let text = stdout(&out);
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("host {host}:")))
            .unwrap_or_default();
        assert!(
            line.contains("FAILED") && line.contains(expected),
            "tamper {i}: {text}"
        );
        if i == 3 {
            assert!(line.contains("reordered"), "{line}");
        }
        // The other hosts are untouched.
        assert!(text.contains("host runner-c: ok"), "{text}");
        restore();
    }
}

/// Editing the local SQLite file (a statement's text, or the chain itself) is caught.
fn local_tampering_is_named(agent: &Agent, host: &str) {
    let conn = rusqlite::Connection::open(&agent.db_path).expect("local store");
    let id: String = conn
        .query_row(
            "SELECT id FROM statements ORDER BY started_at LIMIT 1 OFFSET 2",
            [],
            |r| r.get(0),
        )
        .expect("a statement");
    let verify = || {
        output(
            agent
                .tollgate()
                .args(["audit", "verify", "--config"])
                .arg(&agent.config_path),
        )
    };
    let original: String = conn
        .query_row("SELECT sql FROM statements WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .expect("sql");
    conn.execute(
        "UPDATE statements SET sql = 'SELECT 0' WHERE id = ?1",
        [&id],
    )
    .expect("tamper");
    let out = verify();
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("(statement {id}): changed")),
        "{host}: {}",
        stdout(&out)
    );
    conn.execute(
        "UPDATE statements SET sql = ?2 WHERE id = ?1",
        [&id, &original],
    )
    .expect("restore");
    assert!(verify().status.success());
    conn.execute(
        "UPDATE chain SET body = replace(body, '\"sql\":\"', '\"sql\":\"--') WHERE seq = \
         (SELECT max(seq) FROM chain WHERE kind = 'statement' AND record_id = ?1)",
        [&id],
    )
    .expect("tamper the chain");
    let out = verify();
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("(statement {id}): changed")),
        "{}",
        stdout(&out)
    );
}
