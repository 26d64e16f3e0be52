//! The recording store: every job and every connection, written to an embedded SQLite
//! database (WAL) by a batched writer thread, off the data path.
mod approvals;
mod batch;
pub mod chain;
pub mod checkpoint;
mod flows;
mod gate;
mod journal;
mod label;
mod metrics;
mod priority;
mod query;
mod queue;
mod retention;
mod schema;
pub mod search;
mod statements;
pub mod synth;
pub mod text_index;
mod unix;
pub mod verify;
pub mod writer;

use std::{
    borrow::Cow,
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    identity::{Assurance, Identity},
    jobs::JobKind,
};

pub use gate::Gate;
pub use label::DecisionLabel;
pub use metrics::RecordMetrics;
pub use query::Store;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("recording store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("recording store {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recording store query: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("no session matches `{0}`")]
    NoSuchSession(String),
    #[error("`{0}` matches more than one session; give more characters")]
    AmbiguousSession(String),
    #[error("starting the recording writer: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("writing records out: {0}")]
    Output(#[from] std::io::Error),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How a job's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobExit {
    Code(i32),
    Signal(i32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub cgroup_id: u64,
    pub cgroup_path: String,
    pub owner_pid: u32,
    pub owner_start: u64,
    pub owner_uid: u32,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub exit: Option<JobExit>,
    pub end_reason: Option<String>,
    pub kind: JobKind,
    pub identity: Identity,
    pub assurance: Assurance,
    pub origin_cgroup: Option<String>,
}

/// One connection, written once when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub id: String,
    pub job_id: Option<String>,
    /// The job's name and labels (joined from the job's record when read back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    #[serde(default)]
    pub job_labels: BTreeMap<String, String>,
    /// The job's identity (joined from the job's record when read back).
    #[serde(default, skip_serializing_if = "Identity::is_empty")]
    pub job_identity: Identity,
    /// The job's assurance when this connection was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assurance: Option<Assurance>,
    /// False when the kernel had no entry for the connection (it was refused).
    pub attributed: bool,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub cgroup_id: Option<u64>,
    /// The client's address as the proxy saw it.
    pub source: String,
    /// The original destination, canonical (IPv4-mapped addresses as IPv4).
    pub destination: Option<String>,
    /// The name the job resolved the destination from (through Tollgate's resolver),
    /// else the TLS ClientHello's name where it resolves to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The host name the client's TLS ClientHello asked for (SNI), read without
    /// decrypting; absent where the client did not open with one (store version 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// allow, deny, require_approval, would_deny, would_require_approval, revoked, or
    /// unattributed.
    pub decision: DecisionLabel,
    /// The policy target the destination resolved to (`(unknown)` if none).
    pub target: Option<String>,
    pub reason: String,
    pub policy_ids: Vec<String>,
    /// Client to server.
    pub bytes_up: u64,
    /// Server to client.
    pub bytes_down: u64,
    pub started_at: i64,
    /// Accept to upstream connected, in microseconds.
    pub connect_us: Option<u64>,
    /// None while the connection is open (or if the agent stopped before it ended).
    pub ended_at: Option<i64>,
    pub error: Option<String>,
    /// `kernel` for a connection a kernel verdict let go straight to its destination
    /// (recorded from kernel events), else `proxy` (absent in stores before version 12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `postgres` for sessions Tollgate followed at L7, else absent (plain TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// PostgreSQL startup parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// PostgreSQL sessions: whether Tollgate terminated the client's TLS, and whether its
    /// connection to the server was TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls: Option<bool>,
    /// The statement timeline (filled in by `sessions show`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statements: Vec<StatementRecord>,
}

impl ConnectionRecord {
    /// Puts a decision on the record: its label (returned, to be counted), reason,
    /// policies and target.
    pub fn decided(&mut self, decision: &tollgate_policy::Decision) -> DecisionLabel {
        let label = DecisionLabel::from(decision);
        self.decision = label;
        self.reason.clone_from(&decision.reason);
        self.policy_ids.clone_from(&decision.policy_ids);
        if !decision.target.is_empty() {
            self.target = Some(decision.target.clone());
        }
        label
    }
}

/// One SQL statement of a PostgreSQL session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementRecord {
    pub id: String,
    /// What is the same for every statement of a session is shared with it, as are the
    /// statement's text, names and decision with the classification and decision caches:
    /// a record costs no copy of them.
    pub connection_id: Arc<str>,
    pub job_id: Option<Arc<str>>,
    /// Order within the session.
    pub seq: u64,
    pub started_at: i64,
    #[serde(skip)]
    pub started: Option<std::time::Instant>,
    pub duration_us: Option<u64>,
    /// `simple`, `extended` or `function`.
    pub protocol: Cow<'static, str>,
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub sql: Arc<str>,
    /// Bind parameters (extended protocol), as text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
    /// read, write, ddl, admin, transaction, procedural, unknown.
    pub kind: Cow<'static, str>,
    pub tables: Arc<[String]>,
    #[serde(default, skip_serializing_if = "<[String]>::is_empty")]
    pub functions: Arc<[String]>,
    pub decision: DecisionLabel,
    pub policy_ids: Arc<[String]>,
    pub reason: Arc<str>,
    pub rows: Option<u64>,
    pub sqlstate: Option<String>,
    pub error: Option<String>,
    /// The approval request (or grant) that decided it, when it needed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Its row was written before it was forwarded (`recording.durable`); the final
    /// record completes that row.
    #[serde(skip)]
    pub opened: bool,
    /// An HTTP request (`kind` "http") rather than a statement: what it asked and got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Box<HttpFacts>>,
    /// An MCP message (`kind` "mcp"): a tool call or a listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<Box<McpFacts>>,
}

/// What the record of an MCP message holds besides a statement's fields (whose `sql` is
/// then `tools/call NAME` or `tools/list`, and `protocol` the transport).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpFacts {
    /// The JSON-RPC method.
    pub method: String,
    /// The MCP session (its `Mcp-Session-Id`, or the SSE transport's endpoint).
    #[serde(default)]
    pub session: String,
    /// `tools/call`: the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// `tools/call`: the arguments as JSON, masked by the detectors and rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// The answer's `result`, in bytes of JSON; none when no result came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_bytes: Option<u64>,
    /// The tool said its call failed (`isError`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
    /// The tool changed within the session before this call (the rug-pull case).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub changed: bool,
    /// `tools/list`: tools left out of the answer (no call of them is permitted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden: Vec<String>,
    /// `tools/list`: tools that changed since the session first listed them, and how.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// What the record of an HTTP request holds besides a statement's fields (whose `sql`
/// is then `METHOD scheme://host/path`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFacts {
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub path: String,
    /// Only where `[http] record_query` says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The answer's status; none when no answer came (the destination failed).
    pub status: Option<u16>,
    /// Body bytes each way.
    pub bytes_up: u64,
    pub bytes_down: u64,
}

#[derive(Debug)]
pub enum RecordEvent {
    JobStarted(JobRecord),
    JobEnded {
        id: String,
        ended_at: i64,
        exit: Option<JobExit>,
        reason: String,
    },
    /// A job's identity was verified (or otherwise changed).
    JobIdentity {
        id: String,
        identity: Identity,
        assurance: Assurance,
    },
    /// An enrolment, hook, attestation or control-socket refusal, for the audit trail.
    Audit(AuditRecord),
    /// An allowed connection is about to be relayed: its row is written now, so that
    /// it is on record even if the agent dies before the connection ends.
    ConnectionOpened(Box<ConnectionRecord>),
    /// A connection ended: its one row is written (or completed).
    Connection(Box<ConnectionRecord>),
    /// At startup: close the rows of connections that were open when the agent stopped.
    CloseDangling {
        at: i64,
    },
    /// A statement of a PostgreSQL session completed (or was denied).
    Statement(Box<StatementRecord>),
    /// Something the kernel refused or saw in a job (a refused socket, tampering).
    Event(Box<EventRecord>),
    /// A DNS query of a job, answered by Tollgate's resolver.
    Dns(Box<DnsRecord>),
    /// A UDP flow of a job: written when it is decided, and again (complete) when it ends.
    UdpFlow(Box<UdpFlowRecord>),
    /// A job's connect (or addressed send) to a unix socket: added to the row of its
    /// cgroup, path and decision.
    Unix(Box<UnixRecord>),
    /// An approval request, as asked and again as decided (one row, by id).
    Approval(Box<crate::approvals::ApprovalRecord>),
    /// Answered once everything queued before it is committed.
    Flush(SyncSender<()>),
    /// The same, for a task that awaits it.
    Committed(tokio::sync::oneshot::Sender<()>),
    /// A statement about to be forwarded (`recording.durable`): its row now, completed
    /// by the [`RecordEvent::Statement`] with its outcome.
    StatementStarted(Box<StatementRecord>),
}

impl RecordEvent {
    /// A marker that asks for a commit of what is queued before it, not a record.
    pub fn is_marker(&self) -> bool {
        matches!(self, RecordEvent::Flush(_) | RecordEvent::Committed(_))
    }
}

/// One entry of the audit trail: who asked the agent for what, and what came of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: i64,
    /// `run`, `enroll`, `github_job_started`, `github_job_completed`, `gitlab_job_started`,
    /// `attest`, `control`.
    pub action: String,
    /// `ok` or `refused`.
    pub outcome: String,
    pub job_id: Option<String>,
    pub caller_pid: u32,
    pub caller_uid: u32,
    pub detail: String,
}

/// One DNS query of a job and what came of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecord {
    pub at: i64,
    pub job_id: Option<String>,
    pub cgroup_id: Option<u64>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    /// `udp` or `tcp`.
    pub transport: String,
    /// The server the job addressed (its query came to Tollgate instead).
    pub server: Option<String>,
    /// Lowercase, without the trailing dot ("" if the query did not parse).
    pub name: String,
    pub qtype: String,
    /// The answer's code: NOERROR, NXDOMAIN, REFUSED, FORMERR, SERVFAIL, ...
    pub rcode: String,
    /// `TYPE data` for each answer record.
    pub answers: Vec<String>,
    /// allow, deny, would_deny, unattributed, malformed.
    pub decision: DecisionLabel,
    pub policy_ids: Vec<String>,
    pub reason: String,
    /// Answered from the cache.
    pub cached: bool,
    pub duration_us: u64,
    pub error: Option<String>,
}

/// One UDP flow of a job: one socket's datagrams to one destination (or, refused in the
/// kernel, one process's), decided once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixRecord {
    pub job_id: Option<String>,
    pub cgroup_id: u64,
    /// The path as the job named it (an abstract name as `@name`).
    pub path: String,
    /// The container engine it belongs to, if any.
    pub engine: Option<String>,
    /// An addressed datagram (`sendmsg`) rather than a `connect`.
    pub send: bool,
    /// `allow`, `deny` or `would_deny`: what the kernel did.
    pub decision: DecisionLabel,
    pub policy_ids: Vec<String>,
    pub reason: String,
    pub first_at: i64,
    pub last_at: i64,
    /// Connects (and sends) with this decision.
    pub connects: u64,
    /// The first process's facts.
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpFlowRecord {
    pub id: String,
    pub job_id: Option<String>,
    pub cgroup_id: u64,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// The job socket's address (none when the kernel refused it before it was bound).
    pub src: Option<String>,
    pub dst: String,
    /// The name the job resolved the destination from, if it did.
    pub hostname: Option<String>,
    pub target: String,
    /// allow, deny, would_deny, unattributed.
    pub decision: DecisionLabel,
    pub policy_ids: Vec<String>,
    pub reason: String,
    /// `relay` (decided and carried by the agent) or `kernel` (refused there).
    pub enforced_by: String,
    /// First and last datagram (ms since the epoch).
    pub first_at: i64,
    pub last_at: i64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Why it ended (`idle`, `denied`, `policy`, `shutdown`, ...); none while it is live.
    pub ended: Option<String>,
}

/// One event the kernel reported about a job's process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub at: i64,
    /// `socket_refused`.
    pub kind: String,
    pub job_id: Option<String>,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// What Tollgate did: `refused`, `killed`, `recorded`.
    pub action: String,
    /// What was asked for, e.g. `packet/raw/768`.
    pub detail: String,
}

/// The data path's handle on the writer: a bounded queue and a health flag.
#[derive(Clone)]
pub struct Recorder {
    tx: queue::Sender,
    healthy: Arc<AtomicBool>,
    metrics: Arc<RecordMetrics>,
    journal: Arc<journal::Journal>,
    /// `recording.durable`: statements wait for their records.
    durable: bool,
}

impl Recorder {
    /// Queues an event for the writer. A full queue counts as a recording failure: the
    /// event is dropped, logged and counted, never blocking the data path.
    pub fn record(&self, event: RecordEvent) {
        match self.tx.push(event) {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(event) => {
                self.metrics.dropped.inc();
                self.healthy.store(false, Ordering::Relaxed);
                tracing::error!(?event, "recording queue is full; record dropped");
            }
        }
    }

    /// An allowed connection is about to reach its upstream: its row goes to the journal
    /// (one write, kept through an agent kill), then to the writer.
    pub fn opened(&self, row: &ConnectionRecord) {
        if let Err(error) = self.journal.append(row) {
            self.healthy.store(false, Ordering::Relaxed);
            tracing::error!(%error, id = row.id, "connection journal write failed");
        }
        self.record(RecordEvent::ConnectionOpened(Box::new(row.clone())));
    }

    /// A UDP flow is about to carry its first datagram: its row goes to the journal,
    /// then to the writer.
    pub fn flow_opened(&self, flow: &UdpFlowRecord) {
        if let Err(error) = self.journal.append_flow(flow) {
            self.healthy.store(false, Ordering::Relaxed);
            tracing::error!(%error, id = flow.id, "journal write of a UDP flow failed");
        }
        self.record(RecordEvent::UdpFlow(Box::new(flow.clone())));
    }

    /// Queues an event and waits until it is committed (for rare events that must
    /// survive a crash right after them, such as a job's start). False if that did not
    /// happen within `timeout`; the event stays queued.
    pub fn record_durably(&self, event: RecordEvent, timeout: std::time::Duration) -> bool {
        self.record(event);
        self.flush(timeout)
    }

    /// Waits until everything queued so far is committed (at most `timeout`), so that
    /// a read of the store sees it.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let (done, committed) = std::sync::mpsc::sync_channel(1);
        self.record(RecordEvent::Flush(done));
        committed.recv_timeout(timeout).is_ok()
    }

    /// Whether statements are forwarded only once their records are committed.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// Queues `events` and waits (without blocking the thread) until they are
    /// committed, with whatever else is queued: one commit for every session waiting.
    /// False if that did not happen within `timeout`.
    pub async fn commit(
        &self,
        events: impl IntoIterator<Item = RecordEvent>,
        timeout: std::time::Duration,
    ) -> bool {
        for event in events {
            self.record(event);
        }
        let (done, committed) = tokio::sync::oneshot::channel();
        self.record(RecordEvent::Committed(done));
        matches!(tokio::time::timeout(timeout, committed).await, Ok(Ok(())))
    }

    /// What lets new connections through (`strict`: `recording.strict`). Clones share
    /// their state.
    pub fn gate(&self, strict: bool) -> Gate {
        Gate::new(strict, self.healthy.clone())
    }

    /// False while writes are failing or records are being dropped.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}
