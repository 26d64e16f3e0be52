//! The rows of PostgreSQL statements, written by the writer thread: one insert per
//! statement (or, under `recording.durable`, an insert when it starts and an update when
//! it ends), with its name lists as JSON.
use rusqlite::{Transaction, params};

use super::StatementRecord;

/// Reused buffers for a statement's JSON lists: a batch of statements serialises them
/// without an allocation per list.
#[derive(Default)]
pub struct JsonLists {
    params: Vec<u8>,
    tables: Vec<u8>,
    functions: Vec<u8>,
    policy_ids: Vec<u8>,
}

/// `items` as a JSON array, in `buf`.
fn json_list<'b>(buf: &'b mut Vec<u8>, items: &[String]) -> &'b str {
    buf.clear();
    if items.is_empty() {
        return "[]";
    }
    if serde_json::to_writer(&mut *buf, items).is_err() {
        // Serialising strings into memory cannot fail; should it, the list reads empty.
        buf.clear();
        buf.extend_from_slice(b"[]");
    }
    // serde_json writes UTF-8 only.
    std::str::from_utf8(buf).unwrap_or("[]")
}

/// A statement whose row was written when it started (`recording.durable`): its outcome
/// now (by the index on connection and sequence number).
pub fn complete(
    tx: &Transaction<'_>,
    s: &StatementRecord,
    lists: &mut JsonLists,
) -> rusqlite::Result<()> {
    let updated = tx
        .prepare_cached(
            "UPDATE statements SET duration_us = ?3, rows = ?4, sqlstate = ?5, error = ?6, \
             decision = ?7, reason = ?8, approval = ?9 WHERE connection_id = ?1 AND seq = ?2",
        )?
        .execute(params![
            &*s.connection_id,
            s.seq as i64,
            s.duration_us.map(|d| d as i64),
            s.rows.map(|r| r as i64),
            s.sqlstate,
            s.error,
            s.decision,
            &*s.reason,
            s.approval,
        ])?;
    if updated == 0 {
        insert(tx, s, lists)?;
    }
    Ok(())
}

pub fn insert(
    tx: &Transaction<'_>,
    s: &StatementRecord,
    lists: &mut JsonLists,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO statements (id, connection_id, job_id, seq, started_at, \
         duration_us, protocol, database, db_user, sql, params, kind, tables, functions, \
         decision, policy_ids, reason, rows, sqlstate, error, approval, http, mcp) VALUES (?1, \
         ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
         ?21, ?22, ?23)",
    )?;
    stmt.execute(params![
        s.id,
        &*s.connection_id,
        s.job_id.as_deref(),
        s.seq as i64,
        s.started_at,
        s.duration_us.map(|d| d as i64),
        &*s.protocol,
        &*s.database,
        &*s.user,
        &*s.sql,
        json_list(&mut lists.params, &s.params),
        &*s.kind,
        json_list(&mut lists.tables, &s.tables),
        json_list(&mut lists.functions, &s.functions),
        s.decision,
        json_list(&mut lists.policy_ids, &s.policy_ids),
        &*s.reason,
        s.rows.map(|r| r as i64),
        s.sqlstate,
        s.error,
        s.approval,
        s.http
            .as_ref()
            .and_then(|facts| serde_json::to_string(facts).ok()),
        s.mcp
            .as_ref()
            .and_then(|facts| serde_json::to_string(facts).ok()),
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::json_list;

    #[test]
    fn lists_are_json_arrays_and_the_buffer_is_reused() {
        let mut buf = Vec::new();
        assert_eq!(json_list(&mut buf, &[]), "[]");
        assert_eq!(
            json_list(&mut buf, &["a\"b".to_owned(), "public.t".to_owned()]),
            r#"["a\"b","public.t"]"#
        );
        assert_eq!(json_list(&mut buf, &["x".to_owned()]), r#"["x"]"#);
    }
}
