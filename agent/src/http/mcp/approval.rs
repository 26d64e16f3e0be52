//! A tool call whose decision is RequireApproval (`@approval("required")` on a permit of
//! `mcp:call`): held inside the client's own POST until a reviewer decides, or a grant
//! for the same tool with the same arguments covers it.
use serde_json::Value;
use tollgate_policy::{Decision, McpCall};

use crate::{
    approvals::{ApprovalRecord, NewRequest, Outcome},
    enforce::Snapshot,
    http::session::Shared,
};

/// How the held call goes on.
pub(super) async fn hold(
    shared: &Shared,
    call: &McpCall,
    decision: &Decision,
    policy: &Snapshot,
) -> Outcome {
    let ctx = &shared.ctx;
    // What the reviewer reads: the tool and its arguments, masked as they are recorded.
    let mut arguments = Value::Object(call.arguments.clone());
    policy
        .masking()
        .mask_json(&mut arguments, &ctx.target, true);
    let line = format!("tools/call {} {arguments}", call.tool);
    let request = NewRequest {
        // A grant covers the same tool with the same arguments.
        shape: Some(format!(
            "mcp {} {}",
            call.tool,
            crate::mcp::jsonrpc::canonical(&Value::Object(call.arguments.clone()))
        )),
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
            action: tollgate_policy::mcp::ACTION.to_owned(),
            kind: Some("mcp".to_owned()),
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
