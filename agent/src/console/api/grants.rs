//! Grants in force (any reviewer sees them) and their revocation (admins), through the
//! agent: grants live in its memory, and duration grants are the fleet's.
use std::sync::Arc;

use hyper::{Response, StatusCode};

use super::{
    Who,
    decide::{call_agent, reviewer, unexpected},
};
use crate::{
    console::{
        Console,
        http::{Body, json},
    },
    control::{Request as ControlRequest, Response as ControlResponse},
};

pub async fn list(console: &Arc<Console>) -> Response<Body> {
    let request = ControlRequest::ListApprovals {
        pending: true,
        limit: 1,
    };
    match call_agent(console, request).await {
        Ok(ControlResponse::Approvals { grants, .. }) => {
            json(StatusCode::OK, &serde_json::json!({ "grants": grants }))
        }
        Ok(other) => unexpected(&other),
        Err(response) => *response,
    }
}

pub async fn revoke(console: &Arc<Console>, who: &Who, id: &str) -> Response<Body> {
    let request = ControlRequest::RevokeGrantFor {
        id: id.to_owned(),
        reviewer: reviewer(who),
    };
    match call_agent(console, request).await {
        Ok(ControlResponse::Grant(grant)) => json(StatusCode::OK, &grant),
        Ok(other) => unexpected(&other),
        Err(response) => *response,
    }
}
