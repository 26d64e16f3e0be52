//! Approval requests: one row each, written when asked and again when decided. The
//! record is kept whole as JSON; its state, job and times are columns to select by.
use rusqlite::{Connection, OptionalExtension as _, Transaction, params};

use crate::approvals::{ApprovalRecord, ApprovalState};

pub fn upsert(tx: &Transaction<'_>, record: &ApprovalRecord) -> rusqlite::Result<()> {
    let state = record.state.unwrap_or(ApprovalState::Pending);
    tx.prepare_cached(
        "INSERT INTO approvals (id, state, job_id, asked_at, decided_at, record) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO UPDATE SET state = ?2, \
         decided_at = ?5, record = ?6",
    )?
    .execute(params![
        record.id,
        state.as_str(),
        record.job_id,
        record.asked_at,
        record.decided_at,
        serde_json::to_string(record).unwrap_or_else(|_| "{}".to_owned()),
    ])?;
    Ok(())
}

/// At startup: requests left pending by an agent that stopped are abandoned (their
/// connections ended with it). Returns how many.
pub fn abandon_pending(tx: &Transaction<'_>, at: i64) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE approvals SET state = 'abandoned', decided_at = ?1 WHERE state = 'pending'",
        params![at],
    )
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalRecord> {
    let state: String = row.get(0)?;
    let decided_at: Option<i64> = row.get(1)?;
    let text: String = row.get(2)?;
    let mut record: ApprovalRecord = serde_json::from_str(&text).unwrap_or_default();
    // The columns are the truth: a startup abandons requests without rewriting the JSON.
    record.state = ApprovalState::parse(&state);
    record.decided_at = decided_at.or(record.decided_at);
    if record.state == Some(ApprovalState::Abandoned) && record.reason.is_none() {
        record.reason = Some("the agent stopped before a reviewer decided".to_owned());
    }
    Ok(record)
}

/// Requests, newest first; only pending ones if `pending`.
pub fn list(conn: &Connection, pending: bool, limit: u32) -> rusqlite::Result<Vec<ApprovalRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT state, decided_at, record FROM approvals WHERE (?1 = 0 OR state = 'pending') \
         ORDER BY asked_at DESC, id DESC LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![pending, limit], from_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// A job's requests, oldest first.
pub fn of_job(conn: &Connection, job_id: &str) -> rusqlite::Result<Vec<ApprovalRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT state, decided_at, record FROM approvals WHERE job_id = ?1 \
         ORDER BY asked_at, id",
    )?;
    let rows = stmt
        .query_map(params![job_id], from_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<ApprovalRecord>> {
    conn.prepare_cached("SELECT state, decided_at, record FROM approvals WHERE id = ?1")?
        .query_row(params![id], from_row)
        .optional()
}
