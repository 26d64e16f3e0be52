//! What the server sends back: answers to calls (recorded, their results masked) and to
//! listings (filtered to the tools the job may call; a changed tool flagged), in a JSON
//! body or in the events of an SSE stream.
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tollgate_policy::{ResultsMasking, Subject};

use super::{calls, stream::SseFilter};
use crate::http::masking::is_json;
use crate::{
    http::session::{Body, Shared},
    mcp::{
        Mcp,
        jsonrpc::{Batch, Kind, Message},
        sessions::{Pending, Session},
    },
};

/// How the answers to one request are read.
pub(in crate::http) struct Answering {
    pub(super) shared: Arc<Shared>,
    pub(super) mcp: Arc<Mcp>,
    pub(super) session: Arc<Session>,
    /// The ids of the requests this response may answer (a POST's).
    awaiting: Vec<String>,
}

impl Answering {
    pub(super) fn new(
        shared: Arc<Shared>,
        mcp: Arc<Mcp>,
        session: Arc<Session>,
        awaiting: Vec<String>,
    ) -> Self {
        Self {
            shared,
            mcp,
            session,
            awaiting,
        }
    }

    /// For a request other than a POST of JSON-RPC on an MCP connection (a GET that
    /// opens an SSE stream): answers may come on its stream.
    pub(in crate::http) fn for_stream(
        shared: &Arc<Shared>,
        parts: &http::request::Parts,
    ) -> Option<Self> {
        let mcp = super::mcp_of(shared)?.clone();
        if parts.method != http::Method::GET {
            return None;
        }
        let session = super::session_of(shared, &mcp, parts);
        Some(Self::new(shared.clone(), mcp, session, Vec::new()))
    }

    /// The response, reading the answers it carries.
    pub(in crate::http) async fn respond(self, response: Response<Incoming>) -> Response<Body> {
        if is_event_stream(response.headers()) {
            return response.map(|body| SseFilter::new(body, self).boxed_unsync());
        }
        if self.awaiting.is_empty() {
            return response.map(|b| b.map_err(Into::into).boxed_unsync());
        }
        let status = response.status();
        if !is_json(response.headers()) {
            if status.is_client_error() || status.is_server_error() {
                self.unanswered(&format!("the server answered HTTP {status}"));
            }
            // (202 Accepted: the answers come on the session's stream.)
            return response.map(|b| b.map_err(Into::into).boxed_unsync());
        }
        let (mut parts, body) = response.into_parts();
        let limit = self.mcp.config.max_message_size;
        let bytes = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                let why = format!("the answer's body could not be read: {error}");
                self.unanswered(&why);
                self.mcp.metrics.malformed.inc();
                return Response::from_parts(parts, super::stream::failed(why).boxed_unsync());
            }
        };
        let out = self.answer_body(bytes);
        crate::http::masking::whole(&mut parts.headers, out.len());
        Response::from_parts(
            parts,
            Full::new(out)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }

    /// A JSON body of answers, as forwarded (changed or not).
    fn answer_body(&self, bytes: Bytes) -> Bytes {
        match Batch::parse(&bytes) {
            Ok(mut batch) => {
                let mut changed = false;
                for message in &mut batch.messages {
                    changed |= self.answer(message);
                }
                if changed {
                    Bytes::from(batch.to_bytes())
                } else {
                    bytes
                }
            }
            Err(error) => {
                self.mcp.metrics.malformed.inc();
                self.unanswered(&format!("the answer was not JSON-RPC: {error}"));
                bytes
            }
        }
    }

    /// One message from the server; an answer to a call or a listing is read, and maybe
    /// changed (returns whether it was).
    pub(super) fn answer(&self, message: &mut Message) -> bool {
        if !matches!(message.kind, Kind::Result | Kind::Error) {
            return false;
        }
        let Some(id) = message.id_key() else {
            return false;
        };
        let Some(pending) = self.session.state().answered(&id) else {
            return false;
        };
        // An error answer, or one without a result: its request failed.
        let error = message.error_message();
        let Some(result) = message.result_mut() else {
            calls::finish(&self.shared, pending, error);
            return false;
        };
        if pending.is_listing() {
            self.listed(result, pending)
        } else {
            self.called(result, pending)
        }
    }

    fn listed(&self, result: &mut Value, mut pending: Pending) -> bool {
        let ctx = &self.shared.ctx;
        let more = result.get("nextCursor").is_some_and(|c| !c.is_null());
        let Some(Value::Array(tools)) = result.get_mut("tools") else {
            let why = "the answer lists no tools".to_owned();
            calls::finish(&self.shared, pending, Some(why));
            return false;
        };
        let policy = ctx.enforcer.snapshot();
        let subject = Subject::new(&ctx.principal, &ctx.process, ctx.destination)
            .with_hostname(ctx.hostname.as_deref());
        let mut hidden = Vec::new();
        let changes = {
            let mut state = self.session.state();
            let changes = state.tools.observe(tools, more);
            tools.retain(|tool| {
                let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
                let keep = policy.lists_tool(subject, name, state.tools.changed(name));
                if !keep {
                    hidden.push(name.to_owned());
                }
                keep
            });
            changes
        };
        for change in &changes {
            self.mcp.metrics.changed.inc();
            tracing::warn!(
                tool = %change.tool,
                what = change.what,
                job = ctx.job_id.as_deref().unwrap_or("-"),
                session = %self.session.key.id,
                "an MCP tool changed within its session (its calls now have context.changed)"
            );
        }
        self.mcp.metrics.hidden.inc_by(hidden.len() as u64);
        let changed = !hidden.is_empty();
        if let Some(facts) = pending.record.mcp.as_mut() {
            facts.result_bytes = Some(serde_json::to_vec(&*result).map_or(0, |v| v.len()) as u64);
            facts.hidden = hidden;
            facts.changes = changes
                .iter()
                .map(|c| format!("{}: {}", c.tool, c.what))
                .collect();
        }
        calls::finish(&self.shared, pending, None);
        changed
    }

    fn called(&self, result: &mut Value, mut pending: Pending) -> bool {
        let ctx = &self.shared.ctx;
        let policy = ctx.enforcer.snapshot();
        let detect = policy.results_masking(ctx.destination) == ResultsMasking::Detect;
        let is_error = result.get("isError") == Some(&Value::Bool(true));
        let size = serde_json::to_vec(&*result).map_or(0, |v| v.len()) as u64;
        let masked = policy.masking().mask_json(result, &ctx.target, detect);
        let error = is_error.then(|| {
            first_text(result)
                .unwrap_or("the tool reported an error")
                .to_owned()
        });
        if let Some(facts) = pending.record.mcp.as_mut() {
            facts.result_bytes = Some(size);
            facts.is_error = is_error;
        }
        calls::finish(&self.shared, pending, error);
        masked > 0
    }

    /// The requests this response was to answer will get no answer the agent sees.
    pub(super) fn unanswered(&self, why: &str) {
        for id in &self.awaiting {
            let pending = self.session.state().answered(id);
            if let Some(pending) = pending {
                calls::unanswered(&self.shared, pending, why);
            }
        }
    }
}

/// A tool result's first text content (`content[].text`), where its error is told.
fn first_text(result: &Value) -> Option<&str> {
    result
        .get("content")?
        .as_array()?
        .iter()
        .find_map(|c| c.get("text").and_then(Value::as_str))
        .map(|t| t.get(..t.len().min(500)).unwrap_or(t))
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}
