//! A connect whose decision is RequireApproval: the connection is accepted, but not
//! connected upstream until a reviewer decides (or a grant covers it). Approved, it goes
//! on as allowed; denied or timed out, it is reset.
use std::time::Duration;

use tokio::net::TcpStream;
use tollgate_policy::{Decision, Effect};

use super::{Shared, attribute::Attributed};
use crate::approvals::{ApprovalRecord, NewRequest};

/// How often a held connection's client is checked for having hung up.
const HUNG_UP_POLL: Duration = Duration::from_millis(250);

/// The decision the connection goes on under; None when its client hung up first.
pub async fn decide(
    shared: &Shared,
    client: &TcpStream,
    conn: &Attributed,
    decision: Decision,
    connection_id: &str,
    hostname: Option<&str>,
) -> Option<Decision> {
    if !(decision.enforced && decision.effect == Effect::RequireApproval) {
        return Some(decision);
    }
    let destination = conn.destination.to_string();
    let identity = conn
        .principal()
        .map(|principal| crate::approvals::identity_of(principal))
        .unwrap_or_default();
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
            scope_cap: {
                let caps = shared
                    .enforcer
                    .snapshot()
                    .approval_scopes(&decision.policy_ids);
                (!caps.is_empty()).then(|| caps.join(","))
            },
            policy_ids: decision.policy_ids.clone(),
            ..ApprovalRecord::default()
        },
    };
    let outcome = match shared.approvals.granted(&request) {
        Some(outcome) => outcome,
        None => {
            let decided = shared.approvals.ask(request).await.wait();
            tokio::select! {
                outcome = decided => outcome,
                // The client hung up: the request is abandoned (its ticket drops).
                () = hung_up(client) => return None,
            }
        }
    };
    let mut decided = decision;
    decided.effect = if outcome.allows() {
        Effect::Allow
    } else {
        Effect::Deny
    };
    decided.reason = outcome.reason();
    Some(decided)
}

/// Resolves when the client has closed its side (what it sent meanwhile stays unread).
async fn hung_up(client: &TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        match client.peek(&mut byte).await {
            Ok(0) | Err(_) => return,
            // It sent something already: look again later.
            Ok(_) => tokio::time::sleep(HUNG_UP_POLL).await,
        }
    }
}
