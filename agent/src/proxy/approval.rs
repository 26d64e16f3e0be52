//! A connect whose decision is RequireApproval: the connection is accepted, but not
//! connected upstream until a reviewer decides (or a grant covers it). Approved, it goes
//! on as allowed; denied or timed out, it is reset.
use tollgate_policy::{Decision, Effect};

use super::{Shared, attribute::Attributed};
use crate::approvals::{ApprovalRecord, NewRequest};

/// The decision the connection goes on under.
pub async fn decide(
    shared: &Shared,
    conn: &Attributed,
    decision: Decision,
    connection_id: &str,
    hostname: Option<&str>,
) -> Decision {
    if !(decision.enforced && decision.effect == Effect::RequireApproval) {
        return decision;
    }
    let destination = conn.destination.to_string();
    let mut identity = std::collections::BTreeMap::new();
    if let Some(principal) = conn.principal() {
        identity.clone_from(&principal.identity);
        for (name, value) in &principal.labels {
            identity
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
    }
    let request = NewRequest {
        shape: Some(format!("connect {destination}")),
        record: ApprovalRecord {
            job_id: conn.job.as_ref().map(|j| j.id.clone()),
            identity,
            connection_id: connection_id.to_owned(),
            pid: Some(conn.process.pid),
            comm: Some(conn.process.comm.clone()),
            exe: conn.process.exe.clone(),
            target: Some(decision.target.clone()),
            destination: Some(match hostname {
                Some(name) => format!("{destination} ({name})"),
                None => destination,
            }),
            action: "connect".to_owned(),
            policy_ids: decision.policy_ids.clone(),
            ..ApprovalRecord::default()
        },
    };
    let outcome = match shared.approvals.granted(&request) {
        Some(outcome) => outcome,
        None => shared.approvals.ask(request).await.wait().await,
    };
    let mut decided = decision;
    decided.effect = if outcome.allows() {
        Effect::Allow
    } else {
        Effect::Deny
    };
    decided.reason = outcome.reason();
    decided
}
