//! UDP flows in the store: one row per flow, written when it is decided and again when
//! it ends.
use rusqlite::{Transaction, params};

use super::{RecordError, UdpFlowRecord, query::Store};

const COLUMNS: &str = "id, job_id, cgroup_id, pid, uid, comm, exe, src, dst, hostname, target, \
                       decision, policy_ids, reason, enforced_by, first_at, last_at, \
                       packets_out, bytes_out, packets_in, bytes_in, ended";

pub(super) fn upsert(tx: &Transaction<'_>, f: &UdpFlowRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO udp_flows ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
         ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"
    ))?
    .execute(params![
        f.id,
        f.job_id,
        f.cgroup_id as i64,
        f.pid,
        f.uid,
        f.comm,
        f.exe,
        f.src,
        f.dst,
        f.hostname,
        f.target,
        f.decision,
        serde_json::to_string(&f.policy_ids).unwrap_or_else(|_| "[]".to_owned()),
        f.reason,
        f.enforced_by,
        f.first_at,
        f.last_at,
        f.packets_out as i64,
        f.bytes_out as i64,
        f.packets_in as i64,
        f.bytes_in as i64,
        f.ended,
    ])?;
    Ok(())
}

impl Store {
    /// UDP flows, newest first (optionally of one job).
    pub fn udp_flows(
        &self,
        job_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UdpFlowRecord>, RecordError> {
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {COLUMNS} FROM udp_flows WHERE (?1 IS NULL OR job_id = ?1) \
             ORDER BY first_at DESC, rowid DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(params![job_id, limit], |row| {
                Ok(UdpFlowRecord {
                    id: row.get(0)?,
                    job_id: row.get(1)?,
                    cgroup_id: row.get::<_, i64>(2)? as u64,
                    pid: row.get(3)?,
                    uid: row.get(4)?,
                    comm: row.get(5)?,
                    exe: row.get(6)?,
                    src: row.get(7)?,
                    dst: row.get(8)?,
                    hostname: row.get(9)?,
                    target: row.get(10)?,
                    decision: row.get(11)?,
                    policy_ids: serde_json::from_str(&row.get::<_, String>(12)?)
                        .unwrap_or_default(),
                    reason: row.get(13)?,
                    enforced_by: row.get(14)?,
                    first_at: row.get(15)?,
                    last_at: row.get(16)?,
                    packets_out: row.get::<_, i64>(17)? as u64,
                    bytes_out: row.get::<_, i64>(18)? as u64,
                    packets_in: row.get::<_, i64>(19)? as u64,
                    bytes_in: row.get::<_, i64>(20)? as u64,
                    ended: row.get(21)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}
