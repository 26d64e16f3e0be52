//! MCP inside a followed HTTP connection. A POST of JSON-RPC is read whole (up to
//! `[mcp] max_message_size`): each `tools/call` in it is decided with `mcp:call` (and
//! held for approval where a policy says so), a refused one is answered here with a
//! JSON-RPC error naming the policy and the original id, and the rest go on unchanged.
//! The answers (a JSON body, or the events of an SSE stream) are read as they pass: a
//! `tools/list` answer loses the tools the job may not call, a changed tool is flagged,
//! a tool result is masked and its call recorded.
mod answers;
mod approval;
mod calls;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode, Version, request::Parts};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;

pub(super) use answers::Answering;

use super::session::{Body, HttpError, Pending, Shared};
use crate::mcp::{
    Mcp,
    jsonrpc::{self, Batch, Kind},
    sessions::{Session, SessionKey},
};

/// The header of a streamable-HTTP session.
const SESSION_HEADER: &str = "mcp-session-id";

/// The MCP side of this connection, if its requests are read as MCP.
pub(super) fn mcp_of(shared: &Shared) -> Option<&Arc<Mcp>> {
    shared.ctx.mcp.as_ref()
}

/// Whether MCP serves this request: a POST of JSON (of anything, to an MCP target).
pub(super) fn wants(shared: &Shared, parts: &Parts) -> bool {
    mcp_of(shared).is_some()
        && parts.method == Method::POST
        && (shared.ctx.mcp_declared || super::masking::is_json(&parts.headers))
}

/// The session a request belongs to: the legacy SSE transport's, when the request goes
/// to an endpoint one of its streams named, else the streamable-HTTP session its
/// `Mcp-Session-Id` names ("" when none).
pub(super) fn session_of(shared: &Shared, mcp: &Mcp, parts: &Parts) -> Arc<Session> {
    let key = |id: String| SessionKey {
        job: shared.ctx.job_id.clone(),
        destination: shared.ctx.destination,
        id,
    };
    let endpoint = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    if let Some(session) = mcp.sessions.find(&key(endpoint)) {
        return session;
    }
    let id = parts
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    mcp.sessions.get(key(id))
}

/// Serves an MCP POST (the HTTP decision let it through): see the module's comment.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    parts: Parts,
    body: Incoming,
    record: Pending,
) -> Result<Response<Body>, HttpError> {
    let Some(mcp) = mcp_of(shared).cloned() else {
        return super::session::forward(shared, parts, Either::Left(body), record, None).await;
    };
    let version = parts.version;
    let limit = mcp.config.max_message_size;
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            mcp.metrics.malformed.inc();
            let message =
                format!("the MCP message is larger than [mcp] max_message_size ({limit} bytes)");
            let response = error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &jsonrpc::error_response(
                    &Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    &message,
                    Value::Null,
                ),
                version,
                true,
            );
            record.finish(Some(413), limit as u64, body_len(&response), Some(message));
            return Ok(response);
        }
        Err(error) => {
            let why = format!("the request's body failed: {error}");
            record.finish(None, 0, 0, Some(why.clone()));
            return Err(HttpError::RequestBody(why));
        }
    };
    let batch = match Batch::parse(&bytes) {
        Ok(batch) => batch,
        // Not MCP: JSON that is not JSON-RPC, to a destination no target declares MCP.
        Err(_) if !shared.ctx.mcp_declared => {
            return super::session::forward(
                shared,
                parts,
                Either::Right(Full::new(bytes)),
                record,
                None,
            )
            .await;
        }
        Err(error) => {
            mcp.metrics.malformed.inc();
            let code = match error {
                jsonrpc::JsonRpcError::Json(_) => jsonrpc::PARSE_ERROR,
                _ => jsonrpc::INVALID_REQUEST,
            };
            let message = format!("tollgate: {error}");
            let response = error_response(
                StatusCode::BAD_REQUEST,
                &jsonrpc::error_response(&Value::Null, code, &message, Value::Null),
                version,
                true,
            );
            calls::malformed(shared, &message);
            record.finish(
                Some(400),
                bytes.len() as u64,
                body_len(&response),
                Some(message),
            );
            return Ok(response);
        }
    };
    let session = session_of(shared, &mcp, &parts);
    let decided = calls::decide(shared, &mcp, &session, &batch).await;
    if let Some(refusals) = decided.refusals {
        let legacy = session.has_stream();
        let answers: Vec<Value> = refusals;
        let response = if legacy {
            // The SSE transport answers on its stream; the POST is only accepted.
            for answer in &answers {
                let data = serde_json::to_string(answer).unwrap_or_default();
                session.send(crate::mcp::sse::encode(None, None, &data));
            }
            let mut response = Response::new(Full::new(Bytes::from_static(b"Accepted")));
            *response.status_mut() = StatusCode::ACCEPTED;
            response.map(|b| b.map_err(|never| match never {}).boxed_unsync())
        } else {
            let value = if batch.array {
                Value::Array(answers)
            } else {
                answers.into_iter().next().unwrap_or(Value::Null)
            };
            error_response(StatusCode::OK, &value, version, false)
        };
        let status = response.status().as_u16();
        record.finish(Some(status), bytes.len() as u64, body_len(&response), None);
        return Ok(response);
    }
    let answering = Answering::new(shared.clone(), mcp, session, decided.awaiting);
    super::session::forward(
        shared,
        parts,
        Either::Right(Full::new(bytes)),
        record,
        Some(answering),
    )
    .await
}

/// A response whose body is `value` as JSON; `close`: the HTTP/1 connection closes
/// after it (what came before it cannot be trusted).
fn error_response(
    status: StatusCode,
    value: &Value,
    version: Version,
    close: bool,
) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if close && version < Version::HTTP_2 {
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

fn body_len(response: &Response<Body>) -> u64 {
    http_body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0)
}

/// Whether a message is a request of `method`.
fn is_request(message: &jsonrpc::Message, method: &str) -> bool {
    message.kind == Kind::Request && message.method() == Some(method)
}
