//! The web UI's files, built into the binary from `agent/console/` (no build step, no
//! CDN: every byte the browser runs comes from here).
use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
};

use super::http::{Body, error_json, respond};

const INDEX: &str = include_str!("../../console/index.html");
const FILES: [(&str, &str, &str); 9] = [
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "/assets/dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/dom.js"),
    ),
    (
        "/assets/sessions.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/sessions.js"),
    ),
    (
        "/assets/replay.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/replay.js"),
    ),
    (
        "/assets/job.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/job.js"),
    ),
    (
        "/assets/approvals.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/approvals.js"),
    ),
    (
        "/assets/audit.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/audit.js"),
    ),
    (
        "/assets/app.css",
        "text/css; charset=utf-8",
        include_str!("../../console/app.css"),
    ),
    (
        "/assets/icon.svg",
        "image/svg+xml",
        include_str!("../../console/icon.svg"),
    ),
];

pub fn index() -> Response<Body> {
    respond(StatusCode::OK, "text/html; charset=utf-8", INDEX)
}

pub fn asset(path: &str) -> Response<Body> {
    match FILES.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, text)) => {
            let mut response = respond(StatusCode::OK, content_type, *text);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => error_json(StatusCode::NOT_FOUND, "no such asset"),
    }
}
