//! Approving and denying from the console: the decision goes to this host's agent over
//! its control socket, with the reviewer's OIDC identity; the agent applies it (or
//! sends it through the central store to the host that holds the request) with the
//! same checks as for any reviewer: self-approval, approvals needed, scope caps.
use std::sync::Arc;

use hyper::{Request, Response, StatusCode, body::Incoming};
use serde::Deserialize;

use super::Who;
use crate::{
    approvals::{ConsoleReviewer, Verdict},
    console::{
        Console,
        http::{Body, error_json, json, read_body},
    },
    control::{Client, ClientError, Request as ControlRequest, Response as ControlResponse},
};

/// Largest decision body accepted.
const MAX_BODY: usize = 16 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// `once` (default), `job` or a duration such as `30m`.
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn decide(
    console: &Arc<Console>,
    who: &Who,
    id: &str,
    verdict: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    let is_json = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return error_json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the decision as application/json",
        );
    }
    let body = match read_body(request.into_body(), MAX_BODY).await {
        Ok(body) => body,
        Err(why) => return error_json(StatusCode::BAD_REQUEST, &why),
    };
    let body: DecisionBody = if body.is_empty() {
        DecisionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(error) => {
                return error_json(StatusCode::BAD_REQUEST, &format!("the decision: {error}"));
            }
        }
    };
    let verdict = if verdict == "approve" {
        Verdict::Approve {
            scope: body.scope,
            reason: body.reason,
        }
    } else {
        match body.reason {
            Some(reason) if !reason.trim().is_empty() => Verdict::Deny { reason },
            _ => return error_json(StatusCode::BAD_REQUEST, "a denial needs a reason"),
        }
    };
    let request = ControlRequest::DecideApprovalFor {
        id: id.to_owned(),
        verdict,
        reviewer: reviewer(who),
    };
    match call_agent(console, request).await {
        Ok(ControlResponse::Approval(record)) => json(StatusCode::OK, &record),
        Ok(other) => unexpected(&other),
        Err(response) => *response,
    }
}

/// The reviewer as the agent records them.
pub(super) fn reviewer(who: &Who) -> ConsoleReviewer {
    ConsoleReviewer {
        issuer: who.reviewer.issuer.clone(),
        subject: who.reviewer.subject.clone(),
        login: who.reviewer.login.clone(),
    }
}

/// A reply of the wrong kind from the agent.
pub(super) fn unexpected(reply: &ControlResponse) -> Response<Body> {
    error_json(
        StatusCode::BAD_GATEWAY,
        &format!("the agent answered {reply:?}"),
    )
}

/// One request to the agent's control socket; its refusal is 409, no agent 503.
pub(super) async fn call_agent(
    console: &Arc<Console>,
    request: ControlRequest,
) -> Result<ControlResponse, Box<Response<Body>>> {
    let socket = console.control_socket.clone();
    let reply = tokio::task::spawn_blocking(move || {
        let mut client = Client::connect(&socket)?;
        client.call(&request)
    })
    .await;
    match reply {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(ClientError::Agent(message))) => {
            Err(Box::new(error_json(StatusCode::CONFLICT, &message)))
        }
        Ok(Err(error)) => Err(Box::new(error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no agent to decide through: {error}"),
        ))),
        Err(error) => Err(Box::new(error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &error.to_string(),
        ))),
    }
}
