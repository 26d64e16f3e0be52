//! Unix socket connects in the store: one row per cgroup, path and decision, counting
//! its connects, with its first process and its first and last time.
use rusqlite::{Transaction, params};

use super::{RecordError, UnixRecord, query::Store};

const COLUMNS: &str = "job_id, cgroup_id, path, engine, send, decision, policy_ids, reason, \
                       first_at, last_at, connects, pid, uid, comm, exe";

pub(super) fn upsert(tx: &Transaction<'_>, u: &UnixRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!(
        "INSERT INTO unix_connects ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
         ?10, ?11, ?12, ?13, ?14, ?15) ON CONFLICT (cgroup_id, path, decision) DO UPDATE SET \
         connects = connects + excluded.connects, last_at = max(last_at, excluded.last_at), \
         first_at = min(first_at, excluded.first_at), job_id = coalesce(job_id, \
         excluded.job_id), send = max(send, excluded.send)"
    ))?
    .execute(params![
        u.job_id,
        u.cgroup_id as i64,
        u.path,
        u.engine,
        u.send,
        u.decision,
        serde_json::to_string(&u.policy_ids).unwrap_or_else(|_| "[]".to_owned()),
        u.reason,
        u.first_at,
        u.last_at,
        u.connects as i64,
        u.pid,
        u.uid,
        u.comm,
        u.exe,
    ])?;
    Ok(())
}

impl Store {
    /// Unix socket connects, newest first (optionally of one job).
    pub fn unix_connects(
        &self,
        job_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UnixRecord>, RecordError> {
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {COLUMNS} FROM unix_connects WHERE (?1 IS NULL OR job_id = ?1) \
             ORDER BY last_at DESC, rowid DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(params![job_id, limit], |row| {
                Ok(UnixRecord {
                    job_id: row.get(0)?,
                    cgroup_id: row.get::<_, i64>(1)? as u64,
                    path: row.get(2)?,
                    engine: row.get(3)?,
                    send: row.get(4)?,
                    decision: row.get(5)?,
                    policy_ids: serde_json::from_str(&row.get::<_, String>(6)?).unwrap_or_default(),
                    reason: row.get(7)?,
                    first_at: row.get(8)?,
                    last_at: row.get(9)?,
                    connects: row.get::<_, i64>(10)? as u64,
                    pid: row.get(11)?,
                    uid: row.get(12)?,
                    comm: row.get(13)?,
                    exe: row.get(14)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
