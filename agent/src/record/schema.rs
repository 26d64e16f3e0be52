//! The SQLite schema of the recording store.
use rusqlite::Connection;

pub const VERSION: i64 = 18;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    labels      TEXT NOT NULL,
    cgroup_id   INTEGER NOT NULL,
    cgroup_path TEXT NOT NULL,
    owner_pid   INTEGER NOT NULL,
    owner_start INTEGER NOT NULL,
    owner_uid   INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    exit_code   INTEGER,
    exit_signal INTEGER,
    end_reason  TEXT,
    kind        TEXT,
    identity    TEXT,
    assurance   TEXT,
    origin_cgroup TEXT
);
CREATE TABLE IF NOT EXISTS connections (
    id          TEXT PRIMARY KEY,
    job_id      TEXT,
    attributed  INTEGER NOT NULL,
    pid         INTEGER,
    tid         INTEGER,
    uid         INTEGER,
    gid         INTEGER,
    comm        TEXT,
    exe         TEXT,
    cgroup_id   INTEGER,
    source      TEXT NOT NULL,
    destination TEXT,
    decision    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    policy_ids  TEXT NOT NULL,
    bytes_up    INTEGER NOT NULL,
    bytes_down  INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    connect_us  INTEGER,
    ended_at    INTEGER,
    error       TEXT,
    target      TEXT,
    assurance   TEXT,
    protocol    TEXT,
    db_user     TEXT,
    db_name     TEXT,
    application_name TEXT,
    client_tls  INTEGER,
    server_tls  INTEGER,
    hostname    TEXT,
    path        TEXT,
    sni         TEXT
);
CREATE INDEX IF NOT EXISTS connections_by_job ON connections (job_id, started_at);
CREATE INDEX IF NOT EXISTS connections_by_start ON connections (started_at);
CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    job_id      TEXT,
    caller_pid  INTEGER NOT NULL,
    caller_uid  INTEGER NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at);
CREATE TABLE IF NOT EXISTS statements (
    id            TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    job_id        TEXT,
    seq           INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_us   INTEGER,
    protocol      TEXT NOT NULL,
    database      TEXT NOT NULL,
    db_user       TEXT NOT NULL,
    sql           TEXT NOT NULL,
    params        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    tables        TEXT NOT NULL,
    functions     TEXT NOT NULL,
    decision      TEXT NOT NULL,
    policy_ids    TEXT NOT NULL,
    reason        TEXT NOT NULL,
    rows          INTEGER,
    sqlstate      TEXT,
    error         TEXT,
    approval      TEXT,
    -- An HTTP request's method, host, path, status and bytes (JSON); NULL for SQL.
    http          TEXT,
    -- An MCP tool call's or listing's tool, arguments (masked), result size (JSON).
    mcp           TEXT
);
CREATE INDEX IF NOT EXISTS statements_by_connection ON statements (connection_id, seq);
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    job_id      TEXT,
    cgroup_id   INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    tid         INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    gid         INTEGER NOT NULL,
    comm        TEXT NOT NULL,
    exe         TEXT,
    action      TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, at);
CREATE TABLE IF NOT EXISTS dns_queries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    job_id      TEXT,
    cgroup_id   INTEGER,
    pid         INTEGER,
    uid         INTEGER,
    comm        TEXT,
    transport   TEXT NOT NULL,
    server      TEXT,
    name        TEXT NOT NULL,
    qtype       TEXT NOT NULL,
    rcode       TEXT NOT NULL,
    answers     TEXT NOT NULL,
    decision    TEXT NOT NULL,
    policy_ids  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    cached      INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS dns_by_job ON dns_queries (job_id, at);
CREATE TABLE IF NOT EXISTS udp_flows (
    id          TEXT PRIMARY KEY,
    job_id      TEXT,
    cgroup_id   INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    comm        TEXT NOT NULL,
    exe         TEXT,
    src         TEXT,
    dst         TEXT NOT NULL,
    hostname    TEXT,
    target      TEXT NOT NULL,
    decision    TEXT NOT NULL,
    policy_ids  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    enforced_by TEXT NOT NULL,
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    packets_out INTEGER NOT NULL,
    bytes_out   INTEGER NOT NULL,
    packets_in  INTEGER NOT NULL,
    bytes_in    INTEGER NOT NULL,
    ended       TEXT
);
CREATE INDEX IF NOT EXISTS udp_flows_by_job ON udp_flows (job_id, first_at);
CREATE TABLE IF NOT EXISTS unix_connects (
    job_id      TEXT,
    cgroup_id   INTEGER NOT NULL,
    path        TEXT NOT NULL,
    engine      TEXT,
    send        INTEGER NOT NULL,
    decision    TEXT NOT NULL,
    policy_ids  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    first_at    INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    connects    INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    comm        TEXT NOT NULL,
    exe         TEXT,
    UNIQUE (cgroup_id, path, decision)
);
CREATE INDEX IF NOT EXISTS unix_connects_by_job ON unix_connects (job_id, last_at);
CREATE TABLE IF NOT EXISTS approvals (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    job_id      TEXT,
    asked_at    INTEGER NOT NULL,
    decided_at  INTEGER,
    record      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_by_time ON approvals (asked_at);
CREATE TABLE IF NOT EXISTS chain (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    record_id   TEXT NOT NULL,
    body        TEXT NOT NULL,
    prev        BLOB NOT NULL,
    hash        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    host        TEXT NOT NULL,
    records     INTEGER NOT NULL,
    head        BLOB NOT NULL,
    signature   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS shipped (
    what        TEXT PRIMARY KEY,
    upto        INTEGER NOT NULL
);
-- Version 15: the review console finds jobs by identity (its sessions filters).
CREATE INDEX IF NOT EXISTS jobs_by_repository ON jobs (json_extract(identity, '$.repository'));
CREATE INDEX IF NOT EXISTS jobs_by_run ON jobs (json_extract(identity, '$.run_id'));
CREATE INDEX IF NOT EXISTS jobs_by_actor ON jobs (json_extract(identity, '$.actor'));
CREATE INDEX IF NOT EXISTS jobs_by_workflow ON jobs (json_extract(identity, '$.workflow'));
CREATE INDEX IF NOT EXISTS jobs_by_environment ON jobs (json_extract(identity, '$.environment'));
";

/// Opens the writer's pragmas and creates the tables.
pub fn apply(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // 16 MiB of page cache (the default is 2 MiB): the B-tree pages a batch of
    // statements extends stay in memory instead of being read back from the WAL.
    conn.pragma_update(None, "cache_size", -16384)?;
    // Checkpoint every 10,000 WAL pages (40 MiB) instead of 1,000: the pages a stream of
    // statements keeps changing (the table's last page, the index's) are copied to the
    // database once per checkpoint, not ten times. Measured on the statement row: 3.9 to
    // 3.6 µs per row (docs/benchmarks.md).
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    conn.execute_batch(SCHEMA)?;
    if (1..2).contains(&version) {
        // Version 2 records the policy target of each connection.
        conn.execute_batch("ALTER TABLE connections ADD COLUMN target TEXT")?;
    }
    if (1..3).contains(&version) {
        // Version 3 records pipeline identity.
        conn.execute_batch(
            "ALTER TABLE jobs ADD COLUMN kind TEXT;
             ALTER TABLE jobs ADD COLUMN identity TEXT;
             ALTER TABLE jobs ADD COLUMN assurance TEXT;
             ALTER TABLE jobs ADD COLUMN origin_cgroup TEXT;
             ALTER TABLE connections ADD COLUMN assurance TEXT;",
        )?;
    }
    if version == 4 {
        // Version 5 records whether a PostgreSQL session used TLS on each side.
        conn.execute_batch(
            "ALTER TABLE connections ADD COLUMN client_tls INTEGER;
             ALTER TABLE connections ADD COLUMN server_tls INTEGER;",
        )?;
    }
    if (1..4).contains(&version) {
        // Version 4 records PostgreSQL sessions (their statements get a table of their own).
        conn.execute_batch(
            "ALTER TABLE connections ADD COLUMN protocol TEXT;
             ALTER TABLE connections ADD COLUMN db_user TEXT;
             ALTER TABLE connections ADD COLUMN db_name TEXT;
             ALTER TABLE connections ADD COLUMN application_name TEXT;
             ALTER TABLE connections ADD COLUMN client_tls INTEGER;
             ALTER TABLE connections ADD COLUMN server_tls INTEGER;",
        )?;
    }
    if (4..6).contains(&version) {
        // Version 6 keeps one index on statements, the one that reading uses. (Their ids
        // are unique UUIDs written once; a version 4 or 5 table keeps its primary key
        // index, because SQLite cannot drop it without copying the table.)
        conn.execute_batch("DROP INDEX IF EXISTS statements_by_job")?;
    }
    if (1..9).contains(&version) && !has_column(conn, "connections", "hostname")? {
        // Version 9 records the name a job resolved a destination from.
        conn.execute_batch("ALTER TABLE connections ADD COLUMN hostname TEXT")?;
    }
    if (1..12).contains(&version) && !has_column(conn, "connections", "path")? {
        // Version 12 records whether the proxy or the kernel carried a connection.
        conn.execute_batch("ALTER TABLE connections ADD COLUMN path TEXT")?;
    }
    if (1..13).contains(&version) && !has_column(conn, "statements", "approval")? {
        // Version 13 links a statement to the approval request or grant that let it run.
        conn.execute_batch("ALTER TABLE statements ADD COLUMN approval TEXT")?;
    }
    if (1..16).contains(&version) && !has_column(conn, "connections", "sni")? {
        // Version 16 records the name a TLS client asked for (SNI).
        conn.execute_batch("ALTER TABLE connections ADD COLUMN sni TEXT")?;
    }
    if (1..17).contains(&version) && !has_column(conn, "statements", "http")? {
        // Version 17 records HTTP requests beside statements (their method, host, path,
        // status and bytes).
        conn.execute_batch("ALTER TABLE statements ADD COLUMN http TEXT")?;
    }
    if (1..18).contains(&version) && !has_column(conn, "statements", "mcp")? {
        // Version 18 records MCP tool calls and listings beside statements.
        conn.execute_batch("ALTER TABLE statements ADD COLUMN mcp TEXT")?;
    }
    // Version 14 chains every record (chain, checkpoints, shipped): a store written
    // before it starts its chain at the first record written after the upgrade.
    // Version 15 indexes jobs by identity fields (created above, as every start does).
    conn.pragma_update(None, "user_version", VERSION)?;
    Ok(())
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let names = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names.iter().any(|n| n == column))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexes(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'statements' \
                 ORDER BY name",
            )
            .unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_version_5_store_is_upgraded_and_keeps_its_statements() {
        let conn = Connection::open_in_memory().unwrap();
        // The statements table as version 5 created it.
        conn.execute_batch(
            "CREATE TABLE statements (id TEXT PRIMARY KEY, connection_id TEXT NOT NULL, \
             job_id TEXT, seq INTEGER NOT NULL, started_at INTEGER NOT NULL);
             CREATE INDEX statements_by_connection ON statements (connection_id, seq);
             CREATE INDEX statements_by_job ON statements (job_id, started_at);
             INSERT INTO statements VALUES ('s1', 'c1', 'j1', 1, 10);
             PRAGMA user_version = 5;",
        )
        .unwrap();
        apply(&conn).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        assert_eq!(
            indexes(&conn),
            ["sqlite_autoindex_statements_1", "statements_by_connection"]
        );
        let id: String = conn
            .query_row(
                "SELECT id FROM statements WHERE connection_id = 'c1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(id, "s1");
    }

    #[test]
    fn a_version_8_store_gains_the_hostname_column() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE connections (id TEXT PRIMARY KEY, job_id TEXT, started_at INTEGER);
             INSERT INTO connections VALUES ('c1', 'j1', 1);
             PRAGMA user_version = 8;",
        )
        .unwrap();
        assert!(!has_column(&conn, "connections", "hostname").unwrap());
        apply(&conn).unwrap();
        assert!(has_column(&conn, "connections", "hostname").unwrap());
        let id: String = conn
            .query_row(
                "SELECT id FROM connections WHERE hostname IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(id, "c1");
    }

    #[test]
    fn a_new_store_indexes_statements_once() {
        let conn = Connection::open_in_memory().unwrap();
        apply(&conn).unwrap();
        assert_eq!(indexes(&conn), ["statements_by_connection"]);
        // Applying again (every start) changes nothing.
        apply(&conn).unwrap();
        assert_eq!(indexes(&conn), ["statements_by_connection"]);
    }
}
