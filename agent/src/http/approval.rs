//! A request whose decision is RequireApproval (`@approval("required")` on a permit of
//! `http:request`): held inside the client's own request until a reviewer decides, or a
//! grant for the same method, host and path covers it.
use tollgate_policy::{Decision, HttpRequest};

use super::session::Shared;
use crate::{
    approvals::{ApprovalRecord, NewRequest, Outcome},
    enforce::Snapshot,
};

/// How the held request goes on.
pub(super) async fn hold(
    shared: &Shared,
    seen: &HttpRequest,
    decision: &Decision,
    policy: &Snapshot,
) -> Outcome {
    let ctx = &shared.ctx;
    let identity = crate::approvals::identity_of(&ctx.principal);
    let line = format!(
        "{} {}://{}{}",
        seen.method, seen.scheme, seen.host, seen.path
    );
    let request = NewRequest {
        // A grant covers the same method, host and path (not the query).
        shape: Some(format!("http {line}")),
        record: ApprovalRecord {
            job_id: ctx.job_id.as_deref().map(str::to_owned),
            identity,
            connection_id: ctx.connection_id.to_string(),
            pid: Some(ctx.process.pid),
            comm: Some(ctx.process.comm.clone()),
            exe: ctx.process.exe.clone(),
            target: Some(ctx.target.clone()),
            destination: Some(match &ctx.hostname {
                Some(name) => format!("{} ({name})", ctx.destination),
                None => ctx.destination.to_string(),
            }),
            action: tollgate_policy::http::ACTION.to_owned(),
            kind: Some("http".to_owned()),
            sql: Some(line),
            scope_cap: {
                let caps = policy.approval_scopes(&decision.policy_ids);
                (!caps.is_empty()).then(|| caps.join(","))
            },
            policy_ids: decision.policy_ids.clone(),
            ..ApprovalRecord::default()
        },
    };
    match ctx.approvals.granted(&request) {
        Some(outcome) => outcome,
        None => ctx.approvals.ask(request).await.wait().await,
    }
}
