//! Live updates of the approvals inbox: a Server-Sent Events stream that says
//! `event: approvals` whenever a request is asked or decided, so that the page
//! refetches without a reload. The store is looked at twice a second.
use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt, StreamBody};
use hyper::{
    Response, StatusCode,
    body::{Bytes, Frame},
    header::{self, HeaderValue},
};
use tokio::sync::broadcast;

use super::{Console, http::Body};

const POLL: Duration = Duration::from_millis(500);
const KEEPALIVE: Duration = Duration::from_secs(15);

pub struct Live {
    tx: broadcast::Sender<String>,
}

impl Live {
    pub fn start() -> Self {
        let (tx, _) = broadcast::channel(64);
        Self { tx }
    }
}

/// Watches the approval requests for changes (all the time, so that a change just
/// after a page subscribed is not taken for the state it subscribed to).
pub fn watch(console: Arc<Console>) {
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            match console.source.approvals_version().await {
                Ok(version) if last.as_ref() != Some(&version) => {
                    tracing::debug!(%version, listeners = console.live.tx.receiver_count(), "console: approvals changed");
                    // The first look sends too: a page that subscribed before it refetches
                    // (a needless refetch at most).
                    let _ = console.live.tx.send(version.clone());
                    last = Some(version);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "console: watching approvals"),
            }
            tokio::time::sleep(POLL).await;
        }
    });
}

enum Step {
    Hello,
    Wait,
}

/// `GET /api/v1/approvals/events`.
pub fn events(console: &Console) -> Response<Body> {
    let rx = console.live.tx.subscribe();
    let stream = futures_util::stream::unfold((rx, Step::Hello), |(mut rx, step)| async move {
        let text = match step {
            Step::Hello => "retry: 2000\n: connected\n\n".to_owned(),
            Step::Wait => tokio::select! {
                received = rx.recv() => match received {
                    Ok(version) => format!("event: approvals\ndata: {version}\n\n"),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        "event: approvals\ndata: lagged\n\n".to_owned()
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = tokio::time::sleep(KEEPALIVE) => ": keepalive\n\n".to_owned(),
            },
        };
        Some((
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(text))),
            (rx, Step::Wait),
        ))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(Box::pin(stream))));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
