//! What the tracker does for a message that needs approval: the decision it goes on
//! under (a reviewer's, or a grant's), the request a reviewer is asked, the refusal a
//! denied one gets, and the notice Tollgate sends the client meanwhile.
use std::sync::Arc;

use tollgate_pgwire::backend as wire_backend;
use tollgate_policy::{Decision, Effect};

use super::{DENIED_SQLSTATE, Tracker, denial, needs_approval};
use crate::{
    approvals::{ApprovalRecord, NewRequest, Outcome},
    postgres::{
        classify::{self, Kind},
        decided::Decided,
        session::Context,
    },
};

impl Tracker {
    /// The decision a message's statements go on under, and the approval request or
    /// grant they link to. A decision that needs approval is replaced by the reviewer's
    /// (once the held message is handled again) or a grant's; without either, None: the
    /// message is held, and the request to make is kept for the pump.
    pub(super) fn approval(
        &mut self,
        ctx: &Context,
        decided: Arc<Decided>,
        statements: &[classify::Statement],
    ) -> Option<(Arc<Decided>, Option<String>)> {
        self.applied = None;
        if !needs_approval(&decided) {
            return Some((decided, None));
        }
        let outcome = match self.resolved.take() {
            Some(outcome) => outcome,
            None => {
                let request = self.request(ctx, &decided, statements);
                match ctx.approvals.granted(&request) {
                    Some(outcome) => outcome,
                    None => {
                        self.held = Some(request);
                        return None;
                    }
                }
            }
        };
        let mut decision = decided.decision.clone();
        decision.effect = if outcome.allows() {
            Effect::Allow
        } else {
            Effect::Deny
        };
        decision.reason = outcome.reason();
        let link = Some(outcome.link().to_owned());
        self.applied = Some(outcome);
        Some((Decided::new(decision), link))
    }

    /// What a reviewer is asked about a message's statements.
    fn request(
        &self,
        ctx: &Context,
        decided: &Decided,
        statements: &[classify::Statement],
    ) -> NewRequest {
        let text: Vec<&str> = statements.iter().map(|s| &*s.text).collect();
        let text = text.join("; ");
        let kind = statements
            .iter()
            .find(|s| s.kind.action().is_some())
            .map_or(Kind::Unknown, |s| s.kind);
        let identity = crate::approvals::identity_of(&ctx.principal);
        NewRequest {
            shape: classify::shape::shape(&text).or_else(|| Some(text.clone())),
            record: ApprovalRecord {
                job_id: ctx.job_id.as_deref().map(str::to_owned),
                identity,
                connection_id: ctx.connection_id.to_string(),
                pid: Some(ctx.process.pid),
                comm: Some(ctx.process.comm.clone()),
                exe: ctx.process.exe.clone(),
                target: Some(ctx.target.clone()),
                destination: Some(ctx.destination.to_string()),
                action: kind.action().unwrap_or("sql:unknown").to_owned(),
                kind: Some(kind.as_str().to_owned()),
                sql: Some(self.masking.redact(&text).into_owned()),
                tables: statements
                    .iter()
                    .flat_map(|s| s.tables.iter().cloned())
                    .collect(),
                policy_ids: decided.policy_ids.to_vec(),
                scope_cap: self.scope_cap(ctx, &decided.policy_ids),
                ..ApprovalRecord::default()
            },
        }
    }

    /// The policies' `@approval_scope` caps, joined (None: no cap).
    fn scope_cap(&self, ctx: &Context, policy_ids: &[String]) -> Option<String> {
        let caps = match &self.policy {
            Some(policy) => policy.approval_scopes(policy_ids),
            None => ctx.enforcer.snapshot().approval_scopes(policy_ids),
        };
        (!caps.is_empty()).then(|| caps.join(","))
    }

    /// Tollgate's ErrorResponse for the message being handled: a reviewer's refusal
    /// (or the timeout) when it waited for one, else the policy's.
    pub(super) fn refusal(&self, decision: &Decision, kind: Kind) -> Vec<u8> {
        match &self.applied {
            Some(outcome) => {
                let message = format!(
                    "tollgate: this {} statement was not approved: {}",
                    kind.as_str(),
                    outcome.reason()
                );
                let hint = format!("See `tollgate approvals show {}`.", outcome.link());
                wire_backend::error_response_bytes(
                    DENIED_SQLSTATE,
                    &self.encoding.encode(&message),
                    Some(&self.encoding.encode(&decision.reason)),
                    Some(hint.as_bytes()),
                )
            }
            None => denial(decision, kind, &self.encoding),
        }
    }

    /// The request of the held message (the pump asks it).
    pub(in crate::postgres) fn take_held(&mut self) -> Option<NewRequest> {
        self.held.take()
    }

    /// A reviewer decided the held message: it is handled again under that decision.
    pub(in crate::postgres) fn resolve(&mut self, outcome: Outcome) {
        self.resolved = Some(outcome);
    }

    /// `text` in the session's client encoding.
    pub(in crate::postgres) fn encode(&self, text: &str) -> Vec<u8> {
        self.encoding.encode(text).into_owned()
    }

    /// Bytes Tollgate sends the client at the next message boundary.
    pub(in crate::postgres) fn tell_client(&mut self, bytes: &[u8]) {
        self.to_client.extend_from_slice(bytes);
    }

    pub(in crate::postgres) fn take_to_client(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.to_client);
    }
}
