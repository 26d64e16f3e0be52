//! Routing: who the caller is (a session, or nobody: only sign-in and health answer
//! then), the CSRF check on every state-changing request, and the JSON API's reads.
mod decide;
mod grants;
mod signin;

use std::sync::Arc;

use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
};
use serde::Serialize;

use super::{
    Console, SignIn,
    auth::{self, CSRF_HEADER, Reviewer, Role, SESSION_COOKIE},
    filter,
    http::{Body, error_json, json, redirect, respond},
    source::SourceError,
};

/// The OpenAPI document of `/api/v1`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The caller of a request that got past sign-in.
pub struct Who {
    pub reviewer: Reviewer,
    pub csrf: String,
    /// The session's id (None with `--dev-insecure-local`).
    pub session: Option<String>,
}

fn header_str(request: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn authenticate(console: &Console, request: &Request<Incoming>) -> Option<Who> {
    match &console.sign_in {
        SignIn::Dev { reviewer, csrf } => Some(Who {
            reviewer: reviewer.clone(),
            csrf: csrf.clone(),
            session: None,
        }),
        SignIn::Oidc(_) => {
            let id = auth::cookie(header_str(request, header::COOKIE)?, SESSION_COOKIE)?;
            let session = console.sessions.get(id)?;
            Some(Who {
                reviewer: session.reviewer,
                csrf: session.csrf,
                session: Some(id.to_owned()),
            })
        }
    }
}

/// A state-changing request must carry the session's CSRF token, and if the browser
/// says where it comes from, come from this console.
fn csrf_ok(who: &Who, request: &Request<Incoming>) -> bool {
    let token = request
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !auth::same_secret(token, &who.csrf) {
        return false;
    }
    match header_str(request, header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = header_str(request, header::HOST).unwrap_or_default();
            let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
            !host.is_empty() && origin_host == host
        }
    }
}

/// Paths of the single-page app (each serves index.html; the app routes).
fn is_page(path: &str) -> bool {
    path == "/"
        || ["/sessions", "/jobs", "/approvals", "/audit"]
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

pub async fn route(
    console: &Arc<Console>,
    request: Request<Incoming>,
) -> (Response<Body>, Option<String>) {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => {
            return (respond(StatusCode::OK, "text/plain", "ok\n"), None);
        }
        (&Method::GET, "/auth/login") => return (signin::login(console, &request), None),
        (&Method::GET, "/auth/callback") => {
            return signin::callback(console, &request).await;
        }
        _ => {}
    }
    let Some(who) = authenticate(console, &request) else {
        let response = if path.starts_with("/api/") {
            error_json(StatusCode::UNAUTHORIZED, "sign in first (/auth/login)")
        } else if method == Method::GET && is_page(&path) {
            let next = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("next", next)
                .finish();
            redirect(&format!("/auth/login?{query}"))
        } else {
            error_json(StatusCode::UNAUTHORIZED, "sign in first (/auth/login)")
        };
        return (response, None);
    };
    let login = Some(who.reviewer.login.clone());
    if !matches!(method, Method::GET | Method::HEAD) && !csrf_ok(&who, &request) {
        let response = error_json(
            StatusCode::FORBIDDEN,
            "the CSRF token is missing or wrong (send the x-csrf-token header that \
             /api/v1/me gives)",
        );
        return (response, login);
    }
    let response = match (&method, path.as_str()) {
        (&Method::POST, "/auth/logout") => signin::logout(console, &who),
        (&Method::GET, p) if is_page(p) => super::assets::index(),
        (&Method::GET, p) if p.starts_with("/assets/") => super::assets::asset(p),
        (&Method::GET, "/favicon.ico") => super::assets::asset("/assets/icon.svg"),
        (_, p) if p.starts_with("/api/v1/") => api(console, &who, request).await,
        _ => error_json(StatusCode::NOT_FOUND, "not found"),
    };
    (response, login)
}

fn source_error(error: SourceError) -> Response<Body> {
    match error {
        SourceError::NotFound(why) => error_json(StatusCode::NOT_FOUND, &why),
        error => {
            tracing::warn!(%error, "console: reading the store");
            error_json(StatusCode::SERVICE_UNAVAILABLE, &error.to_string())
        }
    }
}

fn answer<T: Serialize>(result: Result<T, SourceError>) -> Response<Body> {
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err(error) => source_error(error),
    }
}

#[derive(Serialize)]
struct Me<'a> {
    #[serde(flatten)]
    reviewer: &'a Reviewer,
    csrf_token: &'a str,
    /// `--dev-insecure-local`: the UI shows a banner.
    dev_insecure_local: bool,
    source: String,
    /// Whether decisions can be made here (an agent's control socket is reachable).
    can_decide: bool,
}

/// A number from the query string, within bounds.
fn limit(query: Option<&str>, default: u32, max: u32) -> Result<u32, Box<Response<Body>>> {
    match form_urlencoded::parse(query.unwrap_or_default().as_bytes()).find(|(k, _)| k == "limit") {
        None => Ok(default),
        Some((_, v)) => v
            .parse()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                Box::new(error_json(
                    StatusCode::BAD_REQUEST,
                    &format!("query parameter `limit`: expected 1 to {max}"),
                ))
            }),
    }
}

async fn api(console: &Arc<Console>, who: &Who, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let query = query.as_deref();
    let parts: Vec<&str> = path
        .trim_start_matches("/api/v1/")
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let source = &console.source;
    match (&method, parts.as_slice()) {
        (&Method::GET, ["me"]) => json(
            StatusCode::OK,
            &Me {
                reviewer: &who.reviewer,
                csrf_token: &who.csrf,
                dev_insecure_local: matches!(console.sign_in, SignIn::Dev { .. }),
                source: source.describe(),
                can_decide: console.control_socket.exists(),
            },
        ),
        (&Method::GET, ["openapi.json"]) => {
            let mut response = respond(StatusCode::OK, "application/json", OPENAPI);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        (&Method::GET, ["hosts"]) => answer(
            source
                .hosts()
                .await
                .map(|hosts| serde_json::json!({ "hosts": hosts })),
        ),
        (&Method::GET, ["sessions"]) => match filter::sessions(query) {
            Err(error) => error_json(StatusCode::BAD_REQUEST, &error.to_string()),
            Ok((host, q)) => answer(source.sessions(host.as_deref(), &q).await.map(|rows| {
                let next_cursor = (rows.len() == q.limit as usize)
                    .then(|| rows.last())
                    .flatten()
                    .map(|last| {
                        filter::cursor(last.record.session.started_at, &last.record.session.id)
                    });
                serde_json::json!({ "sessions": rows, "next_cursor": next_cursor })
            })),
        },
        (&Method::GET, ["sessions", host, id]) => answer(source.session(host, id).await),
        (&Method::GET, ["jobs", host, id]) => answer(source.job(host, id).await),
        (&Method::GET, ["approvals"]) => {
            let pending = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .any(|(k, v)| k == "state" && v == "pending");
            match limit(query, 100, 1000) {
                Err(response) => *response,
                Ok(limit) => answer(
                    source
                        .approvals(pending, limit)
                        .await
                        .map(|approvals| serde_json::json!({ "approvals": approvals })),
                ),
            }
        }
        (&Method::GET, ["approvals", "events"]) => super::live::events(console),
        (&Method::GET, ["approvals", id]) => answer(source.approval(id).await),
        (&Method::POST, ["approvals", id, verdict @ ("approve" | "deny")]) => {
            if who.reviewer.role < Role::Approver {
                return error_json(
                    StatusCode::FORBIDDEN,
                    "approvers only: your console role is viewer",
                );
            }
            decide::decide(console, who, id, verdict, request).await
        }
        (&Method::GET, ["grants"]) => grants::list(console).await,
        (&Method::POST, ["grants", id, "revoke"]) => {
            if who.reviewer.role < Role::Admin {
                return error_json(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "admins only: your console role is {}",
                        who.reviewer.role.as_str()
                    ),
                );
            }
            grants::revoke(console, who, id).await
        }
        (&Method::GET, ["audit"]) => match limit(query, 100, 1000) {
            Err(response) => *response,
            Ok(limit) => answer(
                source
                    .audit(limit)
                    .await
                    .map(|entries| serde_json::json!({ "entries": entries })),
            ),
        },
        (&Method::GET, ["audit", "verify"]) => answer(
            source
                .verify()
                .await
                .map(|hosts| serde_json::json!({ "hosts": hosts })),
        ),
        _ => error_json(StatusCode::NOT_FOUND, "no such API"),
    }
}
