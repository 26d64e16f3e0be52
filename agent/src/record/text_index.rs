//! The text index of statements for the review console's text search: an FTS5 trigram
//! index of each statement's SQL and tables, in a file of its own beside the store
//! (`<store>.text-index`). The agent never writes it: the console brings it up to date
//! on a thread of its own (so the writer's cost per statement does not change), and a
//! search reads it for the statements it covers and scans only the ones newer than it.
//!
//! Rows are keyed by the statement's rowid. Statements are only ever appended (rowids
//! grow) and pruned oldest first, so the index keeps a high-water mark (`upto`) and drops
//! rows below the oldest statement left. A store whose rowids went backwards (emptied,
//! replaced) gets its index rebuilt.
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use super::RecordError;

/// Statements indexed per transaction.
const BATCH: i64 = 100_000;
/// A text found in more statements than this is common: a scan newest-first finds a page
/// of its sessions sooner than the index lists them all.
pub const COMMON: i64 = 5_000;

const SCHEMA: &str = "
CREATE VIRTUAL TABLE IF NOT EXISTS stext USING fts5(
    sql, tables, content = '', contentless_delete = 1, tokenize = 'trigram'
);
CREATE TABLE IF NOT EXISTS progress (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    upto  INTEGER NOT NULL
);
";

/// Where the index of the store at `store` lives.
pub fn path_for(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".text-index");
    store.with_file_name(name)
}

/// How far an index is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Statements (rowids) up to this one are indexed.
    pub upto: i64,
    /// Statements added by this catch-up.
    pub added: u64,
    /// Index rows dropped because their statements were pruned.
    pub dropped: u64,
}

fn open_rw(index: &Path, store: &Path) -> Result<Connection, RecordError> {
    let conn = Connection::open(index).map_err(|source| RecordError::Open {
        path: index.to_owned(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    conn.execute("ATTACH DATABASE ?1 AS store", params![read_only_uri(store)])?;
    Ok(conn)
}

/// A file's SQLite URI, opened read-only.
fn read_only_uri(path: &Path) -> String {
    let path = path.to_string_lossy();
    let mut uri = String::with_capacity(path.len() + 16);
    uri.push_str("file:");
    for c in path.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    uri
}

fn upto(conn: &Connection, schema: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            &format!("SELECT upto FROM {schema}.progress WHERE id = 1"),
            [],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Brings the index of `store` up to date: indexes the statements added since, drops
/// those pruned. Each batch is one transaction, so a reader sees whole batches.
pub fn catch_up(store: &Path, index: &Path) -> Result<Progress, RecordError> {
    Indexer::open(store, index)?.catch_up()
}

/// The index's writer, which keeps its connection (and the store attached) between
/// catch-ups.
pub struct Indexer {
    conn: Connection,
    index: PathBuf,
}

impl Indexer {
    pub fn open(store: &Path, index: &Path) -> Result<Self, RecordError> {
        Ok(Self {
            conn: open_rw(index, store)?,
            index: index.to_owned(),
        })
    }

    /// [`catch_up`] on the open connection.
    pub fn catch_up(&mut self) -> Result<Progress, RecordError> {
        catch_up_on(&mut self.conn, &self.index)
    }
}

fn catch_up_on(conn: &mut Connection, index: &Path) -> Result<Progress, RecordError> {
    let mut progress = Progress {
        upto: upto(conn, "main")?,
        ..Progress::default()
    };
    let (oldest, newest): (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT min(rowid), max(rowid) FROM store.statements",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    if progress.upto > newest.unwrap_or(0) {
        // Rowids went backwards: this is not the store the index was made from.
        let tx = conn.transaction()?;
        tx.execute("INSERT INTO stext (stext) VALUES ('delete-all')", [])?;
        tx.execute("DELETE FROM progress", [])?;
        tx.commit()?;
        tracing::info!(index = %index.display(), "the store's statements went backwards: text index rebuilt");
        progress.upto = 0;
    }
    if let Some(oldest) = oldest {
        progress.dropped += conn.execute("DELETE FROM stext WHERE rowid < ?1", [oldest])? as u64;
    }
    loop {
        let tx = conn.transaction()?;
        let end: Option<i64> = tx.query_row(
            "SELECT max(rowid) FROM (SELECT rowid FROM store.statements WHERE rowid > ?1 \
             ORDER BY rowid LIMIT ?2)",
            params![progress.upto, BATCH],
            |row| row.get(0),
        )?;
        let Some(end) = end else {
            return Ok(progress);
        };
        let added = tx.execute(
            "INSERT INTO stext (rowid, sql, tables) SELECT rowid, sql, tables \
             FROM store.statements WHERE rowid > ?1 AND rowid <= ?2",
            params![progress.upto, end],
        )?;
        tx.execute(
            "INSERT INTO progress (id, upto) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET upto = excluded.upto",
            [end],
        )?;
        tx.commit()?;
        progress.upto = end;
        progress.added += added as u64;
    }
}

/// The index as a search reads it: attached to the store's read-only connection.
pub struct Attached {
    /// Statements up to this rowid are in the index; newer ones must be scanned.
    pub upto: i64,
}

/// Attaches the index at `index` to a store's connection as `text`, read-only. None when
/// there is no index (yet): the search scans.
pub fn attach(conn: &Connection, index: &Path) -> Option<Attached> {
    if !index.exists() {
        return None;
    }
    let uri = read_only_uri(index);
    let attached = conn
        .execute("ATTACH DATABASE ?1 AS text", params![uri])
        .and_then(|_| upto(conn, "text"));
    match attached {
        Ok(upto) => Some(Attached { upto }),
        Err(error) => {
            tracing::debug!(%error, index = %index.display(), "text index not read");
            let _ = conn.execute("DETACH DATABASE text", []);
            None
        }
    }
}

/// The FTS5 query for statements whose SQL or tables contain `text`: one phrase, which
/// the trigram tokenizer matches as a substring (no case). None for text under three
/// characters, which the index cannot find.
pub fn phrase(text: &str) -> Option<String> {
    (text.chars().count() >= 3).then(|| format!("\"{}\"", text.replace('"', "\"\"")))
}

/// Opens a store file with URI names allowed, so that [`attach`] can open the index
/// read-only.
pub fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{
        Store,
        search::{SessionQuery, SessionSummary},
        synth,
    };

    fn search(store: &Store, text: &str, index: Option<&Path>) -> Vec<String> {
        let query = SessionQuery {
            text: Some(text.to_owned()),
            limit: 500,
            ..SessionQuery::default()
        };
        let found: Vec<SessionSummary> = store.search_sessions(&query, index).unwrap();
        found.into_iter().map(|s| s.session.id).collect()
    }

    /// Every text finds the same sessions with the index (whole, behind, pruned) as by
    /// a scan: rare and common words, short text, other case, quotes and wildcards.
    #[test]
    fn the_index_finds_what_a_scan_finds_when_whole_behind_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("recordings.db");
        let shape = synth::Shape {
            jobs: 20,
            connections: 2_000,
            statements: 20_000,
            days: 2,
            seed: 7,
        };
        let written = synth::generate(&db, &shape, |_| {}).unwrap();
        let index = path_for(&db);
        let first = catch_up(&db, &index).unwrap();
        assert_eq!(first.added, written.statements);
        assert_eq!(catch_up(&db, &index).unwrap().added, 0, "nothing new");
        let texts = [
            "note_1", "NOTE_1", "payments", "Refunds", "us", "note\"x", "n%te", "a_b", "zzzz",
        ];
        let store = Store::open(&db).unwrap();
        let check = |store: &Store, what: &str| {
            let mut found_some = false;
            for text in texts {
                let scanned = search(store, text, None);
                let indexed = search(store, text, Some(&index));
                assert_eq!(indexed, scanned, "{what}: {text}");
                found_some |= !scanned.is_empty() && text.starts_with("note_");
            }
            assert!(found_some, "{what}: the rare word is in the store");
        };
        check(&store, "whole");
        assert!(store.rare_text(&index, "note_1").is_some());
        assert!(store.rare_text(&index, "payments").is_none(), "common");
        // The index behind: the newest statements only by the scan of the tail.
        let conn = Connection::open(&index).unwrap();
        let half: i64 = first.upto / 2;
        for rowid in half + 1..=first.upto {
            conn.execute("DELETE FROM stext WHERE rowid = ?1", [rowid])
                .unwrap();
        }
        conn.execute("UPDATE progress SET upto = ?1", [half])
            .unwrap();
        let store = Store::open(&db).unwrap();
        check(&store, "behind");
        assert_eq!(
            catch_up(&db, &index).unwrap().added as i64,
            first.upto - half
        );
        // Pruned: the index drops rows of statements no longer in the store.
        let rw = Connection::open(&db).unwrap();
        let pruned = rw
            .execute("DELETE FROM statements WHERE rowid <= 5000", [])
            .unwrap();
        assert_eq!(catch_up(&db, &index).unwrap().dropped, pruned as u64);
        check(&Store::open(&db).unwrap(), "pruned");
        // A store whose statements went backwards (emptied): the index starts again.
        rw.execute("DELETE FROM statements", []).unwrap();
        catch_up(&db, &index).unwrap();
        assert!(search(&Store::open(&db).unwrap(), "note_1", Some(&index)).is_empty());
    }

    #[test]
    fn phrases_quote_and_short_text_is_not_indexed() {
        assert_eq!(phrase("ab"), None);
        assert_eq!(phrase("note_1").as_deref(), Some("\"note_1\""));
        assert_eq!(phrase("a\"b").as_deref(), Some("\"a\"\"b\""));
        assert_eq!(
            path_for(Path::new("/var/lib/tollgate/recordings.db")),
            Path::new("/var/lib/tollgate/recordings.db.text-index")
        );
    }
}
