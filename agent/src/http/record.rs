//! The record of one HTTP request: made when it is decided, written once its answer has
//! passed (or it was refused), with its status, bytes and duration.
use std::{
    borrow::Cow,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use http::Version;
use tollgate_policy::Decision;

use super::session::Shared;
use crate::record::{DecisionLabel, HttpFacts, RecordEvent, StatementRecord};

/// The record of a request, written once it is answered.
pub(super) struct Pending {
    pub(super) shared: Arc<Shared>,
    pub(super) record: StatementRecord,
    pub(super) started: Instant,
}

impl Pending {
    pub(super) fn finish(mut self, status: Option<u16>, up: u64, down: u64, error: Option<String>) {
        let refused = self.record.decision != DecisionLabel::Allow
            && self.record.decision != DecisionLabel::WouldDeny
            && self.record.decision != DecisionLabel::WouldRequireApproval;
        self.record.duration_us = Some(self.started.elapsed().as_micros() as u64);
        self.record.error = error;
        if let Some(http) = self.record.http.as_mut() {
            http.status = status;
            http.bytes_up = up;
            http.bytes_down = down;
        }
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        self.shared
            .ctx
            .metrics
            .request(self.shared.h2, self.record.decision);
        if refused {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
        }
        self.shared
            .ctx
            .recorder
            .record(RecordEvent::Statement(Box::new(self.record)));
    }
}

pub(super) fn statement(
    shared: &Shared,
    seen: &tollgate_policy::HttpRequest,
    decision: &Decision,
    version: Version,
    started_at: i64,
) -> StatementRecord {
    let ctx = &shared.ctx;
    let query = (ctx.config.record_query && !seen.query.is_empty()).then(|| seen.query.clone());
    let mut sql = format!(
        "{} {}://{}{}",
        seen.method, seen.scheme, seen.host, seen.path
    );
    if let Some(query) = &query {
        sql.push('?');
        sql.push_str(query);
    }
    let protocol = match version {
        Version::HTTP_2 => "http/2",
        Version::HTTP_10 => "http/1.0",
        _ => "http/1.1",
    };
    let mut record = l7(shared, protocol, "http", sql, decision, started_at);
    record.http = Some(Box::new(HttpFacts {
        method: seen.method.clone(),
        scheme: seen.scheme.clone(),
        host: seen.host.clone(),
        path: seen.path.clone(),
        query,
        status: None,
        bytes_up: 0,
        bytes_down: 0,
    }));
    record
}

/// The record of a request (or an MCP message inside one) on this connection, next in
/// its order: what a statement's record has that is not SQL.
pub(super) fn l7(
    shared: &Shared,
    protocol: &'static str,
    kind: &'static str,
    sql: String,
    decision: &Decision,
    started_at: i64,
) -> StatementRecord {
    let ctx = &shared.ctx;
    StatementRecord {
        id: uuid::Uuid::now_v7().to_string(),
        connection_id: ctx.connection_id.clone(),
        job_id: ctx.job_id.clone(),
        seq: shared.seq.fetch_add(1, Ordering::Relaxed) + 1,
        started_at,
        started: None,
        duration_us: None,
        protocol: Cow::Borrowed(protocol),
        database: Arc::from(""),
        user: Arc::from(""),
        sql: Arc::from(sql),
        params: Vec::new(),
        kind: Cow::Borrowed(kind),
        tables: Arc::from([]),
        functions: Arc::from([]),
        decision: DecisionLabel::from(decision),
        policy_ids: Arc::from(decision.policy_ids.clone()),
        reason: Arc::from(decision.reason.as_str()),
        rows: None,
        sqlstate: None,
        error: None,
        approval: None,
        opened: false,
        http: None,
        mcp: None,
    }
}
