//! The review console's search of this host's store: sessions by time, identity,
//! target, protocol, decision, statement kind and text, newest first, a page at a time
//! (keyset paging: a page holds its place however many sessions come after it).
use rusqlite::{ToSql, params_from_iter};

use super::query::{CONNECTION_COLUMNS, CONNECTION_FROM, connection_from_row};
use super::{ConnectionRecord, RecordError, Store};
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

/// A WHERE clause and its values, numbered as they are bound.
#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    values: Vec<Box<dyn ToSql>>,
}

impl Where {
    /// Adds `clause`, whose every `$` stands for `value`.
    fn bind(&mut self, clause: &str, value: impl ToSql + 'static) {
        self.values.push(Box::new(value));
        let n = format!("?{}", self.values.len());
        // `$.` is a JSON path, not a placeholder.
        let clause = clause
            .replace("$.", "\u{1}")
            .replace('$', &n)
            .replace('\u{1}', "$.");
        self.clauses.push(clause);
    }
}

impl Store {
    /// One page of sessions matching `query`, newest first.
    pub fn search_sessions(
        &self,
        query: &SessionQuery,
    ) -> Result<Vec<SessionSummary>, RecordError> {
        let mut w = Where::default();
        if let Some(from) = query.from {
            w.bind("c.started_at >= $", from);
        }
        if let Some(to) = query.to {
            w.bind("c.started_at < $", to);
        }
        if let Some(job) = &query.job_id {
            w.bind("c.job_id = $", job.clone());
        }
        if !query.identity.is_empty() {
            // `field` is one of IDENTITY_FILTERS' names, never the caller's text.
            let jobs_where = |w: &mut Where, alias: &str| -> String {
                let mut terms = Vec::new();
                for (field, value) in &query.identity {
                    w.values.push(Box::new(value.clone()));
                    terms.push(format!(
                        "json_extract({alias}identity, '$.{field}') = ?{}",
                        w.values.len()
                    ));
                }
                terms.join(" AND ")
            };
            // A few jobs: their sessions by the job index, then sorted. Many: the
            // newest sessions first, each job looked up (it finds a page sooner).
            let mut count = Where::default();
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
            w.bind("c.target = $", target.clone());
        }
        match query.protocol.as_deref() {
            Some("tcp") => w.clauses.push("c.protocol IS NULL".to_owned()),
            Some(protocol) => w.bind("c.protocol = $", protocol.to_owned()),
            None => {}
        }
        if let Some(decision) = &query.decision {
            w.bind("c.decision = $", decision.clone());
        }
        if let Some(kind) = &query.statement_kind {
            w.bind(
                "EXISTS (SELECT 1 FROM statements s WHERE s.connection_id = c.id AND s.kind = $)",
                kind.clone(),
            );
        }
        if let Some(text) = &query.text {
            w.bind(
                "EXISTS (SELECT 1 FROM statements s WHERE s.connection_id = c.id AND \
                 (s.sql LIKE $ ESCAPE '\\' OR s.tables LIKE $ ESCAPE '\\'))",
                contains_pattern(text),
            );
        }
        if let Some((at, id)) = &query.after {
            w.bind("(c.started_at < $", *at);
            let at_n = w.values.len();
            w.values.push(Box::new(id.clone()));
            let id_n = w.values.len();
            if let Some(last) = w.clauses.last_mut() {
                last.push_str(&format!(" OR (c.started_at = ?{at_n} AND c.id < ?{id_n}))"));
            }
        }
        w.values.push(Box::new(i64::from(query.limit)));
        let limit = w.values.len();
        let filter = if w.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", w.clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {CONNECTION_COLUMNS}, \
             (SELECT count(*) FROM statements s WHERE s.connection_id = c.id), \
             (SELECT count(*) FROM statements s WHERE s.connection_id = c.id \
              AND s.decision IN ('deny', 'would_deny')) \
             FROM {CONNECTION_FROM} {filter} ORDER BY c.started_at DESC, c.id DESC LIMIT ?{limit}"
        );
        let mut stmt = self.conn().prepare_cached(&sql)?;
        let rows = stmt
            .query_map(
                params_from_iter(w.values.iter().map(|v| v.as_ref())),
                |row| {
                    Ok(SessionSummary {
                        session: connection_from_row(row)?,
                        statement_count: row.get::<_, i64>(34)? as u64,
                        statements_denied: row.get::<_, i64>(35)? as u64,
                    })
                },
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
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
