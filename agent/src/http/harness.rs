//! One followed HTTP connection with everything it needs around it (an enforcer over an
//! `http:request` policy, a recorder), driven over in-memory streams: the client's
//! bytes as given, and a destination that answers every request `200 ok`. The unit
//! tests' connection and the `http` fuzz target's.
use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn as server};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tollgate_policy::{Mode, Principal, Process};

use super::{
    HttpConfig,
    detect::Detect,
    session::{Context, HttpError, run},
};
use crate::{
    enforce::{Enforcer, Settings},
    metrics::Metrics,
    proxy::handler::Progress,
    record::writer::WriterHandle,
};

/// GETs are allowed, `/admin` is forbidden, everything else is denied by default.
const POLICY: &str = r#"
@id("reads")
permit(principal, action == Action::"http:request", resource)
when { context.method == "GET" && context.headers has "x-run" || context.method == "HEAD" };
@id("no-admin")
forbid(principal, action == Action::"http:request", resource)
when { context.path like "/admin*" };
"#;

/// How long one input may take.
const LIMIT: Duration = Duration::from_secs(5);

pub struct Harness {
    enforcer: Arc<Enforcer>,
    approvals: Arc<crate::approvals::Approvals>,
    recorder: crate::record::Recorder,
    metrics: Metrics,
    runtime: tokio::runtime::Runtime,
    _writer: WriterHandle,
    _dir: tempfile::TempDir,
}

/// What one connection did.
#[derive(Debug)]
pub struct Served {
    /// What the client received.
    pub answer: Vec<u8>,
    /// How the session ended.
    pub result: Result<(), String>,
}

impl Harness {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a scratch directory")?;
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies)?;
        std::fs::write(policies.join("http.cedar"), POLICY)?;
        let metrics = Metrics::new();
        let settings = Settings {
            mode: Mode::Enforce,
            targets: Vec::new(),
            masking: Arc::default(),
            http_headers: vec!["x-run".to_owned()],
        };
        let enforcer = Enforcer::load(&policies, None, settings, metrics.policy.clone())?;
        let (recorder, writer) = crate::record::writer::spawn(
            &dir.path().join("records.db"),
            crate::record::writer::WriterOptions {
                capacity: 1024,
                batch_size: 64,
                flush_interval: Duration::from_millis(50),
                ..Default::default()
            },
            metrics.record.clone(),
        )?;
        let approvals = Arc::new(crate::approvals::Approvals::new(
            &crate::config::ApprovalsConfig::default(),
            recorder.clone(),
            metrics.approvals.clone(),
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            enforcer: Arc::new(enforcer),
            approvals,
            recorder,
            metrics,
            runtime,
            _writer: writer,
            _dir: dir,
        })
    }

    /// Serves one connection whose client sends `input` (HTTP/2 when `h2`, the client's
    /// preface included in `input`) and then closes its side.
    pub fn serve(&self, input: &[u8], h2: bool) -> Served {
        let ctx = Context {
            enforcer: self.enforcer.clone(),
            recorder: self.recorder.clone(),
            principal: Arc::new(Principal {
                job_id: "job".to_owned(),
                ..Principal::default()
            }),
            process: Process::default(),
            destination: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            hostname: None,
            connection_id: "connection".into(),
            job_id: Some("job".into()),
            config: HttpConfig {
                max_header_size: 4096,
                ..HttpConfig::default()
            },
            metrics: self.metrics.http.clone(),
            version: if h2 { Detect::Http2 } else { Detect::Http1 },
            https: None,
            approvals: self.approvals.clone(),
            target: "api".to_owned(),
        };
        self.runtime.block_on(async {
            let (client, proxy_client) = tokio::io::duplex(64 * 1024);
            let (proxy_upstream, origin) = tokio::io::duplex(64 * 1024);
            tokio::spawn(origin_serve(origin, h2));
            let progress = Progress::default();
            let session = async {
                let (mut reader, mut writer) = tokio::io::split(client);
                let write = async {
                    let _ = writer.write_all(input).await;
                    let _ = writer.shutdown().await;
                };
                let mut answer = Vec::new();
                let read = reader.read_to_end(&mut answer);
                let carried = run(proxy_client, proxy_upstream, ctx, &progress);
                let ((), _, result) = tokio::join!(write, read, carried);
                Served {
                    answer,
                    result: result.map_err(|e: HttpError| e.to_string()),
                }
            };
            tokio::time::timeout(LIMIT, session)
                .await
                .unwrap_or_else(|_| Served {
                    answer: Vec::new(),
                    result: Err("timed out".to_owned()),
                })
        })
    }
}

/// The destination: `200 ok` to every request, in the version the proxy speaks.
async fn origin_serve(io: tokio::io::DuplexStream, h2: bool) {
    let service = hyper::service::service_fn(|_request: hyper::Request<Incoming>| async {
        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let io = TokioIo::new(io);
    let _ = if h2 {
        server::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        server::http1::Builder::new()
            .serve_connection(io, service)
            .await
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(served: &Served) -> String {
        String::from_utf8_lossy(&served.answer).into_owned()
    }

    #[test]
    fn requests_are_answered_refused_and_malformed_ones_end_the_connection() {
        let harness = Harness::new().unwrap();
        let served = harness.serve(
            b"GET /a HTTP/1.1\r\nHost: h\r\nX-Run: 1\r\n\r\n\
              GET /admin/x HTTP/1.1\r\nHost: h\r\nX-Run: 1\r\n\r\n\
              DELETE /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
              GET /c HTTP/1.1\r\nHost: h\r\nX-Run: 1\r\n\r\n",
            false,
        );
        let answer = text(&served);
        let statuses: Vec<&str> = answer
            .split("HTTP/1.1 ")
            .skip(1)
            .filter_map(|answer| answer.lines().next())
            .collect();
        assert_eq!(
            statuses,
            ["200 OK", "403 Forbidden", "403 Forbidden", "200 OK"],
            "{answer}"
        );
        assert!(answer.contains("\"no-admin\""), "{answer}");
        let chunked = harness.serve(
            b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nnope\r\n",
            false,
        );
        assert!(
            !text(&chunked).contains("200 OK"),
            "a broken chunked body is not answered as a request: {chunked:?}"
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "x".repeat(5000)
        );
        let served = harness.serve(big.as_bytes(), false);
        assert!(text(&served).starts_with("HTTP/1.1 431"), "{served:?}");
        let garbage = harness.serve(b"\x00\x01\x02 not http at all\r\n\r\n", false);
        assert!(!text(&garbage).contains("200 OK"), "{garbage:?}");
        assert!(
            garbage.result.is_err(),
            "a protocol error ends it: {garbage:?}"
        );
        let h2 = harness.serve(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00", true);
        assert!(h2.answer.len() < 1024, "{h2:?}");
    }
}
