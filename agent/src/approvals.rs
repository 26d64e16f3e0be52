//! Just-in-time approval. A statement or connection whose decision is RequireApproval
//! is held where it is (the client's own session waits) while a request goes to the
//! reviewers. A reviewer approves it (with a scope) or denies it (with a reason); without
//! a decision within `approvals.timeout` it is refused. Every request and decision is
//! recorded, and a statement's record names the request that let it run.
//!
//! A grant (an approval with scope `job` or a duration) lets later requests of the same
//! statement shape pass without asking, recorded as allowed by that grant.
mod fleet;
mod grants;
mod metrics;
mod reviewers;
mod ticket;
mod webhooks;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use fleet::{ConsoleReviewer, Decider, FleetEvent};
pub use grants::{Grant, GrantScope};
pub use metrics::ApprovalMetrics;
pub use reviewers::Reviewer;
pub use ticket::Ticket;

use crate::{
    config::ApprovalsConfig,
    jobs::Caller,
    record::{AuditRecord, RecordEvent, Recorder, now_ms},
};

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    TimedOut,
    /// Its connection ended (or the agent stopped) before it was decided.
    Abandoned,
}

impl ApprovalState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::TimedOut => "timed_out",
            Self::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Approved,
            Self::Denied,
            Self::TimedOut,
            Self::Abandoned,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// How long asking waits for the request's row to be committed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request and, once there is one, its decision: what is recorded and shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub id: String,
    pub state: Option<ApprovalState>,
    pub job_id: Option<String>,
    /// The job's identity as policy saw it (repository, workflow, actor, ...).
    pub identity: std::collections::BTreeMap<String, String>,
    pub connection_id: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub target: Option<String>,
    pub destination: Option<String>,
    /// The policy action asked about (`sql:ddl`, `connect`, ...).
    pub action: String,
    /// The statement's kind and text (masked as recordings are), and its tables.
    pub kind: Option<String>,
    pub sql: Option<String>,
    pub tables: Vec<String>,
    pub policy_ids: Vec<String>,
    pub asked_at: i64,
    pub decided_at: Option<i64>,
    /// Reviewers who approved (in order); the one who denied.
    pub reviewers: Vec<String>,
    pub reason: Option<String>,
    /// `once`, `job` or a duration (`30m`), as granted.
    pub scope: Option<String>,
    /// The grant an approval with a wider scope than `once` created.
    pub grant_id: Option<String>,
    /// The widest scope the policy lets a reviewer grant (`@approval_scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_cap: Option<String>,
}

/// The identity a request shows its reviewer: the job's identity fields, and its labels
/// where a field of the same name is missing.
pub fn identity_of(
    principal: &tollgate_policy::Principal,
) -> std::collections::BTreeMap<String, String> {
    let mut identity = principal.identity.clone();
    for (name, value) in &principal.labels {
        identity
            .entry(name.clone())
            .or_insert_with(|| value.clone());
    }
    identity
}

/// What a request asks: filled by the data path.
pub struct NewRequest {
    pub record: ApprovalRecord,
    /// The statement's shape (constants removed), for grants; None for a connection.
    pub shape: Option<String>,
}

/// How a held statement or connection goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved {
        request: String,
        by: Vec<String>,
    },
    /// A grant covered it: no request was made.
    Granted {
        grant: String,
        by: Vec<String>,
    },
    Denied {
        request: String,
        by: String,
        reason: String,
    },
    TimedOut {
        request: String,
        after: Duration,
    },
}

impl Outcome {
    pub fn allows(&self) -> bool {
        matches!(self, Self::Approved { .. } | Self::Granted { .. })
    }

    /// The request or grant id a statement's record links to.
    pub fn link(&self) -> &str {
        match self {
            Self::Approved { request, .. }
            | Self::Denied { request, .. }
            | Self::TimedOut { request, .. } => request,
            Self::Granted { grant, .. } => grant,
        }
    }

    /// The reason recorded with the statement, and sent with a refusal.
    pub fn reason(&self) -> String {
        match self {
            Self::Approved { request, by } => {
                format!("approved by {} (request {request})", by.join(", "))
            }
            Self::Granted { grant, by } => {
                format!("allowed by grant {grant}, approved by {}", by.join(", "))
            }
            Self::Denied { by, reason, .. } => format!("denied by {by}: {reason}"),
            Self::TimedOut { after, .. } => format!(
                "no reviewer decided within {}",
                humantime::format_duration(*after)
            ),
        }
    }
}

/// A reviewer's decision, as asked over the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Approve {
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    Deny {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no pending request {0}")]
    NotPending(String),
    #[error("uid {0} is not a reviewer (approvals.reviewers)")]
    NotReviewer(u32),
    #[error(
        "{login} is the job's actor: self-approval is refused (approvals.self_approval = false)"
    )]
    SelfApproval { login: String },
    #[error("{login} has already approved request {id}")]
    AlreadyApproved { login: String, id: String },
    #[error(transparent)]
    Scope(#[from] grants::ScopeError),
    #[error("a denial needs a reason (--reason)")]
    NoReason,
    #[error("no grant {0}")]
    NoGrant(String),
    #[error("scope {asked} is wider than the policy allows (@approval_scope(\"{cap}\"))")]
    ScopeCapped { asked: String, cap: String },
}

/// A request waiting for its decision.
struct Waiting {
    record: ApprovalRecord,
    shape: Option<String>,
    /// Approvals so far.
    approvals: Vec<Decider>,
    wake: Option<oneshot::Sender<Outcome>>,
    asked: Instant,
}

#[derive(Default)]
struct State {
    waiting: HashMap<String, Waiting>,
    grants: grants::Grants,
}

/// The agent's requests and grants.
pub struct Approvals {
    config: ApprovalsConfig,
    reviewers: reviewers::Reviewers,
    state: Mutex<State>,
    recorder: Recorder,
    metrics: Arc<ApprovalMetrics>,
    webhooks: webhooks::Webhooks,
    /// The central store's approvals, when there is one.
    fleet: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<FleetEvent>>,
}

impl Approvals {
    pub fn new(
        config: &ApprovalsConfig,
        recorder: Recorder,
        metrics: Arc<ApprovalMetrics>,
    ) -> Self {
        Self {
            reviewers: reviewers::Reviewers::new(&config.reviewers),
            config: config.clone(),
            state: Mutex::new(State::default()),
            recorder,
            webhooks: webhooks::Webhooks::start(&config.webhooks, metrics.clone()),
            metrics,
            fleet: std::sync::OnceLock::new(),
        }
    }

    /// Authorizes a control-socket caller as a reviewer.
    pub fn reviewer(&self, caller: Caller) -> Result<Decider, ApprovalError> {
        let login = self.reviewers.authorize(caller)?;
        Ok(Decider::local(caller.uid, login))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a request waits.
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// A grant that covers this request, if any: it passes without asking.
    pub fn granted(&self, request: &NewRequest) -> Option<Outcome> {
        let shape = request.shape.as_deref()?;
        let outcome = {
            let mut state = self.state();
            let grant = state.grants.covering(&request.record, shape)?;
            Outcome::Granted {
                grant: grant.id.clone(),
                by: grant.approved_by.clone(),
            }
        };
        self.metrics.decided("granted", None);
        Some(outcome)
    }

    /// Asks the reviewers: the request waits for [`Ticket::wait`]. It is committed to
    /// the store before this returns (before the client is told), so that an agent
    /// killed while it waits leaves it on record, to be marked abandoned at the next
    /// start.
    pub async fn ask(self: &Arc<Self>, request: NewRequest) -> Ticket {
        let NewRequest { mut record, shape } = request;
        record.id = uuid::Uuid::now_v7().to_string();
        record.state = Some(ApprovalState::Pending);
        record.asked_at = now_ms();
        let (wake, woken) = oneshot::channel();
        let id = record.id.clone();
        tracing::warn!(
            request = %id,
            job = record.job_id.as_deref().unwrap_or("-"),
            action = %record.action,
            sql = record.sql.as_deref().unwrap_or("-"),
            "approval requested: `tollgate approvals approve {id}` or `tollgate approvals deny {id} --reason ...`"
        );
        self.webhooks.notify("requested", &record);
        self.tell_fleet(FleetEvent::Asked(record.clone()));
        let event = RecordEvent::Approval(Box::new(record.clone()));
        self.state().waiting.insert(
            id.clone(),
            Waiting {
                record,
                shape,
                approvals: Vec::new(),
                wake: Some(wake),
                asked: Instant::now(),
            },
        );
        self.metrics.pending.inc();
        // From here on, dropping the ticket abandons the request.
        let ticket = Ticket::new(self.clone(), id, woken);
        if !self.recorder.commit([event], COMMIT_TIMEOUT).await {
            tracing::error!(request = %ticket.id(), "the approval request is not yet on record");
        }
        ticket
    }

    /// Whether the caller may list and decide requests.
    pub fn may_review(&self, caller: Caller) -> bool {
        self.reviewers.authorize(caller).is_ok()
    }

    /// The pending requests, oldest first.
    pub fn pending(&self) -> Vec<ApprovalRecord> {
        let mut pending: Vec<ApprovalRecord> =
            self.state().waiting.values().map(with_approvals).collect();
        pending.sort_by(|a, b| a.asked_at.cmp(&b.asked_at).then(a.id.cmp(&b.id)));
        pending
    }

    /// A pending request, if `id` names one.
    pub fn waiting(&self, id: &str) -> Option<ApprovalRecord> {
        self.state().waiting.get(id).map(with_approvals)
    }

    /// The grants in force.
    pub fn grants(&self) -> Vec<Grant> {
        self.state().grants.live()
    }

    /// A reviewer's decision on a pending request. Refusals are recorded in the audit
    /// trail, as are decisions.
    pub fn decide(
        &self,
        caller: Caller,
        id: &str,
        verdict: Verdict,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let result = self
            .reviewer(caller)
            .and_then(|decider| self.try_decide(&decider, id, &verdict));
        self.audit_decision(caller, id, &verdict, &result, "");
        result
    }

    fn audit_decision(
        &self,
        caller: Caller,
        id: &str,
        verdict: &Verdict,
        result: &Result<ApprovalRecord, ApprovalError>,
        by: &str,
    ) {
        let (outcome, detail) = match result {
            Ok(record) => (
                "ok",
                format!(
                    "request {id}{by}: {} ({})",
                    record.state.map_or("pending", ApprovalState::as_str),
                    record.reviewers.join(", ")
                ),
            ),
            Err(error) => ("refused", format!("request {id}{by}: {error}")),
        };
        let action = match verdict {
            Verdict::Approve { .. } => "approval_approve",
            Verdict::Deny { .. } => "approval_deny",
        };
        self.audit(caller, action, outcome, &detail, result.as_ref().ok());
    }

    fn try_decide(
        &self,
        decider: &Decider,
        id: &str,
        verdict: &Verdict,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let mut state = self.state();
        let waiting = state
            .waiting
            .get_mut(id)
            .ok_or_else(|| ApprovalError::NotPending(id.to_owned()))?;
        match verdict {
            Verdict::Deny { reason } => {
                if reason.trim().is_empty() {
                    return Err(ApprovalError::NoReason);
                }
                let mut waiting = state
                    .waiting
                    .remove(id)
                    .ok_or_else(|| ApprovalError::NotPending(id.to_owned()))?;
                drop(state);
                waiting.record.reviewers = vec![decider.shown.clone()];
                waiting.record.reason = Some(reason.clone());
                let outcome = Outcome::Denied {
                    request: id.to_owned(),
                    by: decider.shown.clone(),
                    reason: reason.clone(),
                };
                Ok(self.settle(waiting, ApprovalState::Denied, outcome))
            }
            Verdict::Approve { scope, reason } => {
                let actor = waiting.record.identity.get("actor").map(String::as_str);
                if !self.config.self_approval
                    && decider.uid != 0
                    && actor == Some(decider.login.as_str())
                {
                    return Err(ApprovalError::SelfApproval {
                        login: decider.shown.clone(),
                    });
                }
                if waiting.approvals.iter().any(|d| d.key == decider.key) {
                    return Err(ApprovalError::AlreadyApproved {
                        login: decider.shown.clone(),
                        id: id.to_owned(),
                    });
                }
                let scope = GrantScope::parse(scope.as_deref().unwrap_or("once"))?;
                if let Some(cap) = &waiting.record.scope_cap
                    && !scope.within(cap)
                {
                    return Err(ApprovalError::ScopeCapped {
                        asked: scope.to_string(),
                        cap: cap.clone(),
                    });
                }
                waiting.approvals.push(decider.clone());
                if waiting.approvals.len() < self.config.min_approvals as usize {
                    let record = with_approvals(waiting);
                    return Ok(record);
                }
                let mut waiting = state
                    .waiting
                    .remove(id)
                    .ok_or_else(|| ApprovalError::NotPending(id.to_owned()))?;
                let by: Vec<String> = waiting.approvals.iter().map(|d| d.shown.clone()).collect();
                waiting.record.reviewers = by.clone();
                waiting.record.reason = reason.clone();
                waiting.record.scope = Some(scope.to_string());
                if let (Some(shape), false) = (&waiting.shape, scope == GrantScope::Once) {
                    let grant = state.grants.add(&waiting.record, shape, scope, by.clone());
                    waiting.record.grant_id = Some(grant.id.clone());
                    if grant.expires_at.is_some() {
                        self.tell_fleet(FleetEvent::Granted(grant));
                    }
                    self.metrics.grants.set(state.grants.live().len() as i64);
                }
                drop(state);
                let outcome = Outcome::Approved {
                    request: id.to_owned(),
                    by,
                };
                Ok(self.settle(waiting, ApprovalState::Approved, outcome))
            }
        }
    }

    /// Ends a grant before its time. Recorded in the audit trail.
    pub fn revoke(&self, caller: Caller, id: &str) -> Result<Grant, ApprovalError> {
        let authorized = self.reviewers.authorize(caller).map(|_| ());
        self.revoke_checked(caller, authorized, id, "")
    }

    /// Ends a grant for a caller already authorized (or not); `by` names who, for the
    /// audit trail.
    fn revoke_checked(
        &self,
        caller: Caller,
        authorized: Result<(), ApprovalError>,
        id: &str,
        by: &str,
    ) -> Result<Grant, ApprovalError> {
        let result = authorized.and_then(|()| {
            let mut state = self.state();
            let grant = state
                .grants
                .revoke(id)
                .ok_or_else(|| ApprovalError::NoGrant(id.to_owned()))?;
            self.metrics.grants.set(state.grants.live().len() as i64);
            self.tell_fleet(FleetEvent::Revoked(grant.id.clone()));
            Ok(grant)
        });
        let (outcome, detail) = match &result {
            Ok(grant) => (
                "ok",
                format!("grant {id} revoked{by} ({})", grant.describe()),
            ),
            Err(error) => ("refused", format!("grant {id}{by}: {error}")),
        };
        self.audit(caller, "approval_revoke", outcome, &detail, None);
        result
    }

    /// Jobs changed: the `job`-scoped grants of jobs not in `live` end.
    pub fn keep_jobs(&self, live: &[String]) {
        let mut state = self.state();
        state.grants.keep_jobs(live);
        self.metrics.grants.set(state.grants.live().len() as i64);
    }

    /// Records the decision, wakes the held statement or connection, and counts it.
    fn settle(
        &self,
        mut waiting: Waiting,
        state: ApprovalState,
        outcome: Outcome,
    ) -> ApprovalRecord {
        waiting.record.state = Some(state);
        waiting.record.decided_at = Some(now_ms());
        self.webhooks.notify("decided", &waiting.record);
        self.tell_fleet(FleetEvent::Settled(waiting.record.clone()));
        self.recorder
            .record(RecordEvent::Approval(Box::new(waiting.record.clone())));
        self.metrics.pending.dec();
        self.metrics
            .decided(state.as_str(), Some(waiting.asked.elapsed()));
        if let Some(wake) = waiting.wake.take() {
            // The ticket may be gone (its connection ended): then nobody waits.
            let _ = wake.send(outcome);
        }
        waiting.record
    }

    /// A request its ticket gave up on: timed out, or its connection ended. False when
    /// it was no longer waiting (a reviewer decided first).
    fn give_up(&self, id: &str, state: ApprovalState, reason: String) -> bool {
        let Some(mut waiting) = self.state().waiting.remove(id) else {
            return false;
        };
        waiting.wake = None;
        waiting.record.reason = Some(reason);
        let outcome = Outcome::TimedOut {
            request: id.to_owned(),
            after: waiting.asked.elapsed(),
        };
        self.settle(waiting, state, outcome);
        true
    }

    fn audit(
        &self,
        caller: Caller,
        action: &str,
        outcome: &str,
        detail: &str,
        record: Option<&ApprovalRecord>,
    ) {
        self.recorder.record(RecordEvent::Audit(AuditRecord {
            at: now_ms(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            job_id: record.and_then(|r| r.job_id.clone()),
            caller_pid: caller.pid,
            caller_uid: caller.uid,
            detail: detail.to_owned(),
        }));
    }
}

fn with_approvals(waiting: &Waiting) -> ApprovalRecord {
    let mut record = waiting.record.clone();
    record.reviewers = waiting.approvals.iter().map(|d| d.shown.clone()).collect();
    record
}

#[cfg(test)]
mod tests;
