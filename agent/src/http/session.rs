//! One followed HTTP connection: hyper serves the job's side, each request is decided
//! and recorded here, and an allowed one goes to the destination over the connection's
//! own upstream leg, by a hyper client of the client's version.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Either, Full, Limited, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, client::conn as client, server::conn as server};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinHandle,
};
use tollgate_policy::{Decision, Principal, Process, Subject};

pub(super) use super::record::Pending;
use super::record::statement;
use super::{
    HttpConfig,
    body::{Counted, Ended},
    detect::Detect,
    io::Counting,
    request,
};
use crate::{
    enforce::Enforcer,
    proxy::handler::Progress,
    record::{DecisionLabel, Recorder, now_ms},
};

/// The most of a refused request's body read (and dropped) so that its connection
/// stays usable; a larger one closes the connection after the 403.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// How long a refused request's body may take to arrive.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Why a followed HTTP connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP with the destination: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("HTTP from the client: {0}")]
    Client(#[source] hyper::Error),
    #[error(transparent)]
    Tls(#[from] super::tls::HttpsError),
    #[error("{0}")]
    RequestBody(String),
}

/// What a followed connection's requests are decided and recorded with.
pub struct Context {
    pub enforcer: Arc<Enforcer>,
    pub recorder: Recorder,
    pub principal: Arc<Principal>,
    pub process: Process,
    pub destination: SocketAddr,
    /// The name the job resolved the destination from, if it did.
    pub hostname: Option<String>,
    pub connection_id: Arc<str>,
    pub job_id: Option<Arc<str>>,
    pub config: HttpConfig,
    pub metrics: Arc<super::metrics::HttpMetrics>,
    /// HTTP/1 or HTTP/2, as the client's first bytes said (where TLS is not
    /// terminated).
    pub version: Detect,
    /// The target's `tls = "terminate"`: the client opened with TLS, terminated here.
    pub https: Option<Arc<super::tls::Https>>,
    /// Where a request that needs approval asks for it.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// The catalog target's name, for the approval request.
    pub target: String,
    /// MCP, where it is followed on this connection (`[mcp] enabled`, and the target
    /// declares `protocol = "mcp"` or a policy names `mcp:call`).
    pub mcp: Option<Arc<crate::mcp::Mcp>>,
    /// The target declares `protocol = "mcp"`: every POST is JSON-RPC.
    pub mcp_declared: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A request's body as forwarded: the client's as it streams, or one read whole (MCP).
type Upward = Counted<Either<Incoming, Full<Bytes>>>;

/// The destination's side: one connection, shared by the client's requests.
enum Sender {
    /// HTTP/1: one request at a time, in order (as the client's side serves them).
    H1(tokio::sync::Mutex<client::http1::SendRequest<Upward>>),
    H2(client::http2::SendRequest<Upward>),
}

impl Sender {
    async fn send(&self, request: Request<Upward>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                let mut sender = sender.clone();
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }
}

/// The state the requests of one connection share.
pub(super) struct Shared {
    pub(super) ctx: Context,
    /// `http`, or `https` where the agent terminates TLS.
    scheme: &'static str,
    pub(super) h2: bool,
    sender: Sender,
    pub(super) seq: AtomicU64,
    /// Requests recorded, and of them refused: the connection's counts.
    pub(super) requests: AtomicU64,
    pub(super) refused: AtomicU64,
    /// An upgraded connection's (WebSocket, CONNECT) relay, which the session waits for.
    upgraded: Mutex<Option<JoinHandle<()>>>,
    /// A request that may upgrade the connection was sent.
    upgrading: std::sync::atomic::AtomicBool,
    /// The connection's decisions of requests seen before, under this policy.
    decisions: super::decided::Decisions,
}

/// Adds what the session carried to the connection's progress however it ends
/// (returned, or dropped by a revocation).
struct Tally<'a> {
    progress: &'a Progress,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    shared: Option<Arc<Shared>>,
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.progress.up(self.up.load(Ordering::Relaxed));
        self.progress.down(self.down.load(Ordering::Relaxed));
        if let Some(shared) = &self.shared {
            self.progress.statements_add(
                shared.requests.load(Ordering::Relaxed),
                shared.refused.load(Ordering::Relaxed),
            );
        }
    }
}

/// Serves the connection until the client or the destination closes it.
pub async fn run<C, U>(
    client: C,
    upstream: U,
    ctx: Context,
    progress: &Progress,
) -> Result<(), HttpError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut tally = Tally {
        progress,
        up: Arc::default(),
        down: Arc::default(),
        shared: None,
    };
    // The client's wire bytes, under TLS where the agent terminates it.
    let client = Counting::new(client, tally.up.clone(), tally.down.clone());
    match ctx.https.clone() {
        Some(https) => {
            let terminated = super::tls::terminate(&https, client, upstream, ctx.destination)
                .await
                .map_err(HttpError::Tls)?;
            let version = terminated.version;
            let (client, upstream) = (terminated.client, terminated.upstream);
            carry(client, upstream, version, "https", ctx, &mut tally).await
        }
        None => {
            let version = ctx.version;
            carry(client, upstream, version, "http", ctx, &mut tally).await
        }
    }
}

/// [`run`] on the (plain or TLS) streams, in the HTTP version both sides speak.
async fn carry<C, U>(
    client: C,
    upstream: U,
    version: Detect,
    scheme: &'static str,
    ctx: Context,
    tally: &mut Tally<'_>,
) -> Result<(), HttpError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let progress = tally.progress;
    let h2 = version == Detect::Http2;
    progress.followed(if h2 { "http/2" } else { "http/1.1" });
    // The destination's connection ended (it closed an idle keep-alive connection, say):
    // the client's side is closed too, once its requests in flight are answered, so
    // that its next request opens a new connection as it would directly.
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    let sender = if h2 {
        let (sender, connection) = client::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(header_limit(&ctx.config))
            .handshake(upstream)
            .await
            .map_err(HttpError::Upstream)?;
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::debug!("HTTP/2 connection to the destination ended"),
                Err(error) => tracing::debug!(%error, "HTTP/2 connection to the destination"),
            }
            drop(closed_tx);
        });
        Sender::H2(sender)
    } else {
        let (sender, connection) = client::http1::Builder::new()
            .preserve_header_case(true)
            .max_buf_size(buffer_limit(&ctx.config))
            .handshake(upstream)
            .await
            .map_err(HttpError::Upstream)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "HTTP/1 connection to the destination");
            }
            drop(closed_tx);
        });
        Sender::H1(tokio::sync::Mutex::new(sender))
    };
    let shared = Arc::new(Shared {
        ctx,
        scheme,
        h2,
        sender,
        seq: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        upgraded: Mutex::new(None),
        upgrading: std::sync::atomic::AtomicBool::new(false),
        decisions: super::decided::Decisions::default(),
    });
    tally.shared = Some(shared.clone());
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |request| {
            let shared = shared.clone();
            async move { serve(&shared, request).await }
        })
    };
    let served = if h2 {
        let connection = server::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(header_limit(&shared.ctx.config))
            .serve_connection(client, service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            served = connection.as_mut() => served,
            _ = closed => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    } else {
        let connection = server::http1::Builder::new()
            .timer(TokioTimer::new())
            // A job's client may keep a connection idle as long as the destination lets
            // it; only the head's size is bounded.
            .header_read_timeout(None)
            .half_close(true)
            .preserve_header_case(true)
            // Room past the limit, so that a head over it is read and answered (431).
            .max_buf_size(buffer_limit(&shared.ctx.config))
            .serve_connection(client, service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            served = connection.as_mut() => served,
            // An upgraded destination connection ends its HTTP too; the client's side
            // is upgraded with it.
            _ = closed, if !shared.upgrading.load(Ordering::Relaxed) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    let relay = shared
        .upgraded
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(relay) = relay {
        let _ = relay.await;
    }
    served.map_err(HttpError::Client)
}

fn header_limit(config: &HttpConfig) -> u32 {
    u32::try_from(config.max_header_size.saturating_mul(2)).unwrap_or(u32::MAX)
}

/// hyper's HTTP/1 read buffer: twice the head limit, at least hyper's minimum.
fn buffer_limit(config: &HttpConfig) -> usize {
    config.max_header_size.saturating_mul(2).max(8192)
}

/// Decides one request, and answers it: refused here, or from the destination. An error
/// closes the client's connection (HTTP/1) or resets its stream (HTTP/2), as the
/// destination's failure would have.
async fn serve(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, HttpError> {
    let ctx = &shared.ctx;
    let started = Instant::now();
    let started_at = now_ms();
    let version = request.version();
    let (parts, body) = request.into_parts();
    if head_size(&parts) > ctx.config.max_header_size {
        return Ok(too_large(shared, &parts, version, started, started_at));
    }
    let policy = ctx.enforcer.snapshot();
    let seen = request::for_policy(&parts, shared.scheme, policy.http_headers());
    let subject = Subject::new(&ctx.principal, &ctx.process, ctx.destination)
        .with_hostname(ctx.hostname.as_deref());
    let mut decision = shared.decisions.decide(&policy, subject, &seen);
    let mut approval = None;
    if decision.enforced && decision.effect == tollgate_policy::Effect::RequireApproval {
        // Held here, inside the client's own request, until a reviewer decides (or a
        // grant covers it); a client that goes away drops the wait, abandoning it.
        let outcome = super::approval::hold(shared, &seen, &decision, &policy).await;
        decision.effect = if outcome.allows() {
            tollgate_policy::Effect::Allow
        } else {
            tollgate_policy::Effect::Deny
        };
        decision.reason = outcome.reason();
        approval = Some(outcome.link().to_owned());
    }
    let mut record = Pending {
        shared: shared.clone(),
        record: statement(shared, &seen, &decision, version, started_at),
        started,
    };
    record.record.approval = approval;
    if decision.blocks() {
        // The body is read (up to a limit) so that the connection stays usable.
        let limited = Limited::new(body, DRAIN_LIMIT);
        let drained = tokio::time::timeout(DRAIN_TIME, limited.collect()).await;
        let (read, whole) = match drained {
            Ok(Ok(collected)) => (collected.to_bytes().len() as u64, true),
            _ => (0, false),
        };
        let mut response = request::refused(&decision, &record.record.id, version);
        if !whole && version < Version::HTTP_2 {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        let size = response.body().size_hint().exact().unwrap_or(0);
        record.finish(Some(403), read, size, None);
        return Ok(response.map(|b| b.map_err(|never| match never {}).boxed_unsync()));
    }
    if super::mcp::wants(shared, &parts) {
        return super::mcp::serve(shared, parts, body, record).await;
    }
    let answering = super::mcp::Answering::for_stream(shared, &parts);
    forward(shared, parts, Either::Left(body), record, answering).await
}

/// Sends an allowed request to the destination and answers the client with its
/// response (read by MCP where `answering` says so); `record` is written once the
/// response's body has passed.
pub(super) async fn forward(
    shared: &Arc<Shared>,
    mut parts: http::request::Parts,
    body: Either<Incoming, Full<Bytes>>,
    record: Pending,
    answering: Option<super::mcp::Answering>,
) -> Result<Response<Body>, HttpError> {
    let version = parts.version;
    request::strip_hop_by_hop(&mut parts.headers);
    let up = Arc::new(AtomicU64::new(0));
    let mut request = Request::from_parts(parts, Counted::new(body, up.clone(), None));
    let upgrade = (version < Version::HTTP_2)
        .then(|| hyper::upgrade::on(&mut request))
        .filter(|_| {
            request.headers().contains_key(http::header::UPGRADE)
                || request.method() == http::Method::CONNECT
        });
    if upgrade.is_some() {
        shared.upgrading.store(true, Ordering::Relaxed);
    }
    let mut response = match shared.sender.send(request).await {
        Ok(response) => response,
        Err(error) => {
            let why = format!("the destination did not answer: {error}");
            record.finish(None, up.load(Ordering::Relaxed), 0, Some(why));
            return Err(HttpError::Upstream(error));
        }
    };
    let status = response.status();
    if let Some(client_side) = upgrade
        && (status == http::StatusCode::SWITCHING_PROTOCOLS
            || (status.is_success() && record.record.sql.starts_with("CONNECT ")))
    {
        let server_side = hyper::upgrade::on(&mut response);
        let relay = tokio::spawn(async move {
            if let (Ok(a), Ok(b)) = tokio::join!(client_side, server_side) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            }
        });
        *shared.upgraded.lock().unwrap_or_else(|e| e.into_inner()) = Some(relay);
    }
    let down = Arc::new(AtomicU64::new(0));
    let on_end = Box::new(move |bytes: u64, ended: Ended| {
        let error = match ended {
            Ended::Complete => None,
            Ended::Failed(why) => Some(format!("the answer's body failed: {why}")),
            Ended::Dropped => Some("the client did not read the whole answer".to_owned()),
        };
        record.finish(
            Some(status.as_u16()),
            up.load(Ordering::Relaxed),
            bytes,
            error,
        );
    });
    // A JSON answer of a target that configures masking is masked.
    let masked = if answering.is_none() && super::masking::is_json(response.headers()) {
        let policy = shared.ctx.enforcer.snapshot();
        policy
            .json_masking(&shared.ctx.target)
            .map(|mode| (mode, policy))
    } else {
        None
    };
    Ok(match (answering, masked) {
        (Some(answering), _) => answering
            .respond(response)
            .await
            .map(|body| Counted::new(body, down, Some(on_end)).boxed_unsync()),
        (None, Some((mode, policy))) => {
            super::masking::mask(response, &policy.masking(), &shared.ctx.target, mode)
                .await
                .map(|body| Counted::new(body, down, Some(on_end)).boxed_unsync())
        }
        (None, None) => response.map(|body| {
            Counted::new(body, down, Some(on_end))
                .map_err(BoxError::from)
                .boxed_unsync()
        }),
    })
}

/// The size of a request's head as sent: its target and its header lines.
fn head_size(parts: &http::request::Parts) -> usize {
    parts.uri.to_string().len()
        + parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
}

/// The answer to a request whose head is past `[http] max_header_size`: 431, recorded
/// as malformed, and the connection closes.
fn too_large(
    shared: &Arc<Shared>,
    parts: &http::request::Parts,
    version: Version,
    started: Instant,
    started_at: i64,
) -> Response<Body> {
    let seen = request::for_policy(parts, shared.scheme, &[]);
    let decision = Decision::deny(format!(
        "the request's head is larger than [http] max_header_size ({} bytes): refused",
        shared.ctx.config.max_header_size
    ));
    let mut record = statement(shared, &seen, &decision, version, started_at);
    record.decision = DecisionLabel::Malformed;
    let mut response = request::refused(&decision, &record.id, version);
    *response.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    if version < Version::HTTP_2 {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    let size = response.body().size_hint().exact().unwrap_or(0);
    Pending {
        shared: shared.clone(),
        record,
        started,
    }
    .finish(Some(431), 0, size, Some(decision.reason));
    response.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}
