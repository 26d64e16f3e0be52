//! A tool call whose decision is RequireApproval (`@approval("required")` on a permit of
//! `mcp:call`): held inside the client's own POST as an HTTP request is
//! (`http::approval::hold_as`), until a reviewer decides or a grant for the same tool
//! with the same arguments covers it.
use serde_json::Value;
use tollgate_policy::{Decision, McpCall};

use crate::{
    approvals::Outcome,
    enforce::Snapshot,
    http::{approval::Held, session::Shared},
};

/// How the held call goes on.
pub(super) async fn hold(
    shared: &Shared,
    call: &McpCall,
    decision: &Decision,
    policy: &Snapshot,
) -> Outcome {
    let arguments = Value::Object(call.arguments.clone());
    // What the reviewer reads: the tool and its arguments, masked as they are recorded.
    let mut masked = arguments.clone();
    policy
        .masking()
        .mask_json(&mut masked, &shared.ctx.target, true);
    let held = Held {
        action: tollgate_policy::mcp::ACTION,
        kind: "mcp",
        line: format!("tools/call {} {masked}", call.tool),
        shape: format!(
            "mcp {} {}",
            call.tool,
            crate::mcp::jsonrpc::canonical(&arguments)
        ),
    };
    crate::http::approval::hold_as(shared, held, decision, policy).await
}
