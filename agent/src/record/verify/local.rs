//! Verifying this host's own store: its chain against its checkpoints, and the tables
//! that `sessions` reads against the chain's newest version of each record.
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use super::{FailureKind, Report, Start, Verifier};
use crate::record::{chain, checkpoint};

/// Verifies the store at `db` with the host's public key; `since` (ms) starts at the
/// first record chained then.
pub fn verify(
    db: &Path,
    host: &str,
    public: &[u8],
    since: Option<i64>,
) -> rusqlite::Result<Report> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // Where retention pruned the chain, it starts at the first record kept, whose link
    // back is the last pruned record's hash.
    let pruned: Option<i64> = conn
        .query_row("SELECT upto FROM shipped WHERE what = 'pruned'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let start = match (since, pruned) {
        (Some(_), _) => Start::Anywhere,
        (None, None) => Start::Genesis,
        (None, Some(upto)) => conn
            .query_row(
                "SELECT prev FROM chain WHERE seq = ?1",
                params![upto + 1],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .and_then(|prev| chain::to_hash(&prev))
            .map_or(Start::Anywhere, |head| Start::Pruned { upto, head }),
    };
    let checkpoints = checkpoint::read(&conn, 0)?
        .into_iter()
        .filter(|c| since.is_none_or(|t| c.at >= t) && pruned.is_none_or(|upto| c.records > upto))
        .collect();
    let mut verifier = Verifier::new(host, public, checkpoints, start);
    if !verifier.failed() {
        let mut stmt = conn.prepare(
            "SELECT seq, at, kind, record_id, body, prev, hash FROM chain WHERE at >= ?1 \
             ORDER BY seq",
        )?;
        let mut rows = stmt.query(params![since.unwrap_or(i64::MIN)])?;
        while let Some(row) = rows.next()? {
            if !verifier.entry(&chain::entry_of_row(row)?) {
                break;
            }
        }
    }
    let mut report = verifier.finish();
    if report.failure.is_none() {
        report.failure = tables_match_chain(&conn)?;
    }
    Ok(report)
}

/// Statements' text and decision, and connections' destination, decision and byte
/// counts, as `sessions` shows them, must be what the chain holds for them.
fn tables_match_chain(conn: &Connection) -> rusqlite::Result<Option<super::Failure>> {
    for (kind, sql, fields) in [
        (
            "statement",
            "SELECT s.id, s.sql, s.decision, c.seq, c.body FROM statements s \
             JOIN chain c ON c.seq = (SELECT max(seq) FROM chain WHERE kind = 'statement' \
             AND record_id = s.id)",
            ["sql", "decision"],
        ),
        (
            "connection",
            "SELECT s.id, s.destination, s.decision, c.seq, c.body FROM connections s \
             JOIN chain c ON c.seq = (SELECT max(seq) FROM chain WHERE kind = 'connection' \
             AND record_id = s.id)",
            ["destination", "decision"],
        ),
    ] {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let seq: i64 = row.get(3)?;
            let body: String = row.get(4)?;
            let chained: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            for (i, field) in fields.iter().enumerate() {
                let stored: Option<String> = row.get(i + 1)?;
                let want = chained.get(field).and_then(|v| v.as_str());
                if stored.as_deref() != want {
                    return Ok(Some(super::Failure {
                        kind: FailureKind::Changed,
                        seq,
                        record: format!("{kind} {id}"),
                        detail: format!(
                            "the {kind}s table's `{field}` is not what was chained for it \
                             (#{seq})"
                        ),
                    }));
                }
            }
        }
    }
    Ok(None)
}
