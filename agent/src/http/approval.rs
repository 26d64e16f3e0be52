//! A request whose decision is RequireApproval (`@approval("required")` on a permit of
//! `http:request`, or of `mcp:call` for a tool call inside it): held inside the client's
//! own request until a reviewer decides, or a grant of the same shape covers it.
use tollgate_policy::{Decision, HttpRequest};

use super::session::Shared;
use crate::{
    approvals::{ApprovalRecord, NewRequest, Outcome},
    enforce::Snapshot,
};

/// What is held: the action, what a reviewer reads (`line`), and what a grant covers
/// (`shape`).
pub(super) struct Held<'a> {
    pub action: &'a str,
    pub kind: &'a str,
    pub line: String,
    pub shape: String,
}

/// How the held request goes on: a grant for the same method, host and path (not the
/// query) covers it.
pub(super) async fn hold(
    shared: &Shared,
    seen: &HttpRequest,
    decision: &Decision,
    policy: &Snapshot,
) -> Outcome {
    let line = format!(
        "{} {}://{}{}",
        seen.method, seen.scheme, seen.host, seen.path
    );
    let held = Held {
        action: tollgate_policy::http::ACTION,
        kind: "http",
        shape: format!("http {line}"),
        line,
    };
    hold_as(shared, held, decision, policy).await
}

/// Holds `held` on this connection until a grant covers it or a reviewer decides.
pub(super) async fn hold_as(
    shared: &Shared,
    held: Held<'_>,
    decision: &Decision,
    policy: &Snapshot,
) -> Outcome {
    let ctx = &shared.ctx;
    let request = NewRequest {
        shape: Some(held.shape),
        record: ApprovalRecord {
            job_id: ctx.job_id.as_deref().map(str::to_owned),
            identity: crate::approvals::identity_of(&ctx.principal),
            connection_id: ctx.connection_id.to_string(),
            pid: Some(ctx.process.pid),
            comm: Some(ctx.process.comm.clone()),
            exe: ctx.process.exe.clone(),
            target: Some(ctx.target.clone()),
            destination: Some(match &ctx.hostname {
                Some(name) => format!("{} ({name})", ctx.destination),
                None => ctx.destination.to_string(),
            }),
            action: held.action.to_owned(),
            kind: Some(held.kind.to_owned()),
            sql: Some(held.line),
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
