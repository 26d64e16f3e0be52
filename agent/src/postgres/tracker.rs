//! The message state machine of one PostgreSQL session, free of IO: it takes each whole
//! message from either side, writes what goes on (as it is, masked, or Tollgate's own in
//! place of a denied statement) into the direction's output, and hands back the
//! statements that completed. What the server's answers belong to is a queue of
//! [`Pending`] requests, one per client message that the server answers.
mod approval;
mod backend;
mod frontend;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod harness;

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Instant,
};

use tollgate_pgwire::backend as wire_backend;
use tollgate_policy::{Decision, Effect, SqlContext};

use crate::approvals::{NewRequest, Outcome};

use super::{
    classify::{self, Kind},
    decided::Decided,
    encoding::ClientEncoding,
    mask::{
        self, MaskingConfig, ResultsMasking,
        plan::{ColumnInfo, Plan},
    },
    session::Context,
};
use crate::{
    enforce::Snapshot,
    record::{DecisionLabel, StatementRecord, now_ms},
};

/// What the server gets instead of a denied statement: it cannot parse, so it fails in
/// the server exactly where the denied statement would have run.
const DENIED_SQL: &str = "TOLLGATE_DENIED_BY_POLICY";
/// The statement name of the failing Parse that stands in for a denied Execute (the
/// server never creates it: the Parse fails).
const DENIED_STATEMENT: &[u8] = b"tollgate_denied_by_policy";
/// SQLSTATE insufficient_privilege.
const DENIED_SQLSTATE: &str = "42501";

/// The reply the server owes one client message, with what the tracker needs of it
/// when it comes.
enum Reply {
    /// A simple Query: everything up to ReadyForQuery.
    Query,
    /// FunctionCall: its result, then ReadyForQuery.
    Function,
    /// ParseComplete.
    Parse,
    /// BindComplete.
    Bind,
    /// RowDescription or NoData (after a statement's ParameterDescription).
    Describe(Described),
    /// The rows and CommandComplete (or PortalSuspended) of an Execute.
    Execute {
        /// How to mask its rows, when the columns are already known.
        plan: Option<Plan>,
        /// Where its columns can be learned later (a Describe answered after it was
        /// sent, as pipelining clients do).
        late: Option<ExecuteInfo>,
    },
    /// CloseComplete.
    Close,
    /// ReadyForQuery.
    Sync,
}

impl Reply {
    /// The message that ends a reply of this kind without ReadyForQuery, by tag.
    fn ended_by(&self, tag: u8) -> bool {
        matches!(
            (self, tag),
            (Self::Parse, b'1')
                | (Self::Bind, b'2')
                | (Self::Close, b'3')
                | (Self::Describe(_), b'n')
                // PortalSuspended: the Execute ran up to its row limit.
                | (Self::Execute { .. }, b's')
        )
    }

    /// The reply ends with ReadyForQuery (a simple Query, a FunctionCall, a Sync): an
    /// error in it skips nothing.
    fn ends_with_ready(&self) -> bool {
        matches!(self, Self::Query | Self::Function | Self::Sync)
    }
}

/// One client message the server has yet to answer.
struct Pending {
    reply: Reply,
    /// Tollgate's ErrorResponse, sent in place of the server's.
    denial: Option<Vec<u8>>,
    /// Statements this message runs, in order (a Query may have several).
    records: VecDeque<StatementRecord>,
}

impl Pending {
    fn new(reply: Reply) -> Self {
        Self {
            reply,
            denial: None,
            records: VecDeque::new(),
        }
    }

    /// A message whose statements are `records`, denied with `denial` if it is blocked.
    fn running(reply: Reply, denial: Option<Vec<u8>>, records: VecDeque<StatementRecord>) -> Self {
        Self {
            reply,
            denial,
            records,
        }
    }
}

#[derive(Debug, Clone)]
struct ExecuteInfo {
    portal: Vec<u8>,
    statement: Vec<u8>,
    formats: Vec<i16>,
    tables: Vec<String>,
}

struct Prepared {
    sql: String,
    statements: Arc<Vec<classify::Statement>>,
    decision: Arc<Decided>,
    /// The policy generation `decision` was made under; an Execute after a reload
    /// decides again.
    generation: u64,
    /// From a Describe of the statement.
    columns: Option<Vec<ColumnInfo>>,
}

/// What a Describe asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Described {
    /// A prepared statement (`S`), by name.
    Statement(Vec<u8>),
    /// A portal (`P`), by name.
    Portal(Vec<u8>),
}

/// A bound portal.
#[derive(Debug, Clone)]
struct Portal {
    /// The prepared statement's name.
    statement: Vec<u8>,
    /// Its parameters, as recorded.
    params: Vec<String>,
    /// Its result formats.
    formats: Vec<i16>,
}

#[derive(Default)]
pub(super) struct Tracker {
    pending: VecDeque<Pending>,
    prepared: HashMap<Vec<u8>, Prepared>,
    /// Bound portals, by name.
    portals: HashMap<Vec<u8>, Portal>,
    /// Columns of a portal, from a Describe of it.
    portal_columns: HashMap<Vec<u8>, Vec<ColumnInfo>>,
    /// The session's client encoding, as the startup asked and the server reports.
    encoding: ClientEncoding,
    /// The detectors read this session's results too (`results = "detect"`).
    detect_results: bool,
    /// How the rows now arriving are masked.
    plan: Option<Plan>,
    /// The masking configuration in force, taken again after each reload.
    masking: Arc<MaskingConfig>,
    /// This job is exempt from masking (policy `mask:exempt`), as of `generation`.
    exempt: bool,
    /// A text-format COPY TO is sending rows.
    copy_out_text: bool,
    /// Tollgate terminated the client's TLS: channel binding to the server cannot work.
    client_tls: bool,
    /// Set after an error in the extended protocol: the server skips to Sync.
    skipping: bool,
    seq: u64,
    /// The session's database and user, as its records share them.
    database: Arc<str>,
    user: Arc<str>,
    /// Decisions by (action, tables), until the next reload.
    decisions: HashMap<(&'static str, Arc<[String]>), Arc<Decided>>,
    /// The policy statements are decided under, taken again after each reload.
    policy: Option<Snapshot>,
    /// `recording.durable`: statements decided in the client's latest bytes, whose rows
    /// must be committed before those bytes go to the server.
    durable: bool,
    opened: Vec<StatementRecord>,
    /// A message held for approval: the request the pump makes for it.
    held: Option<NewRequest>,
    /// The decision on the held message, applied when it is handled again.
    resolved: Option<Outcome>,
    /// The outcome applied to the message being handled (for its refusal's text).
    applied: Option<Outcome>,
    /// What Tollgate sends the client between the server's messages (the notice that a
    /// statement waits for approval).
    to_client: Vec<u8>,
}

/// How a client message goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    /// It waits for a reviewer: nothing of it (or after it) goes on yet.
    Hold,
}

/// Whether a decision holds its statement for a reviewer (in audit mode it is only
/// recorded).
fn needs_approval(decision: &Decision) -> bool {
    decision.enforced && decision.effect == Effect::RequireApproval
}

impl Tracker {
    /// After a reload (and at the start): forgets cached decisions and takes the masking
    /// configuration and the `mask:exempt` permission in force. `sql` is the session's
    /// context (no tables).
    pub(super) fn refresh(&mut self, ctx: &Context, sql: &SqlContext) {
        if self.policy.is_some() && ctx.enforcer.generation() == self.generation() {
            return;
        }
        let policy = ctx.enforcer.snapshot();
        self.decisions.clear();
        self.masking = policy.masking();
        self.detect_results = self.masking.enabled
            && policy.results_masking(ctx.destination) == ResultsMasking::Detect;
        self.exempt = self.masking.enabled && policy.permits(ctx.subject(), "mask:exempt", sql);
        self.policy = Some(policy);
    }

    /// The generation of the policy statements are decided under (0: none yet).
    fn generation(&self) -> u64 {
        self.policy.as_ref().map_or(0, Snapshot::generation)
    }

    /// The policy in force for this statement (taken by [`Tracker::refresh`]).
    fn policy(&mut self, ctx: &Context) -> &Snapshot {
        self.policy.get_or_insert_with(|| ctx.enforcer.snapshot())
    }

    /// The statements of a Query or Parse text in the session's encoding. Text that
    /// does not decode is one statement of kind `unknown` (decided fail-closed), read
    /// lossily for the record; its bytes still go to the server as they are, for the
    /// server to judge.
    /// Returns the text as read, too.
    fn classify<'t>(&self, text: &'t [u8]) -> (Cow<'t, str>, Arc<Vec<classify::Statement>>) {
        match self.encoding.decode(text) {
            (text, true) => {
                let statements = classify::classify(&text);
                (text, statements)
            }
            (text, false) => {
                let statements = Arc::new(vec![classify::Statement {
                    text: text.as_ref().into(),
                    kind: Kind::Unknown,
                    tables: Arc::default(),
                    functions: Arc::default(),
                    error: Some(format!("not valid {} text", self.encoding.name())),
                }]);
                (text, statements)
            }
        }
    }

    /// The decision for a message's statements (the first blocking one wins), and the
    /// kind of the statement that decided it.
    fn decide(
        &mut self,
        ctx: &Context,
        sql: &SqlContext,
        statements: &[classify::Statement],
    ) -> (Arc<Decided>, Kind) {
        let mut allowed: Option<(Arc<Decided>, Kind)> = None;
        for statement in statements {
            let Some(action) = statement.kind.action() else {
                continue;
            };
            let key = (action, statement.tables.clone());
            let decided = match self.decisions.get(&key) {
                Some(decided) => decided.clone(),
                None => {
                    let context = SqlContext {
                        tables: statement.tables.to_vec(),
                        ..sql.clone()
                    };
                    let decided =
                        Decided::new(self.policy(ctx).decide_sql(ctx.subject(), action, &context));
                    if self.decisions.len() > 1024 {
                        self.decisions.clear();
                    }
                    self.decisions.insert(key, decided.clone());
                    decided
                }
            };
            if decided.decision.blocks() {
                return (decided, statement.kind);
            }
            if allowed.is_none() || decided.decision.effect != Effect::Allow {
                // In audit mode, a would-be denial is what gets recorded.
                allowed = Some((decided, statement.kind));
            }
        }
        allowed.unwrap_or_else(|| (Decided::transaction_control(), Kind::Transaction))
    }

    fn record(
        &mut self,
        ctx: &Context,
        statement: &classify::Statement,
        decided: &Decided,
        protocol: &'static str,
        params: Vec<String>,
    ) -> StatementRecord {
        self.seq += 1;
        let sql = match self.masking.redact(&statement.text) {
            Cow::Borrowed(_) => statement.text.clone(),
            Cow::Owned(masked) => masked.into(),
        };
        let record = StatementRecord {
            id: uuid::Uuid::now_v7().to_string(),
            connection_id: ctx.connection_id.clone(),
            job_id: ctx.job_id.clone(),
            seq: self.seq,
            started_at: now_ms(),
            started: Some(Instant::now()),
            duration_us: None,
            protocol: Cow::Borrowed(protocol),
            database: self.database.clone(),
            user: self.user.clone(),
            sql,
            params: params
                .iter()
                .map(|p| self.masking.redact(p).into_owned())
                .collect(),
            kind: Cow::Borrowed(statement.kind.as_str()),
            tables: statement.tables.clone(),
            functions: statement.functions.clone(),
            decision: DecisionLabel::from(&decided.decision),
            policy_ids: decided.policy_ids.clone(),
            reason: decided.reason.clone(),
            rows: None,
            sqlstate: None,
            error: statement
                .error
                .as_ref()
                .map(|e| format!("does not parse: {e}")),
            approval: None,
            opened: self.durable,
            http: None,
            mcp: None,
        };
        if self.durable {
            self.opened.push(record.clone());
        }
        record
    }
}

/// Tollgate's ErrorResponse for a blocked statement, in the session's encoding.
fn denial(decision: &Decision, kind: Kind, encoding: &ClientEncoding) -> Vec<u8> {
    let who = if decision.policy_ids.is_empty() {
        "no policy permits it (default deny)".to_owned()
    } else {
        format!("policy {}", decision.policy_ids.join(", "))
    };
    let message = match decision.effect {
        Effect::RequireApproval => format!(
            "tollgate: this {} statement requires approval ({who})",
            kind.as_str()
        ),
        _ => format!("tollgate: {} statement denied: {who}", kind.as_str()),
    };
    wire_backend::error_response_bytes(
        DENIED_SQLSTATE,
        &encoding.encode(&message),
        Some(&encoding.encode(&decision.reason)),
        Some(b"Tollgate decided this by policy; see `tollgate sessions show` for the record."),
    )
}

fn params_of(params: &[Option<&[u8]>], formats: &[i16], encoding: &ClientEncoding) -> Vec<String> {
    params
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let format = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            };
            match value {
                None => "NULL".to_owned(),
                Some(bytes) if format == 0 => encoding.lossy(bytes),
                // A binary text value is its text in the client encoding: record it as
                // text (masked later).
                Some(bytes) => match encoding.decode(bytes) {
                    (text, true) if !text.is_empty() && !text.chars().any(char::is_control) => {
                        text.into_owned()
                    }
                    _ => format!("<binary, {} bytes>", bytes.len()),
                },
            }
        })
        .collect()
}

fn scope<'a>(ctx: &'a Context, sql: &'a SqlContext) -> mask::Scope<'a> {
    mask::Scope {
        target: &ctx.target,
        database: &sql.database,
    }
}

impl Tracker {
    /// A session's tracker after its startup, with the configuration in force.
    pub(super) fn new(
        ctx: &Context,
        sql: &SqlContext,
        encoding: ClientEncoding,
        client_tls: bool,
    ) -> Self {
        let mut tracker = Self {
            client_tls,
            encoding,
            durable: ctx.recorder.is_durable(),
            database: sql.database.as_str().into(),
            user: sql.user.as_str().into(),
            ..Self::default()
        };
        tracker.refresh(ctx, sql);
        tracker
    }

    /// A message from the client.
    pub(super) fn frontend(
        &mut self,
        ctx: &Context,
        sql: &SqlContext,
        message: tollgate_pgwire::frontend::Message<'_>,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Flow {
        frontend::handle(self, ctx, sql, message, raw, out)
    }

    /// A message from the server; statements it completes go to `finished`.
    pub(super) fn backend(
        &mut self,
        ctx: &Context,
        sql: &SqlContext,
        message: wire_backend::Message<'_>,
        raw: &[u8],
        out: &mut Vec<u8>,
        finished: &mut Vec<StatementRecord>,
    ) {
        backend::handle(self, ctx, sql, message, raw, out, finished);
    }

    /// `recording.durable`: the statements decided since the last call, whose rows must
    /// be committed before their bytes go to the server.
    pub(super) fn take_opened(&mut self) -> Vec<StatementRecord> {
        std::mem::take(&mut self.opened)
    }

    /// Statements still waiting for an answer (the session is ending).
    pub(super) fn take_unanswered(&mut self) -> Vec<StatementRecord> {
        self.pending.drain(..).flat_map(|p| p.records).collect()
    }
}

#[cfg(test)]
mod tests;
