//! The SQLite schema of the recording store.
use rusqlite::Connection;

pub const VERSION: i64 = 2;

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
    end_reason  TEXT
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
    target      TEXT
);
CREATE INDEX IF NOT EXISTS connections_by_job ON connections (job_id, started_at);
CREATE INDEX IF NOT EXISTS connections_by_start ON connections (started_at);
";

/// Opens the writer's pragmas and creates the tables.
pub fn apply(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    conn.execute_batch(SCHEMA)?;
    if (1..2).contains(&version) {
        // Version 2 records the policy target of each connection.
        conn.execute_batch("ALTER TABLE connections ADD COLUMN target TEXT")?;
    }
    conn.pragma_update(None, "user_version", VERSION)?;
    Ok(())
}
