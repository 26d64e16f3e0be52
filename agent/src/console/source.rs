//! Where the console reads: this host's store (`--store`), or the fleet's central store
//! (`--central`). Both answer the same questions with the same records.
mod central;
mod local;

use serde::Serialize;

pub use central::CentralSource;
pub use local::LocalSource;

use crate::{
    approvals::ApprovalRecord,
    central::{CentralError, query::Hosted},
    record::{
        AuditRecord, ConnectionRecord, DnsRecord, EventRecord, JobRecord, RecordError,
        StatementRecord, UdpFlowRecord, UnixRecord,
        search::{SessionQuery, SessionSummary},
        verify::Report,
    },
};

/// Most statements a job view carries (the newest sessions' first).
pub const JOB_STATEMENTS: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Central(#[from] CentralError),
    #[error("reading the store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store's reader stopped: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A job and everything it did, for its timeline.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub host: String,
    pub job: JobRecord,
    pub sessions: Vec<SessionSummary>,
    pub statements: Vec<StatementRecord>,
    /// True when the job has more statements than the view carries.
    pub statements_truncated: bool,
    pub dns: Vec<DnsRecord>,
    pub udp_flows: Vec<UdpFlowRecord>,
    pub unix: Vec<UnixRecord>,
    /// What the kernel refused.
    pub events: Vec<EventRecord>,
    pub approvals: Vec<ApprovalRecord>,
}

/// The chain verification of one host, with its newest checkpoint's time.
#[derive(Debug, Serialize)]
pub struct HostAudit {
    pub report: Report,
    /// When the newest checkpoint was signed (ms).
    pub checkpoint_at: Option<i64>,
    /// Why it could not be verified at all (no host key, no store).
    pub error: Option<String>,
}

/// Approval requests, and who may still see what of them.
pub type Approvals = Vec<Hosted<ApprovalRecord>>;

pub enum Source {
    Local(LocalSource),
    Central(Box<CentralSource>),
}

impl Source {
    /// What the console reads, for its banner and the health check.
    pub fn describe(&self) -> String {
        match self {
            Source::Local(local) => format!("store {}", local.path().display()),
            Source::Central(central) => format!("central {}", central.shown()),
        }
    }

    pub async fn sessions(
        &self,
        host: Option<&str>,
        query: &SessionQuery,
    ) -> Result<Vec<Hosted<SessionSummary>>, SourceError> {
        match self {
            Source::Local(local) => local.sessions(host, query.clone()).await,
            Source::Central(central) => central.sessions(host, query).await,
        }
    }

    pub async fn session(
        &self,
        host: &str,
        id: &str,
    ) -> Result<Hosted<ConnectionRecord>, SourceError> {
        match self {
            Source::Local(local) => local.session(host, id).await,
            Source::Central(central) => central.session(host, id).await,
        }
    }

    pub async fn job(&self, host: &str, id: &str) -> Result<JobView, SourceError> {
        match self {
            Source::Local(local) => local.job(host, id).await,
            Source::Central(central) => central.job(host, id).await,
        }
    }

    pub async fn approvals(&self, pending: bool, limit: u32) -> Result<Approvals, SourceError> {
        match self {
            Source::Local(local) => local.approvals(pending, limit).await,
            Source::Central(central) => central.approvals(pending, limit).await,
        }
    }

    pub async fn approval(&self, id: &str) -> Result<Hosted<ApprovalRecord>, SourceError> {
        match self {
            Source::Local(local) => local.approval(id).await,
            Source::Central(central) => central.approval(id).await,
        }
    }

    /// A fingerprint of the approval requests: it changes when one is asked or decided.
    pub async fn approvals_version(&self) -> Result<String, SourceError> {
        match self {
            Source::Local(local) => local.approvals_version().await,
            Source::Central(central) => central.approvals_version().await,
        }
    }

    pub async fn audit(&self, limit: u32) -> Result<Vec<Hosted<AuditRecord>>, SourceError> {
        match self {
            Source::Local(local) => local.audit(limit).await,
            Source::Central(central) => central.audit(limit).await,
        }
    }

    pub async fn verify(&self) -> Result<Vec<HostAudit>, SourceError> {
        match self {
            Source::Local(local) => local.verify().await,
            Source::Central(central) => central.verify().await,
        }
    }

    /// The hosts on record (for the host filter).
    pub async fn hosts(&self) -> Result<Vec<String>, SourceError> {
        match self {
            Source::Local(local) => Ok(vec![local.host().to_owned()]),
            Source::Central(central) => central.hosts().await,
        }
    }
}
