//! One followed HTTP connection with everything it needs around it (an enforcer over an
//! `http:request` and `mcp:call` policy, a recorder), driven over in-memory streams: the
//! client's bytes as given, and a destination that answers every request `200 ok` (or,
//! for MCP, with the bytes given). The unit tests' connection and the `http` and `mcp`
//! fuzz targets'.
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
@id("mcp-endpoint")
permit(principal, action == Action::"http:request", resource)
when { context.method == "POST" && context.path == "/mcp" };
@id("tools")
permit(principal, action == Action::"mcp:call", resource)
when { context.tool != "drop" };
@id("no-users")
forbid(principal, action == Action::"mcp:call", resource)
when { context.arguments.table == "users" };
"#;

/// How long one input may take.
const LIMIT: Duration = Duration::from_secs(5);

pub struct Harness {
    enforcer: Arc<Enforcer>,
    approvals: Arc<crate::approvals::Approvals>,
    mcp: Arc<crate::mcp::Mcp>,
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
        let mcp = Arc::new(crate::mcp::Mcp::new(
            crate::mcp::McpConfig {
                max_message_size: 64 * 1024,
                ..crate::mcp::McpConfig::default()
            },
            metrics.mcp.clone(),
            recorder.clone(),
        ));
        Ok(Self {
            enforcer: Arc::new(enforcer),
            approvals,
            mcp,
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
        self.serve_with(input, h2, Origin::Ok)
    }

    /// Serves one HTTP/1.1 connection to an MCP target whose client POSTs `body` to
    /// `/mcp` (twice, the second time after the first answer) and whose server answers
    /// each POST with `answer`, as an SSE stream when `sse`, else as JSON, in chunks cut
    /// where `cuts` says.
    pub fn serve_mcp(&self, body: &[u8], answer: &[u8], sse: bool, cuts: &[usize]) -> Served {
        let mut input = Vec::new();
        for _ in 0..2 {
            input.extend_from_slice(
                format!(
                    "POST /mcp HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\
                     Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            input.extend_from_slice(body);
        }
        let chunks = cut(answer, cuts);
        self.serve_with(&input, false, Origin::Mcp { chunks, sse })
    }

    fn serve_with(&self, input: &[u8], h2: bool, origin: Origin) -> Served {
        let mcp = matches!(origin, Origin::Mcp { .. });
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
            mcp: mcp.then(|| self.mcp.clone()),
            mcp_declared: mcp,
        };
        self.runtime.block_on(async {
            let (client, proxy_client) = tokio::io::duplex(64 * 1024);
            let (proxy_upstream, origin_io) = tokio::io::duplex(64 * 1024);
            tokio::spawn(origin_serve(origin_io, h2, origin));
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

/// What the destination answers.
#[derive(Clone)]
enum Origin {
    /// `200 ok` to every request.
    Ok,
    /// These chunks, as an SSE stream or JSON.
    Mcp { chunks: Vec<Bytes>, sse: bool },
}

/// `bytes` cut at `cuts` (offsets, taken modulo its length).
fn cut(bytes: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| c % bytes.len().max(1))
        .chain([0, bytes.len()])
        .collect();
    at.sort_unstable();
    at.dedup();
    at.windows(2)
        .map(|w| Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
        .collect()
}

/// The destination, in the version the proxy speaks.
async fn origin_serve(io: tokio::io::DuplexStream, h2: bool, origin: Origin) {
    let service = hyper::service::service_fn(move |_request: hyper::Request<Incoming>| {
        let origin = origin.clone();
        async move {
            let response = match origin {
                Origin::Ok => hyper::Response::new(http_body_util::Either::Left(Full::new(
                    Bytes::from_static(b"ok"),
                ))),
                Origin::Mcp { chunks, sse } => {
                    let frames = chunks
                        .into_iter()
                        .map(|c| Ok::<_, Infallible>(http_body::Frame::data(c)));
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    let mut response = hyper::Response::new(http_body_util::Either::Right(body));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(if sse {
                            "text/event-stream"
                        } else {
                            "application/json"
                        }),
                    );
                    response
                }
            };
            Ok::<_, Infallible>(response)
        }
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
