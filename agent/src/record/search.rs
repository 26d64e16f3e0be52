//! The review console's search of this host's store: sessions by time, identity,
//! target, protocol, decision, statement kind and text, newest first, a page at a time
//! (keyset paging: a page holds its place however many sessions come after it).
use std::path::Path;

use rusqlite::{ToSql, params_from_iter};

use super::query::{CONNECTION_COLUMNS, CONNECTION_FROM, connection_from_row};
use super::{ConnectionRecord, RecordError, Store, text_index};
use crate::approvals::ApprovalRecord;

/// What the console asks for. Every field narrows; `None` does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// Started at or after / before (ms since the epoch).
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub job_id: Option<String>,
    /// Identity fields, exactly: (field, value), field one of [`IDENTITY_FILTERS`].
    pub identity: Vec<(&'static str, String)>,
    pub target: Option<String>,
    /// `postgres`, or `tcp` for sessions followed at L4 only.
    pub protocol: Option<String>,
    pub decision: Option<String>,
    /// Sessions with a statement of this kind (`ddl`, `dml`, ...).
    pub statement_kind: Option<String>,
    /// Sessions with a statement whose SQL or tables contain this text (no case).
    pub text: Option<String>,
    /// The page after this (started_at, id).
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

/// Identity filters the console takes, by their identity field (`run` is `run_id`).
pub const IDENTITY_FILTERS: [(&str, &str); 7] = [
    ("provider", "provider"),
    ("repository", "repository"),
    ("workflow", "workflow"),
    ("run", "run_id"),
    ("job", "job"),
    ("actor", "actor"),
    ("environment", "environment"),
];

/// Identity filters that match fewer jobs than this read those jobs' sessions by the
/// job index; more, and the newest sessions are read first (measured on 1,000,000
/// sessions: docs/benchmarks.md).
const FEW_JOBS: i64 = 500;

/// A session as the list shows it: the connection and its statements counted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionSummary {
    #[serde(flatten)]
    pub session: ConnectionRecord,
    pub statement_count: u64,
    /// Statements denied (or that would be, in audit mode).
    pub statements_denied: u64,
}

/// `LIKE` pattern for text containing `text`, with `\` escaping the wildcards.
pub fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A WHERE clause and its values, numbered as they are bound: `mark` is the dialect's
/// placeholder (`?` in SQLite, `$` in PostgreSQL), and a clause writes `{}` for its
/// value. The console's central source builds its query with it too.
pub struct Where<V> {
    pub clauses: Vec<String>,
    pub values: Vec<V>,
    mark: char,
}

impl<V> Where<V> {
    pub fn new(mark: char) -> Self {
        Self {
            clauses: Vec::new(),
            values: Vec::new(),
            mark,
        }
    }

    /// Binds `value` and returns its placeholder.
    pub fn value(&mut self, value: V) -> String {
        self.values.push(value);
        format!("{}{}", self.mark, self.values.len())
    }

    /// Adds `clause`, whose every `{}` stands for `value`.
    pub fn bind(&mut self, clause: &str, value: V) {
        let placeholder = self.value(value);
        self.clauses.push(clause.replace("{}", &placeholder));
    }

    /// `WHERE …`, or nothing.
    pub fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The keyset condition of the page after (started_at, id).
    pub fn after(&mut self, at: V, id: V) {
        let (at, id) = (self.value(at), self.value(id));
        self.clauses.push(format!(
            "(c.started_at < {at} OR (c.started_at = {at} AND c.id < {id}))"
        ));
    }
}

impl Store {
    /// One page of sessions matching `query`, newest first.
    /// `index`: the store's text index ([`text_index`]), if the caller keeps one.
    pub fn search_sessions(
        &self,
        query: &SessionQuery,
        index: Option<&Path>,
    ) -> Result<Vec<SessionSummary>, RecordError> {
        let mut w: Where<Box<dyn ToSql>> = Where::new('?');
        if let Some(from) = query.from {
            w.bind("c.started_at >= {}", Box::new(from));
        }
        if let Some(to) = query.to {
            w.bind("c.started_at < {}", Box::new(to));
        }
        if let Some(job) = &query.job_id {
            w.bind("c.job_id = {}", Box::new(job.clone()));
        }
        if !query.identity.is_empty() {
            // `field` is one of IDENTITY_FILTERS' names, never the caller's text.
            let jobs_where = |w: &mut Where<Box<dyn ToSql>>, alias: &str| -> String {
                let terms: Vec<String> = query
                    .identity
                    .iter()
                    .map(|(field, value)| {
                        let placeholder = w.value(Box::new(value.clone()));
                        format!("json_extract({alias}identity, '$.{field}') = {placeholder}")
                    })
                    .collect();
                terms.join(" AND ")
            };
            // A few jobs: their sessions by the job index, then sorted. Many: the
            // newest sessions first, each job looked up (it finds a page sooner).
            let mut count: Where<Box<dyn ToSql>> = Where::new('?');
            let terms = jobs_where(&mut count, "");
            let jobs: i64 = self.conn().query_row(
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE {terms} LIMIT {FEW_JOBS})"
                ),
                params_from_iter(count.values.iter().map(|v| v.as_ref())),
                |row| row.get(0),
            )?;
            if jobs < FEW_JOBS {
                let terms = jobs_where(&mut w, "");
                w.clauses
                    .push(format!("c.job_id IN (SELECT id FROM jobs WHERE {terms})"));
            } else {
                let terms = jobs_where(&mut w, "j.");
                w.clauses.push(terms);
            }
        }
        if let Some(target) = &query.target {
            w.bind("c.target = {}", Box::new(target.clone()));
        }
        match query.protocol.as_deref() {
            Some("tcp") => w.clauses.push("c.protocol IS NULL".to_owned()),
            Some(protocol) => w.bind("c.protocol = {}", Box::new(protocol.to_owned())),
            None => {}
        }
        if let Some(decision) = &query.decision {
            w.bind("c.decision = {}", Box::new(decision.clone()));
        }
        if let Some(kind) = &query.statement_kind {
            w.bind(
                "EXISTS (SELECT 1 FROM statements s WHERE s.connection_id = c.id AND s.kind = {})",
                Box::new(kind.clone()),
            );
        }
        if let Some(text) = &query.text {
            let like = "(s.sql LIKE {} ESCAPE '\\' OR s.tables LIKE {} ESCAPE '\\')";
            match index.and_then(|index| self.rare_text(index, text)) {
                // A rare text: its statements from the index, and those newer than the
                // index by a scan of just them.
                Some((phrase, upto)) => {
                    let (phrase, upto) = (w.value(Box::new(phrase)), w.value(Box::new(upto)));
                    let like = like.replace("{}", &w.value(Box::new(contains_pattern(text))));
                    w.clauses.push(format!(
                        "c.id IN (SELECT s.connection_id FROM statements s WHERE s.rowid IN \
                         (SELECT rowid FROM text.stext WHERE stext MATCH {phrase}) \
                         UNION ALL SELECT s.connection_id FROM statements s \
                         WHERE s.rowid > {upto} AND {like})"
                    ));
                }
                // A common text (or no index): the newest sessions first, each one's
                // statements looked at, finds a page soonest.
                None => w.bind(
                    &format!(
                        "EXISTS (SELECT 1 FROM statements s WHERE s.connection_id = c.id AND {like})"
                    ),
                    Box::new(contains_pattern(text)),
                ),
            }
        }
        if let Some((at, id)) = &query.after {
            w.after(Box::new(*at), Box::new(id.clone()));
        }
        let limit = w.value(Box::new(i64::from(query.limit)));
        let filter = w.sql();
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS}, \
             (SELECT count(*) FROM statements s WHERE s.connection_id = c.id), \
             (SELECT count(*) FROM statements s WHERE s.connection_id = c.id \
              AND s.decision IN ('deny', 'would_deny')) \
             FROM {CONNECTION_FROM} {filter} ORDER BY c.started_at DESC, c.id DESC LIMIT {limit}"
        );
        let mut stmt = self.conn().prepare_cached(&sql)?;
        // The counts follow the connection's own columns.
        let counts = CONNECTION_COLUMNS.split(',').count();
        let rows = stmt
            .query_map(
                params_from_iter(w.values.iter().map(|v| v.as_ref())),
                |row| {
                    Ok(SessionSummary {
                        session: connection_from_row(row)?,
                        statement_count: row.get::<_, i64>(counts)? as u64,
                        statements_denied: row.get::<_, i64>(counts + 1)? as u64,
                    })
                },
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

impl Store {
    /// For a text the index finds in fewer than [`text_index::COMMON`] statements: its
    /// FTS5 phrase, and how far the index goes.
    pub(super) fn rare_text(&self, index: &Path, text: &str) -> Option<(String, i64)> {
        let phrase = text_index::phrase(text)?;
        let attached = text_index::attach(self.conn(), index)?;
        let found: i64 = self
            .conn()
            .query_row(
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM text.stext WHERE stext MATCH ?1 \
                     LIMIT {})",
                    text_index::COMMON
                ),
                [&phrase],
                |row| row.get(0),
            )
            .inspect_err(|error| tracing::debug!(%error, "text index not searched"))
            .ok()?;
        (found < text_index::COMMON).then_some((phrase, attached.upto))
    }
}

impl Store {
    /// One session by its exact id (the console links by id, never by prefix).
    pub fn connection_exact(&self, id: &str) -> Result<Option<ConnectionRecord>, RecordError> {
        use rusqlite::OptionalExtension as _;
        Ok(self
            .conn()
            .prepare_cached(&format!(
                "SELECT {CONNECTION_COLUMNS} FROM {CONNECTION_FROM} WHERE c.id = ?1"
            ))?
            .query_row([id], connection_from_row)
            .optional()?)
    }

    /// A job's approval requests, oldest first.
    pub fn approvals_of_job(&self, job_id: &str) -> Result<Vec<ApprovalRecord>, RecordError> {
        Ok(super::approvals::of_job(self.conn(), job_id)?)
    }

    /// Changes whenever a request is asked or decided.
    pub fn approvals_version(&self) -> Result<String, RecordError> {
        Ok(self.conn().query_row(
            "SELECT count(*) || ':' || coalesce(max(asked_at), 0) || ':' || \
             coalesce(max(decided_at), 0) || ':' || \
             (SELECT count(*) FROM approvals WHERE state = 'pending') FROM approvals",
            [],
            |row| row.get(0),
        )?)
    }

    /// The newest checkpoint of the chain.
    pub fn latest_checkpoint(&self) -> Result<Option<super::checkpoint::Checkpoint>, RecordError> {
        Ok(super::checkpoint::latest(self.conn())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_in_the_text_are_literal() {
        assert_eq!(contains_pattern("users"), "%users%");
        assert_eq!(contains_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
