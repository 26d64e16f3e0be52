//! The requests of one MCP POST: each `tools/call` decided (and held for approval where
//! a policy says so), each call and listing remembered until its answer comes.
use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use serde_json::{Value, json};
use tollgate_policy::{Decision, Effect, McpCall, Subject};

use super::is_request;
use crate::{
    http::session::Shared,
    mcp::{
        Mcp,
        jsonrpc::{self, Batch},
        sessions::{Pending, Session},
    },
    record::{DecisionLabel, McpFacts, RecordEvent, StatementRecord, now_ms},
};

/// What became of a POST's requests.
pub(super) struct Decided {
    /// The POST is answered here: a refused call's error, and an error for every other
    /// request of its batch (none of which is sent).
    pub refusals: Option<Vec<Value>>,
    /// The ids of requests whose answers are awaited (recorded when they come).
    pub awaiting: Vec<String>,
}

/// Decides the calls of `batch`, holding those that need approval.
pub(super) async fn decide(
    shared: &Arc<Shared>,
    mcp: &Arc<Mcp>,
    session: &Arc<Session>,
    batch: &Batch,
) -> Decided {
    let ctx = &shared.ctx;
    let policy = ctx.enforcer.snapshot();
    let masking = policy.masking();
    let subject = Subject::new(&ctx.principal, &ctx.process, ctx.destination)
        .with_hostname(ctx.hostname.as_deref());
    // Per message: its answer if refused here, or what awaits its answer.
    let mut refused = false;
    let mut outcomes: Vec<Option<Result<(String, Pending), Value>>> = Vec::new();
    for message in &batch.messages {
        let started = Instant::now();
        let started_at = now_ms();
        let id_key = message.id_key().unwrap_or_default();
        if is_request(message, "tools/call") {
            let params = message.params();
            let tool = params
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let arguments = params
                .and_then(|p| p.get("arguments"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let changed = session.state().tools.changed(tool);
            let call = McpCall {
                tool: tool.to_owned(),
                arguments,
                changed,
            };
            let mut decision = policy.decide_mcp(subject, &call);
            let mut approval = None;
            if decision.enforced && decision.effect == Effect::RequireApproval {
                // Held inside the client's own POST until a reviewer decides.
                let outcome = super::approval::hold(shared, &call, &decision, &policy).await;
                decision.effect = if outcome.allows() {
                    Effect::Allow
                } else {
                    Effect::Deny
                };
                decision.reason = outcome.reason();
                approval = Some(outcome.link().to_owned());
            }
            let mut arguments = Value::Object(call.arguments.clone());
            masking.mask_json(&mut arguments, &ctx.target, true);
            let facts = McpFacts {
                method: "tools/call".to_owned(),
                session: session.key.id.clone(),
                tool: Some(call.tool.clone()),
                arguments: Some(arguments.to_string()),
                changed,
                ..McpFacts::default()
            };
            let mut record = record(shared, transport(session), facts, &decision, started_at);
            record.approval = approval;
            count(shared, &record);
            mcp.metrics.call(record.decision);
            if decision.blocks() {
                refused = true;
                let id = message.id().cloned().unwrap_or(Value::Null);
                let answer = refusal(&id, &decision, &record.id, &call.tool);
                let record = Box::new(record);
                finish(
                    shared,
                    Pending { record, started },
                    Some(decision.reason.clone()),
                );
                outcomes.push(Some(Err(answer)));
            } else {
                let record = Box::new(record);
                outcomes.push(Some(Ok((id_key, Pending { record, started }))));
            }
        } else if is_request(message, "tools/list") {
            let facts = McpFacts {
                method: "tools/list".to_owned(),
                session: session.key.id.clone(),
                ..McpFacts::default()
            };
            let decision = Decision::allow("listed: the tools the job may call");
            let record = Box::new(record(
                shared,
                transport(session),
                facts,
                &decision,
                started_at,
            ));
            outcomes.push(Some(Ok((id_key, Pending { record, started }))));
        } else if message.kind == jsonrpc::Kind::Request {
            outcomes.push(Some(Err(Value::Null)));
        } else {
            outcomes.push(None);
        }
    }
    if !refused {
        let mut awaiting = Vec::new();
        let mut state = session.state();
        for (id, pending) in outcomes.into_iter().flatten().filter_map(Result::ok) {
            awaiting.push(id.clone());
            for (lost, why) in state.await_answer(id, pending) {
                unanswered(shared, lost, why);
            }
        }
        return Decided {
            refusals: None,
            awaiting,
        };
    }
    // The batch is refused whole: its other requests are not sent either.
    let mut answers = Vec::new();
    for (message, outcome) in batch.messages.iter().zip(outcomes) {
        let id = message.id().cloned().unwrap_or(Value::Null);
        match outcome {
            Some(Err(answer)) if !answer.is_null() => answers.push(answer),
            Some(Err(_)) => answers.push(not_sent(&id)),
            Some(Ok((_, pending))) => {
                answers.push(not_sent(&id));
                unanswered(
                    shared,
                    pending,
                    "not sent: a call in the same batch was refused",
                );
            }
            None => {}
        }
    }
    Decided {
        refusals: Some(answers),
        awaiting: Vec::new(),
    }
}

/// The JSON-RPC error of a refused call: the reason names the policy.
fn refusal(id: &Value, decision: &Decision, record: &str, tool: &str) -> Value {
    jsonrpc::error_response(
        id,
        jsonrpc::REFUSED,
        &format!(
            "tollgate: the call of tool `{tool}` was refused: {}",
            decision.reason
        ),
        json!({
            "decision": decision.label(),
            "policy_ids": decision.policy_ids,
            "tool": tool,
            "record": record,
        }),
    )
}

fn not_sent(id: &Value) -> Value {
    jsonrpc::error_response(
        id,
        jsonrpc::REFUSED,
        "tollgate: not sent: a call in the same batch was refused",
        Value::Null,
    )
}

/// The record of an MCP message on this connection.
pub(super) fn record(
    shared: &Shared,
    transport: &'static str,
    facts: McpFacts,
    decision: &Decision,
    started_at: i64,
) -> StatementRecord {
    let sql = match &facts.tool {
        Some(tool) => format!("{} {tool}", facts.method),
        None => facts.method.clone(),
    };
    let mut record = crate::http::record::l7(shared, transport, "mcp", sql, decision, started_at);
    record.mcp = Some(Box::new(facts));
    record
}

/// How a session's messages travel: `mcp/sse` (the legacy transport) or `mcp/http`.
pub(super) fn transport(session: &Session) -> &'static str {
    if session.has_stream() {
        "mcp/sse"
    } else {
        "mcp/http"
    }
}

/// Adds a record to its connection's counts of statements (and of refused ones).
fn count(shared: &Shared, record: &StatementRecord) {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if !matches!(
        record.decision,
        DecisionLabel::Allow | DecisionLabel::WouldDeny | DecisionLabel::WouldRequireApproval
    ) {
        shared.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes a request's record, ended (with `error` if it failed).
pub(super) fn finish(shared: &Shared, pending: Pending, error: Option<String>) {
    shared
        .ctx
        .recorder
        .record(RecordEvent::Statement(pending.ended(error)));
}

/// Records a request that will get no answer the agent sees, and why.
pub(super) fn unanswered(shared: &Shared, pending: Pending, why: &str) {
    finish(shared, pending, Some(why.to_owned()));
}

/// Records a body that is not JSON-RPC, sent to an MCP target.
pub(super) fn malformed(shared: &Shared, why: &str) {
    let facts = McpFacts {
        method: String::new(),
        ..McpFacts::default()
    };
    let mut decision = Decision::deny(why);
    decision.policy_ids.clear();
    let mut record = record(shared, "mcp/http", facts, &decision, now_ms());
    record.decision = DecisionLabel::Malformed;
    record.sql = Arc::from("(not JSON-RPC)");
    count(shared, &record);
    let record = Box::new(record);
    let started = Instant::now();
    unanswered(shared, Pending { record, started }, why);
}
