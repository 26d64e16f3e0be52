//! Retention: records older than `recording.retention` are deleted by the writer
//! thread, a bounded chunk at a time, so pruning never holds up recording for long.
//! Only what has ended is pruned: a running job, an open connection and its statements
//! stay whatever their age.
use std::time::Duration;

use rusqlite::{Connection, params};

/// Connections (with their statements) and audit entries deleted per transaction.
const CHUNK: usize = 500;

/// How often the writer looks for expired records: a quarter of the retention, between
/// one second and ten minutes.
pub fn interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Rows deleted by one [`prune`] call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub statements: u64,
    pub connections: u64,
    pub jobs: u64,
    pub audit: u64,
    pub events: u64,
    pub dns: u64,
    pub udp_flows: u64,
    pub unix_connects: u64,
    pub chain: u64,
    /// A chunk was full: there may be more to delete.
    pub more: bool,
}

/// Deletes what ended before `cutoff_ms` (milliseconds since the epoch): at most one
/// chunk of connections, with their statements, one chunk each of audit entries and
/// kernel events, and the ended jobs that no longer have any connection on record; and
/// chain entries up to position `chain_floor` (those shipped, never the newest), noting
/// where the chain now starts.
pub fn prune(conn: &mut Connection, cutoff_ms: i64, chain_floor: i64) -> rusqlite::Result<Pruned> {
    let tx = conn.transaction()?;
    let mut pruned = Pruned::default();
    let ids: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id FROM connections WHERE started_at < ?1 AND ended_at IS NOT NULL \
             AND ended_at < ?1 LIMIT ?2",
        )?;
        stmt.query_map(params![cutoff_ms, CHUNK as i64], |row| row.get(0))?
            .collect::<Result<_, _>>()?
    };
    pruned.more = ids.len() == CHUNK;
    {
        let mut statements =
            tx.prepare_cached("DELETE FROM statements WHERE connection_id = ?1")?;
        let mut connections = tx.prepare_cached("DELETE FROM connections WHERE id = ?1")?;
        for id in &ids {
            pruned.statements += statements.execute(params![id])? as u64;
            pruned.connections += connections.execute(params![id])? as u64;
        }
    }
    pruned.audit = tx.execute(
        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ?1 LIMIT ?2)",
        params![cutoff_ms, CHUNK as i64],
    )? as u64;
    pruned.more |= pruned.audit == CHUNK as u64;
    pruned.events = tx.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ?1 LIMIT ?2)",
        params![cutoff_ms, CHUNK as i64],
    )? as u64;
    pruned.more |= pruned.events == CHUNK as u64;
    pruned.dns = tx.execute(
        "DELETE FROM dns_queries WHERE id IN (SELECT id FROM dns_queries WHERE at < ?1 LIMIT ?2)",
        params![cutoff_ms, CHUNK as i64],
    )? as u64;
    pruned.more |= pruned.dns == CHUNK as u64;
    // Only ended flows expire: a live one is written again when it ends.
    pruned.udp_flows = tx.execute(
        "DELETE FROM udp_flows WHERE rowid IN (SELECT rowid FROM udp_flows \
         WHERE ended IS NOT NULL AND last_at < ?1 LIMIT ?2)",
        params![cutoff_ms, CHUNK as i64],
    )? as u64;
    pruned.more |= pruned.udp_flows == CHUNK as u64;
    pruned.unix_connects = tx.execute(
        "DELETE FROM unix_connects WHERE rowid IN (SELECT rowid FROM unix_connects \
         WHERE last_at < ?1 LIMIT ?2)",
        params![cutoff_ms, CHUNK as i64],
    )? as u64;
    pruned.more |= pruned.unix_connects == CHUNK as u64;
    pruned.jobs = tx.execute(
        "DELETE FROM jobs WHERE ended_at IS NOT NULL AND ended_at < ?1 \
         AND NOT EXISTS (SELECT 1 FROM connections c WHERE c.job_id = jobs.id)",
        params![cutoff_ms],
    )? as u64;
    let upto: Option<i64> = tx.query_row(
        "SELECT max(seq) FROM (SELECT seq FROM chain WHERE at < ?1 AND seq <= ?2 \
         ORDER BY seq LIMIT ?3)",
        params![cutoff_ms, chain_floor, CHUNK as i64],
        |r| r.get(0),
    )?;
    if let Some(upto) = upto {
        pruned.chain = tx.execute("DELETE FROM chain WHERE seq <= ?1", params![upto])? as u64;
        tx.execute(
            "DELETE FROM checkpoints WHERE records <= ?1 AND seq < (SELECT max(seq) FROM \
             checkpoints)",
            params![upto],
        )?;
        tx.execute(
            "INSERT INTO shipped (what, upto) VALUES ('pruned', ?1) \
             ON CONFLICT (what) DO UPDATE SET upto = max(upto, excluded.upto)",
            params![upto],
        )?;
        pruned.more |= pruned.chain == CHUNK as u64;
    }
    tx.commit()?;
    Ok(pruned)
}

/// The store's size in bytes (pages in use or free, without the WAL).
pub fn store_bytes(conn: &Connection) -> rusqlite::Result<i64> {
    let pages: i64 = conn.pragma_query_value(None, "page_count", |row| row.get(0))?;
    let size: i64 = conn.pragma_query_value(None, "page_size", |row| row.get(0))?;
    Ok(pages * size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::schema;

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    fn job(conn: &Connection, id: &str, ended_at: Option<i64>) {
        conn.execute(
            "INSERT INTO jobs (id, labels, cgroup_id, cgroup_path, owner_pid, owner_start, \
             owner_uid, started_at, ended_at) VALUES (?1, '{}', 1, '/x', 1, 1, 0, 0, ?2)",
            params![id, ended_at],
        )
        .unwrap();
    }

    fn connection(conn: &Connection, id: &str, job: &str, ended_at: Option<i64>) {
        conn.execute(
            "INSERT INTO connections (id, job_id, attributed, source, decision, reason, \
             policy_ids, bytes_up, bytes_down, started_at, ended_at) \
             VALUES (?1, ?2, 1, 's', 'allow', 'r', '[]', 0, 0, 0, ?3)",
            params![id, job, ended_at],
        )
        .unwrap();
        for seq in 0..3 {
            conn.execute(
                "INSERT INTO statements (id, connection_id, job_id, seq, started_at, protocol, \
                 database, db_user, sql, params, kind, tables, functions, decision, \
                 policy_ids, reason) VALUES (?1, ?2, ?3, ?4, 0, 'simple', 'd', 'u', 'select 1', \
                 '[]', 'read', '[]', '[]', 'allow', '[]', 'r')",
                params![format!("{id}-{seq}"), id, job, seq],
            )
            .unwrap();
        }
    }

    #[test]
    fn only_what_ended_before_the_cutoff_goes() {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::apply(&conn).unwrap();
        job(&conn, "old", Some(100));
        connection(&conn, "c-old", "old", Some(100));
        // Ended long ago, but one of its connections is still open: it stays.
        job(&conn, "old-with-open", Some(100));
        connection(&conn, "c-open", "old-with-open", None);
        job(&conn, "running", None);
        connection(&conn, "c-recent", "running", Some(5_000));
        conn.execute_batch(
            "INSERT INTO audit (at, action, outcome, caller_pid, caller_uid, detail) \
             VALUES (100, 'a', 'ok', 1, 0, ''), (5000, 'a', 'ok', 1, 0, '')",
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO events (at, kind, cgroup_id, pid, tid, uid, gid, comm, action, detail) \
             VALUES (100, 'socket_refused', 1, 1, 1, 0, 0, 'x', 'refused', 'packet/raw'), \
             (5000, 'socket_refused', 1, 1, 1, 0, 0, 'x', 'refused', 'packet/raw')",
        )
        .unwrap();
        // An old ended flow goes; an old live one and a recent one stay.
        for (id, last_at, ended) in [
            ("f1", 100, Some("idle")),
            ("f2", 100, None),
            ("f3", 5000, Some("idle")),
        ] {
            conn.execute(
                "INSERT INTO udp_flows (id, cgroup_id, pid, uid, comm, dst, target, decision, \
                 policy_ids, reason, enforced_by, first_at, last_at, packets_out, bytes_out, \
                 packets_in, bytes_in, ended) VALUES (?1, 1, 1, 0, 'x', '127.0.0.1:1', '-', \
                 'allow', '[]', '', 'relay', ?2, ?2, 1, 1, 1, 1, ?3)",
                params![id, last_at, ended],
            )
            .unwrap();
        }

        let pruned = prune(&mut conn, 1_000, i64::MAX).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                statements: 3,
                connections: 1,
                jobs: 1,
                audit: 1,
                events: 1,
                dns: 0,
                udp_flows: 1,
                unix_connects: 0,
                chain: 0,
                more: false,
            }
        );
        assert_eq!(count(&conn, "udp_flows"), 2);
        assert_eq!(count(&conn, "events"), 1);
        assert_eq!(count(&conn, "jobs"), 2);
        assert_eq!(count(&conn, "connections"), 2);
        assert_eq!(count(&conn, "statements"), 6);
        assert_eq!(count(&conn, "audit"), 1);
        assert_eq!(
            prune(&mut conn, 1_000, i64::MAX).unwrap(),
            Pruned::default()
        );
        assert!(store_bytes(&conn).unwrap() > 0);
    }

    #[test]
    fn large_backlogs_go_a_chunk_at_a_time() {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::apply(&conn).unwrap();
        job(&conn, "j", Some(1));
        for n in 0..(CHUNK + 10) {
            connection(&conn, &format!("c{n}"), "j", Some(1));
        }
        let first = prune(&mut conn, 10, i64::MAX).unwrap();
        assert_eq!(first.connections, CHUNK as u64);
        assert!(first.more);
        assert_eq!(first.jobs, 0, "the job still has connections on record");
        let second = prune(&mut conn, 10, i64::MAX).unwrap();
        assert_eq!(second.connections, 10);
        assert_eq!(second.jobs, 1);
        assert!(!second.more);
        assert_eq!(count(&conn, "statements"), 0);
    }

    #[test]
    fn the_interval_is_a_quarter_of_the_retention_within_bounds() {
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(interval(Duration::from_secs(60)), Duration::from_secs(15));
        assert_eq!(
            interval(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(600)
        );
    }
}
