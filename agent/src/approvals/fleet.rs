//! The approvals registry's side of a fleet: who decides (here or on another host),
//! what the central store is told, and decisions and grants that come from it.
use serde::{Deserialize, Serialize};

use super::{ApprovalError, ApprovalRecord, Approvals, Verdict, grants::Grant};
use crate::jobs::Caller;

/// Who decides: a reviewer on this host (authorized by the kernel's credentials of the
/// control socket's caller), or one on another host of the fleet (authorized by that
/// host's agent, which signed the decision with its enrolled key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decider {
    /// One per reviewer: `uid:N`, or `uid:N@HOST` on another host.
    pub key: String,
    pub uid: u32,
    /// The login (compared with the job's actor for self-approval).
    pub login: String,
    /// As records show it: the login, with `@HOST` on another host.
    pub shown: String,
}

impl Decider {
    pub(super) fn local(uid: u32, login: String) -> Self {
        Self {
            key: format!("uid:{uid}"),
            uid,
            shown: login.clone(),
            login,
        }
    }

    /// The same reviewer, deciding from `host`.
    pub fn on_host(&self, host: &str) -> Self {
        Self {
            key: format!("{}@{host}", self.key),
            uid: self.uid,
            login: self.login.clone(),
            // A console reviewer stays `oidc:LOGIN`, with the host.
            shown: format!("{}@{host}", self.shown),
        }
    }
}

/// What the fleet is told: a request asked here, or settled here.
#[derive(Debug, Clone)]
pub enum FleetEvent {
    Asked(ApprovalRecord),
    Settled(ApprovalRecord),
    /// A grant with a duration's scope: in force on every host of the fleet.
    Granted(Grant),
    Revoked(String),
}

impl Approvals {
    /// Tells `fleet` of every request asked and settled from now on.
    pub fn attach_fleet(&self, fleet: tokio::sync::mpsc::UnboundedSender<FleetEvent>) {
        let _ = self.fleet.set(fleet);
    }

    pub(super) fn tell_fleet(&self, event: FleetEvent) {
        if let Some(fleet) = self.fleet.get() {
            let _ = fleet.send(event);
        }
    }

    /// A decision made on another host of the fleet (authorized there; its signature
    /// was checked by the caller). Recorded in the audit trail with that host.
    pub fn decide_from_fleet(
        &self,
        decider: &Decider,
        id: &str,
        verdict: Verdict,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let result = self.try_decide(decider, id, &verdict);
        let caller = Caller {
            pid: 0,
            uid: decider.uid,
            gid: 0,
        };
        self.audit_decision(
            caller,
            id,
            &verdict,
            &result,
            &format!(" by {}", decider.shown),
        );
        result
    }

    /// A grant another host of the fleet made (its signature checked by the caller).
    pub fn adopt_grant(&self, grant: Grant) {
        let mut state = self.state();
        let id = grant.id.clone();
        if state.grants.adopt(grant) {
            tracing::info!(grant = %id, "a grant made on another host is in force here");
            self.metrics.grants.set(state.grants.live().len() as i64);
        }
    }

    /// A fleet grant revoked on another host.
    pub fn drop_grant(&self, id: &str) {
        let mut state = self.state();
        if state.grants.revoke(id).is_some() {
            self.metrics.grants.set(state.grants.live().len() as i64);
        }
    }
}

/// A reviewer signed in to the review console with OIDC, as the console vouches for
/// them. The console is an operator of this agent's control socket: the agent takes
/// its word for who signed in, and records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleReviewer {
    /// The OIDC issuer and the reviewer's subject there.
    pub issuer: String,
    pub subject: String,
    /// The login claim's value: shown in records, compared with a job's actor.
    pub login: String,
}

impl Decider {
    /// A console reviewer: never root, so self-approval is checked for them.
    pub fn console(reviewer: &ConsoleReviewer) -> Self {
        Self {
            key: format!("oidc:{}#{}", reviewer.issuer, reviewer.subject),
            uid: u32::MAX,
            login: reviewer.login.clone(),
            shown: format!("oidc:{}", reviewer.login),
        }
    }
}

impl Approvals {
    /// A decision a console reviewer made, brought by the console (an operator).
    /// Recorded in the audit trail with the reviewer's OIDC identity.
    pub fn decide_for_console(
        &self,
        caller: Caller,
        reviewer: &ConsoleReviewer,
        id: &str,
        verdict: Verdict,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let decider = Decider::console(reviewer);
        let result = self.try_decide(&decider, id, &verdict);
        let by = format!(
            " by {} (console; issuer {}, subject {})",
            decider.shown, reviewer.issuer, reviewer.subject
        );
        self.audit_decision(caller, id, &verdict, &result, &by);
        result
    }

    /// A console admin ends a grant, brought by the console (an operator).
    pub fn revoke_for_console(
        &self,
        caller: Caller,
        reviewer: &ConsoleReviewer,
        id: &str,
    ) -> Result<super::Grant, ApprovalError> {
        let by = format!(
            " by oidc:{} (console; issuer {}, subject {})",
            reviewer.login, reviewer.issuer, reviewer.subject
        );
        self.revoke_checked(caller, Ok(()), id, &by)
    }
}
