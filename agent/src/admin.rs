//! The admin listener: /metrics (Prometheus text), /healthz and /readyz.
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{bpf::ConnMaps, metrics::Metrics};

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub maps: Arc<ConnMaps>,
    pub gate: crate::record::Gate,
    /// Set once the listeners are bound and the programs attached.
    pub ready: AtomicBool,
    /// Set when Tollgate's programs were found detached or replaced (until restart).
    pub tampered: std::sync::Mutex<Option<String>>,
}

impl AdminState {
    fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("starting".to_owned());
        }
        if let Some(what) = self
            .tampered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Err(format!("interception was tampered with: {what}"));
        }
        if let Some(why) = self.gate.refusal() {
            return Err(why.to_owned());
        }
        Ok(())
    }
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&request, &state)) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection");
            }
        });
    }
}

fn route<B>(request: &Request<B>, state: &AdminState) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => {
            state.metrics.bpf.refresh(&state.maps);
            if let Ok(counters) = state.maps.counters() {
                state.metrics.kernel.counters(&counters);
            }
            (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.render(),
            )
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => match state.readiness() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert("content-type", value);
    }
    response
}
