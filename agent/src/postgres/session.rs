//! One PostgreSQL session, relayed message by message. Each statement is classified,
//! decided by policy and recorded. A denied statement never reaches the server as
//! itself: the server gets a statement that fails to parse instead, so that client and
//! server agree on the transaction state and the error recovery of the extended
//! protocol, and the client gets Tollgate's ErrorResponse (SQLSTATE 42501) in place of
//! the server's.
use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::oneshot,
};
use tollgate_pgwire::{self as wire, WireError, backend, frontend};
use tollgate_policy::{Decision, Effect, Principal, Process, SqlContext, Subject};

use super::{
    classify::{self, Kind},
    decided::Decided,
    encoding::ClientEncoding,
    io::Io,
    mask::{self, MaskingConfig, ResultsMasking, types::TextShape},
    tls::UpstreamTls,
};
use crate::{
    enforce::Enforcer,
    record::{RecordEvent, Recorder, StatementRecord, now_ms},
};

/// What the server gets instead of a denied statement: it cannot parse, so it fails in
/// the server exactly where the denied statement would have run.
const DENIED_SQL: &str = "TOLLGATE_DENIED_BY_POLICY";
/// The statement name of the failing Parse that stands in for a denied Execute (the
/// server never creates it: the Parse fails).
const DENIED_STATEMENT: &[u8] = b"tollgate_denied_by_policy";
/// SQLSTATE insufficient_privilege.
const DENIED_SQLSTATE: &str = "42501";
/// SQLSTATE protocol_violation.
const PROTOCOL_VIOLATION: &str = "08P01";
const READ_CHUNK: usize = 16 * 1024;

/// The session's startup parameters.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    /// `startup`, `cancel`, or `none` (the client closed before a startup message).
    pub kind: &'static str,
    /// Tollgate terminated the client's TLS.
    pub client_tls: bool,
    /// Tollgate's connection to the server is TLS.
    pub server_tls: bool,
}

pub struct Outcome {
    pub up: u64,
    pub down: u64,
    pub error: Option<String>,
    pub startup: Startup,
    pub revoked: Option<Decision>,
}

/// What decides and records the session's statements.
pub struct Context {
    pub enforcer: Arc<Enforcer>,
    pub recorder: Recorder,
    pub principal: Arc<Principal>,
    pub process: Process,
    pub destination: SocketAddr,
    pub connection_id: Arc<str>,
    pub job_id: Option<Arc<str>>,
    pub max_message: usize,
    pub tls: Arc<super::tls::Tls>,
    pub metrics: Arc<crate::metrics::PostgresMetrics>,
    /// The catalog target's name (masking rules can be scoped to it).
    pub target: String,
    /// The client opened with a TLS ClientHello (`sslnegotiation=direct`), not with an
    /// SSLRequest.
    pub direct_tls: bool,
    /// The name the job resolved the destination from, if it did.
    pub hostname: Option<String>,
}

impl Context {
    /// Who the session's decisions are about.
    fn subject(&self) -> Subject<'_> {
        Subject::new(&self.principal, &self.process, self.destination)
            .with_hostname(self.hostname.as_deref())
    }
}

/// Why one direction of the relay stopped early.
struct Ended {
    message: String,
    /// Tollgate's own error for the client, delivered before an orderly close (a
    /// protocol violation), instead of resetting the client.
    to_client: Option<Vec<u8>>,
}

impl Ended {
    /// A protocol violation by `side` (`client` or `server`): the client gets a
    /// protocol_violation error, then the session closes in order.
    fn violation(side: &str, what: &str, error: impl std::fmt::Display) -> Self {
        Self {
            message: format!("protocol violation by the {side}: {error}"),
            to_client: Some(backend::error_response(
                PROTOCOL_VIOLATION,
                &format!("tollgate: {what} message from the {side}: {error}"),
                None,
                None,
            )),
        }
    }
}

impl From<String> for Ended {
    fn from(message: String) -> Self {
        Self {
            message,
            to_client: None,
        }
    }
}

/// What the server's answers to one client message belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A simple Query: everything up to ReadyForQuery.
    Query,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// FunctionCall: its result, then ReadyForQuery.
    Function,
}

struct Pending {
    expect: Expect,
    /// Tollgate's ErrorResponse, sent in place of the server's.
    denial: Option<Vec<u8>>,
    /// Statements this message runs, in order (a Query may have several).
    records: VecDeque<StatementRecord>,
    /// Describe: what is described (`S` or `P`, name).
    described: Option<(u8, Vec<u8>)>,
    /// Execute: how to mask its rows, when the columns are already known.
    plan: Option<Plan>,
    /// Execute: where its columns can be learned later (a Describe answered after it
    /// was sent, as pipelining clients do).
    execute: Option<ExecuteInfo>,
}

#[derive(Debug, Clone)]
struct ExecuteInfo {
    portal: Vec<u8>,
    statement: Vec<u8>,
    formats: Vec<i16>,
    tables: Vec<String>,
}

/// A result column: name and type.
#[derive(Debug, Clone)]
struct ColumnInfo {
    name: String,
    type_oid: u32,
    format: i16,
}

/// What happens to each column of the rows of one result.
#[derive(Debug, Clone, Default)]
struct Plan {
    columns: Vec<ColumnMask>,
    /// The configuration the plan was made from (a reload does not change it midway).
    masking: Arc<MaskingConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ColumnMask {
    Keep,
    /// A masking rule matched: the value is replaced (None: NULL).
    Replace(Option<Vec<u8>>),
    /// A value of a text-like type, in a session whose results the detectors read.
    Detect(TextShape),
}

impl Plan {
    /// How to mask a result's rows, or None when nothing in it is masked. `detect`:
    /// the detectors read the session's results too.
    fn new(
        masking: &Arc<MaskingConfig>,
        detect: bool,
        scope: &mask::Scope<'_>,
        tables: &[String],
        columns: &[ColumnInfo],
        formats: &[i16],
    ) -> Option<Self> {
        if !masking.enabled || (masking.rules.is_empty() && !detect) {
            return None;
        }
        let format_of = |i: usize| match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats.get(i).copied().unwrap_or(0),
        };
        let columns: Vec<ColumnMask> = columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let format = format_of(i);
                if masking.masks_column(scope, tables, &column.name) {
                    ColumnMask::Replace(mask::types::column_replacement(column.type_oid, format))
                } else if let Some(shape) = mask::types::text_shape(column.type_oid, format)
                    && detect
                    && !masking.detectors.is_empty()
                {
                    ColumnMask::Detect(shape)
                } else {
                    ColumnMask::Keep
                }
            })
            .collect();
        columns
            .iter()
            .any(|c| *c != ColumnMask::Keep)
            .then(|| Self {
                columns,
                masking: masking.clone(),
            })
    }

    /// The row masked, or None when nothing changed.
    fn apply(&self, values: &[Option<&[u8]>], encoding: &ClientEncoding) -> Option<Vec<u8>> {
        let mut changed = false;
        let mut masked: Vec<Option<Vec<u8>>> = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let out = match (self.columns.get(i), value) {
                (Some(ColumnMask::Replace(replacement)), Some(_)) => {
                    changed = true;
                    replacement.clone()
                }
                (Some(ColumnMask::Detect(shape)), Some(bytes)) => {
                    match self.masking.redact_value(bytes, *shape, encoding) {
                        Some(redacted) => {
                            changed = true;
                            Some(redacted)
                        }
                        None => Some(bytes.to_vec()),
                    }
                }
                (_, value) => value.map(<[u8]>::to_vec),
            };
            masked.push(out);
        }
        changed.then(|| {
            let refs: Vec<Option<&[u8]>> = masked.iter().map(|v| v.as_deref()).collect();
            backend::data_row(&refs)
        })
    }
}

struct Prepared {
    sql: String,
    statements: Arc<Vec<classify::Statement>>,
    decision: Arc<Decided>,
    /// The policy generation `decision` was made under; an Execute after a reload
    /// decides again.
    generation: u64,
    /// From a Describe of the statement.
    columns: Option<Vec<ColumnInfo>>,
}

/// How long a statement waits for its record under `recording.durable`.
const DURABLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A portal: its statement's name, its parameters as recorded, its result formats.
type Portal = (Vec<u8>, Vec<String>, Vec<i16>);

#[derive(Default)]
struct State {
    pending: VecDeque<Pending>,
    prepared: HashMap<Vec<u8>, Prepared>,
    /// Portal → (statement name, parameters as recorded, result formats).
    portals: HashMap<Vec<u8>, Portal>,
    /// Columns of a portal, from a Describe of it.
    portal_columns: HashMap<Vec<u8>, Vec<ColumnInfo>>,
    /// The session's client encoding, as the startup asked and the server reports.
    encoding: ClientEncoding,
    /// The detectors read this session's results too (`results = "detect"`).
    detect_results: bool,
    /// How the rows now arriving are masked.
    plan: Option<Plan>,
    /// The masking configuration in force, taken again after each reload.
    masking: Arc<MaskingConfig>,
    /// This job is exempt from masking (policy `mask:exempt`), as of `generation`.
    exempt: bool,
    /// A text-format COPY TO is sending rows.
    copy_out_text: bool,
    /// Tollgate terminated the client's TLS: channel binding to the server cannot work.
    client_tls: bool,
    /// Set after an error in the extended protocol: the server skips to Sync.
    skipping: bool,
    seq: u64,
    /// The session's database and user, as its records share them.
    database: Arc<str>,
    user: Arc<str>,
    /// Decisions by (action, tables), until the next reload.
    decisions: HashMap<(&'static str, Arc<[String]>), Arc<Decided>>,
    generation: u64,
    /// `recording.durable`: statements decided in the client's latest bytes, whose rows
    /// must be committed before those bytes go to the server.
    durable: bool,
    opened: Vec<StatementRecord>,
}

/// A buffer of bytes read from one side, from which whole messages are taken.
struct Inbox {
    buf: Vec<u8>,
    start: usize,
}

impl Inbox {
    fn new() -> Self {
        Self {
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
        }
    }

    /// Reads more; Ok(0) at EOF.
    async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > READ_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Into the spare capacity: no zeroing of a fresh chunk per read.
        self.buf.reserve(READ_CHUNK);
        reader.read_buf(&mut self.buf).await
    }

    /// The next whole message, if there is one.
    fn next(
        &mut self,
        tagged: bool,
        max: usize,
    ) -> Result<Option<std::ops::Range<usize>>, WireError> {
        let rest = &self.buf[self.start..];
        let len = if tagged {
            wire::tagged_len(rest, max)?
        } else {
            wire::startup_len(rest, max)?
        };
        Ok(len.map(|len| {
            let range = self.start..self.start + len;
            self.start += len;
            range
        }))
    }

    fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }
}

/// Relays a PostgreSQL session between `client` and `upstream`.
pub async fn run(
    client: TcpStream,
    mut upstream_tcp: TcpStream,
    ctx: &Context,
    revoke: Option<oneshot::Receiver<Decision>>,
) -> Outcome {
    let mut outcome = Outcome {
        up: 0,
        down: 0,
        error: None,
        startup: Startup {
            kind: "none",
            ..Startup::default()
        },
        revoked: None,
    };
    let mut sni: Option<String> = None;
    // The server's answer to our SSLRequest, once asked.
    let mut server_tls: Option<bool> = None;
    let mut client = if ctx.direct_tls {
        // As for SSLRequest: the client has TLS only if the server leg has it too.
        let agrees = ctx.tls.offers_client_tls()
            && ctx.tls.upstream_mode() != UpstreamTls::Disable
            && match request_tls(&mut upstream_tcp).await {
                Ok(agrees) => agrees,
                Err(error) => {
                    outcome.error = Some(format!("server: {error}"));
                    return outcome;
                }
            };
        if !agrees {
            // A direct-TLS client cannot be answered `N`: it is closed, on record.
            outcome.error = Some(
                "refused: direct TLS from the client, but no TLS to the server (postgres.tls)"
                    .to_owned(),
            );
            return outcome;
        }
        server_tls = Some(true);
        match accept_tls(client, ctx, false).await {
            Ok((io, name)) => {
                sni = name;
                io
            }
            Err(error) => {
                outcome.error = Some(format!("client TLS: {error}"));
                return outcome;
            }
        }
    } else {
        Io::Plain(client)
    };
    // The startup phase: untagged messages from the client.
    let mut inbox = Inbox::new();
    let startup = loop {
        match inbox.next(false, ctx.max_message) {
            Ok(Some(range)) => {
                let msg = inbox.buf[range].to_vec();
                match frontend::parse_startup(&msg) {
                    Ok(frontend::Startup::SslRequest)
                        if ctx.tls.offers_client_tls() && !client.is_tls() =>
                    {
                        // Bytes after SSLRequest, before our answer, would be spliced
                        // into the TLS session: refuse them (CVE-2021-23214).
                        if !inbox.is_empty() {
                            let error = WireError::Malformed {
                                what: "SSLRequest",
                                detail: "data sent before the server's answer",
                            };
                            protocol_error(&mut client, &error).await;
                            outcome.error =
                                Some(format!("malformed startup from the client: {error}"));
                            return outcome;
                        }
                        // The client gets TLS only when the server leg has it too: a
                        // client that requires TLS must not be told it has it while
                        // its statements cross the network in plaintext. So ask the
                        // server first, and answer the client as the server answered.
                        let server_agrees = match server_tls {
                            Some(agrees) => agrees,
                            None if ctx.tls.upstream_mode() == UpstreamTls::Disable => false,
                            None => match request_tls(&mut upstream_tcp).await {
                                Ok(agrees) => {
                                    server_tls = Some(agrees);
                                    agrees
                                }
                                Err(error) => {
                                    outcome.error = Some(format!("server: {error}"));
                                    return outcome;
                                }
                            },
                        };
                        if !server_agrees {
                            if let Err(e) = client.write_all(b"N").await {
                                outcome.error = Some(format!("client: {e}"));
                                return outcome;
                            }
                            continue;
                        }
                        let accepted = match client {
                            Io::Plain(tcp) => accept_tls(tcp, ctx, true).await,
                            other => Ok((other, None)),
                        };
                        match accepted {
                            Ok((io, name)) => {
                                client = io;
                                sni = name;
                            }
                            Err(error) => {
                                outcome.error = Some(format!("client TLS: {error}"));
                                return outcome;
                            }
                        }
                    }
                    // GSS encryption is not offered, nor TLS when off: the client goes
                    // on in plaintext on loopback, or gives up if it requires encryption.
                    Ok(frontend::Startup::SslRequest | frontend::Startup::GssEncRequest) => {
                        if let Err(e) = client.write_all(b"N").await {
                            outcome.error = Some(format!("client: {e}"));
                            return outcome;
                        }
                    }
                    Ok(frontend::Startup::Cancel { .. }) => {
                        outcome.startup.kind = "cancel";
                        // The original server is the one to cancel on.
                        outcome.up += msg.len() as u64;
                        if let Err(e) = upstream_tcp.write_all(&msg).await {
                            outcome.error = Some(format!("server: {e}"));
                        }
                        let _ = upstream_tcp.shutdown().await;
                        let mut sink = [0u8; 64];
                        let _ = upstream_tcp.read(&mut sink).await;
                        return outcome;
                    }
                    Ok(startup @ frontend::Startup::Startup { .. }) => break (startup, msg),
                    Err(error) => {
                        protocol_error(&mut client, &error).await;
                        outcome.error = Some(format!("malformed startup from the client: {error}"));
                        return outcome;
                    }
                }
            }
            Ok(None) => match inbox.fill(&mut client).await {
                Ok(0) => return outcome,
                Ok(n) => outcome.up += n as u64,
                Err(e) => {
                    outcome.error = Some(format!("client: {e}"));
                    return outcome;
                }
            },
            Err(error) => {
                protocol_error(&mut client, &error).await;
                outcome.error = Some(format!("malformed startup from the client: {error}"));
                return outcome;
            }
        }
    };
    let (startup, startup_bytes) = startup;
    // Until the server reports it, the client's own `client_encoding` (if it asked for
    // one) says how to read what it sends.
    let encoding = startup
        .param("client_encoding")
        .and_then(ClientEncoding::from_name)
        .unwrap_or_default();
    let param = |name: &str| startup.param(name).map(|value| encoding.lossy(value));
    outcome.startup = Startup {
        user: param("user"),
        database: param("database").or_else(|| param("user")),
        application_name: param("application_name"),
        kind: "startup",
        client_tls: client.is_tls(),
        server_tls: false,
    };
    let mut upstream = match connect_tls(upstream_tcp, ctx, sni.as_deref(), server_tls).await {
        Ok(upstream) => upstream,
        Err(message) => {
            let response = backend::error_response(
                "08001",
                &format!("tollgate: cannot reach the server as configured: {message}"),
                None,
                None,
            );
            let _ = client.write_all(&response).await;
            let _ = client.shutdown().await;
            outcome.error = Some(format!("server TLS: {message}"));
            return outcome;
        }
    };
    if let Err(e) = write_flushed(&mut upstream, &startup_bytes).await {
        outcome.error = Some(format!("server: {e}"));
        return outcome;
    }
    // SCRAM with channel binding cannot pass through a TLS termination: a TLS client
    // that is not offered SCRAM-SHA-256-PLUS says "I could bind, but you cannot", and a
    // server on TLS then refuses it (downgrade protection). Under `prefer`, such a
    // session's server connection is made again in plaintext.
    let mut from_server = Inbox::new();
    if client.is_tls() && upstream.is_tls() && ctx.tls.upstream_mode() == UpstreamTls::Prefer {
        match offers_channel_binding(&mut upstream, &mut from_server, ctx.max_message).await {
            Ok(false) => {}
            Ok(true) => {
                let reconnected = match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    TcpStream::connect(ctx.destination),
                )
                .await
                {
                    Ok(Ok(mut tcp)) => tcp.write_all(&startup_bytes).await.map(|()| tcp),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(std::io::Error::other("timed out")),
                };
                match reconnected {
                    Ok(tcp) => {
                        tracing::info!(
                            connection = %ctx.connection_id,
                            "SCRAM over terminated TLS: the server connection is plaintext, so the server does not require channel binding"
                        );
                        upstream = Io::Plain(tcp);
                        from_server = Inbox::new();
                    }
                    Err(e) => {
                        outcome.error = Some(format!("server: reconnecting: {e}"));
                        return outcome;
                    }
                }
            }
            Err(e) => {
                outcome.error = Some(format!("server: {e}"));
                return outcome;
            }
        }
    }
    outcome.startup.server_tls = upstream.is_tls();
    let sql_context = SqlContext {
        database: outcome.startup.database.clone().unwrap_or_default(),
        user: outcome.startup.user.clone().unwrap_or_default(),
        tables: Vec::new(),
    };

    let mut state = State {
        client_tls: outcome.startup.client_tls,
        encoding,
        durable: ctx.recorder.is_durable(),
        database: sql_context.database.as_str().into(),
        user: sql_context.user.as_str().into(),
        ..State::default()
    };
    state.refresh(ctx, &sql_context);
    let state = Mutex::new(state);
    let up = std::sync::atomic::AtomicU64::new(0);
    let down = std::sync::atomic::AtomicU64::new(0);
    let error = {
        let (mut client_read, mut client_write) = tokio::io::split(&mut client);
        let (mut upstream_read, mut upstream_write) = tokio::io::split(&mut upstream);
        let to_server = client_to_server(
            &mut client_read,
            &mut upstream_write,
            inbox,
            &state,
            ctx,
            &sql_context,
            &up,
        );
        let to_client = server_to_client(
            &mut upstream_read,
            &mut client_write,
            from_server,
            &state,
            ctx,
            &sql_context,
            &down,
        );
        let revoke = async move {
            match revoke {
                Some(receiver) => receiver.await.ok(),
                None => None,
            }
        };
        tokio::pin!(to_server, to_client, revoke);
        let (mut up_done, mut down_done, mut revoke_done) = (false, false, false);
        loop {
            tokio::select! {
                result = &mut to_server, if !up_done => match result {
                    Ok(()) => up_done = true,
                    Err(e) => break Some(e),
                },
                result = &mut to_client, if !down_done => match result {
                    Ok(()) => down_done = true,
                    Err(e) => break Some(e),
                },
                decision = &mut revoke, if !revoke_done => match decision {
                    Some(decision) => {
                        outcome.revoked = Some(decision);
                        break Some(Ended::from("closed: revoked by a policy reload".to_owned()));
                    }
                    None => revoke_done = true,
                },
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    // Statements still waiting for an answer when the session ended.
    let leftover: Vec<StatementRecord> = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pending
        .drain(..)
        .flat_map(|p| p.records)
        .collect();
    for mut record in leftover {
        record
            .error
            .get_or_insert_with(|| "the session ended before the statement completed".to_owned());
        finish(ctx, record);
    }
    match &error {
        Some(Ended {
            to_client: Some(response),
            ..
        }) => {
            // A protocol violation: the client gets the error, then an orderly close.
            let _ =
                socket2::SockRef::from(upstream.tcp()).set_linger(Some(std::time::Duration::ZERO));
            let _ = client.write_all(response).await;
            let _ = client.shutdown().await;
        }
        Some(_) => {
            for stream in [client.tcp(), upstream.tcp()] {
                let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
            }
        }
        None => {}
    }
    outcome.up += up.into_inner();
    outcome.down = down.into_inner();
    outcome.error = error.map(|e| e.message);
    outcome
}

/// Reads the server's first message into `inbox` (it stays there to be relayed) and
/// says whether it offers SCRAM-SHA-256-PLUS.
async fn offers_channel_binding(
    upstream: &mut Io,
    inbox: &mut Inbox,
    max: usize,
) -> Result<bool, String> {
    loop {
        let start = inbox.start;
        match inbox.next(true, max) {
            Ok(Some(range)) => {
                let offers = matches!(
                    backend::parse(&inbox.buf[range]),
                    Ok(backend::Message::Authentication { code, data })
                        if code == backend::AUTH_SASL
                            && backend::sasl_mechanisms(data)
                                .is_ok_and(|m| m.iter().any(|m| m.ends_with("-PLUS")))
                );
                inbox.start = start;
                return Ok(offers);
            }
            Ok(None) => match inbox.fill(upstream).await {
                Ok(0) => return Err("closed during authentication".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            },
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Terminates the client's TLS with a certificate from the local CA for the name it asked
/// for and the address it connected to; first answers its SSLRequest with `S` unless it
/// opened with TLS directly.
async fn accept_tls(
    mut tcp: TcpStream,
    ctx: &Context,
    answer_ssl_request: bool,
) -> Result<(Io, Option<String>), String> {
    if answer_ssl_request {
        tcp.write_all(b"S").await.map_err(|e| e.to_string())?;
    }
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let config = ctx
        .tls
        .server_config(sni.as_deref(), ctx.destination.ip())
        .map_err(|e| e.to_string())?;
    let stream = start.into_stream(config).await.map_err(|e| e.to_string())?;
    Ok((Io::Accepted(Box::new(stream)), sni))
}

/// Sends the server an SSLRequest; true if it agreed to TLS.
async fn request_tls(tcp: &mut TcpStream) -> Result<bool, String> {
    tcp.write_all(&frontend::ssl_request())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(format!("unexpected answer {other:#x} to SSLRequest")),
    }
}

/// Negotiates TLS with the server as `[postgres.tls] upstream` says. `asked` is the
/// server's answer to an SSLRequest already made on `tcp`, if one was.
async fn connect_tls(
    mut tcp: TcpStream,
    ctx: &Context,
    sni: Option<&str>,
    asked: Option<bool>,
) -> Result<Io, String> {
    let mode = ctx.tls.upstream_mode();
    if mode == UpstreamTls::Disable {
        return Ok(Io::Plain(tcp));
    }
    let agrees = match asked {
        Some(agrees) => agrees,
        None => request_tls(&mut tcp).await?,
    };
    match agrees {
        true => {
            let name = match sni {
                Some(name) => rustls::pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|e| e.to_string())?,
                None => rustls::pki_types::ServerName::IpAddress(ctx.destination.ip().into()),
            };
            let connector = tokio_rustls::TlsConnector::from(ctx.tls.upstream_config());
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to the server: {e}"))?;
            Ok(Io::Connected(Box::new(stream)))
        }
        false if mode == UpstreamTls::Prefer => Ok(Io::Plain(tcp)),
        false => {
            Err("the server does not support TLS, and postgres.tls.upstream requires it".to_owned())
        }
    }
}

/// Writes `bytes` and flushes them: a TLS stream accepts what it cannot send at once into
/// its session, and sends it only on a later write or a flush.
async fn write_flushed<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

async fn protocol_error<W: AsyncWrite + Unpin>(client: &mut W, error: &WireError) {
    if let Some(response) = Ended::violation("client", "malformed", error).to_client {
        let _ = client.write_all(&response).await;
    }
    let _ = client.shutdown().await;
}

fn finish(ctx: &Context, mut record: StatementRecord) {
    ctx.metrics.statement(&record.kind, &record.decision);
    if let Some(started) = record.started.take() {
        record.duration_us = Some(started.elapsed().as_micros() as u64);
    }
    ctx.recorder
        .record(RecordEvent::Statement(Box::new(record)));
}

impl State {
    /// After a reload (and at the start): forgets cached decisions and takes the masking
    /// configuration and the `mask:exempt` permission in force. `sql` is the session's
    /// context (no tables).
    fn refresh(&mut self, ctx: &Context, sql: &SqlContext) {
        let generation = ctx.enforcer.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        self.decisions.clear();
        self.masking = ctx.enforcer.masking();
        self.detect_results = self.masking.enabled
            && ctx.enforcer.results_masking(ctx.destination) == ResultsMasking::Detect;
        self.exempt =
            self.masking.enabled && ctx.enforcer.permits(ctx.subject(), "mask:exempt", sql);
    }

    /// The statements of a Query or Parse text in the session's encoding. Text that
    /// does not decode is one statement of kind `unknown` (decided fail-closed), read
    /// lossily for the record; its bytes still go to the server as they are, for the
    /// server to judge.
    /// Returns the text as read, too.
    fn classify<'t>(&self, text: &'t [u8]) -> (Cow<'t, str>, Arc<Vec<classify::Statement>>) {
        match self.encoding.decode(text) {
            (text, true) => {
                let statements = classify::classify(&text);
                (text, statements)
            }
            (text, false) => {
                let statements = Arc::new(vec![classify::Statement {
                    text: text.as_ref().into(),
                    kind: Kind::Unknown,
                    tables: Arc::default(),
                    functions: Arc::default(),
                    error: Some(format!("not valid {} text", self.encoding.name())),
                }]);
                (text, statements)
            }
        }
    }

    /// The decision for a message's statements (the first blocking one wins), and the
    /// kind of the statement that decided it.
    fn decide(
        &mut self,
        ctx: &Context,
        sql: &SqlContext,
        statements: &[classify::Statement],
    ) -> (Arc<Decided>, Kind) {
        let mut allowed: Option<(Arc<Decided>, Kind)> = None;
        for statement in statements {
            let Some(action) = statement.kind.action() else {
                continue;
            };
            let key = (action, statement.tables.clone());
            let decided = match self.decisions.get(&key) {
                Some(decided) => decided.clone(),
                None => {
                    let context = SqlContext {
                        tables: statement.tables.to_vec(),
                        ..sql.clone()
                    };
                    let decided =
                        Decided::new(ctx.enforcer.decide_sql(ctx.subject(), action, &context));
                    if self.decisions.len() > 1024 {
                        self.decisions.clear();
                    }
                    self.decisions.insert(key, decided.clone());
                    decided
                }
            };
            if decided.decision.blocks() {
                return (decided, statement.kind);
            }
            if allowed.is_none() || decided.decision.effect != Effect::Allow {
                // In audit mode, a would-be denial is what gets recorded.
                allowed = Some((decided, statement.kind));
            }
        }
        allowed.unwrap_or_else(|| (Decided::transaction_control(), Kind::Transaction))
    }

    fn record(
        &mut self,
        ctx: &Context,
        statement: &classify::Statement,
        decided: &Decided,
        protocol: &'static str,
        params: Vec<String>,
    ) -> StatementRecord {
        self.seq += 1;
        let sql = match self.masking.redact(&statement.text) {
            Cow::Borrowed(_) => statement.text.clone(),
            Cow::Owned(masked) => masked.into(),
        };
        let record = StatementRecord {
            id: uuid::Uuid::now_v7().to_string(),
            connection_id: ctx.connection_id.clone(),
            job_id: ctx.job_id.clone(),
            seq: self.seq,
            started_at: now_ms(),
            started: Some(Instant::now()),
            duration_us: None,
            protocol: Cow::Borrowed(protocol),
            database: self.database.clone(),
            user: self.user.clone(),
            sql,
            params: params
                .iter()
                .map(|p| self.masking.redact(p).into_owned())
                .collect(),
            kind: Cow::Borrowed(statement.kind.as_str()),
            tables: statement.tables.clone(),
            functions: statement.functions.clone(),
            decision: Cow::Borrowed(decided.decision.label()),
            policy_ids: decided.policy_ids.clone(),
            reason: decided.reason.clone(),
            rows: None,
            sqlstate: None,
            error: statement
                .error
                .as_ref()
                .map(|e| format!("does not parse: {e}")),
            opened: self.durable,
        };
        if self.durable {
            self.opened.push(record.clone());
        }
        record
    }
}

/// Tollgate's ErrorResponse for a blocked statement, in the session's encoding.
fn denial(decision: &Decision, kind: Kind, encoding: &ClientEncoding) -> Vec<u8> {
    let who = if decision.policy_ids.is_empty() {
        "no policy permits it (default deny)".to_owned()
    } else {
        format!("policy {}", decision.policy_ids.join(", "))
    };
    let message = match decision.effect {
        Effect::RequireApproval => format!(
            "tollgate: this {} statement requires just-in-time approval ({who}), which is not available yet",
            kind.as_str()
        ),
        _ => format!("tollgate: {} statement denied: {who}", kind.as_str()),
    };
    backend::error_response_bytes(
        DENIED_SQLSTATE,
        &encoding.encode(&message),
        Some(&encoding.encode(&decision.reason)),
        Some(b"Tollgate decided this by policy; see `tollgate sessions show` for the record."),
    )
}

fn params_of(params: &[Option<&[u8]>], formats: &[i16], encoding: &ClientEncoding) -> Vec<String> {
    params
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let format = match formats.len() {
                0 => 0,
                1 => formats[0],
                _ => formats.get(i).copied().unwrap_or(0),
            };
            match value {
                None => "NULL".to_owned(),
                Some(bytes) if format == 0 => encoding.lossy(bytes),
                // A binary text value is its text in the client encoding: record it as
                // text (masked later).
                Some(bytes) => match encoding.decode(bytes) {
                    (text, true) if !text.is_empty() && !text.chars().any(char::is_control) => {
                        text.into_owned()
                    }
                    _ => format!("<binary, {} bytes>", bytes.len()),
                },
            }
        })
        .collect()
}

#[allow(
    clippy::too_many_arguments,
    reason = "one direction of the relay and what it shares"
)]
async fn client_to_server<R, W>(
    reader: &mut R,
    writer: &mut W,
    mut inbox: Inbox,
    state: &Mutex<State>,
    ctx: &Context,
    sql: &SqlContext,
    count: &std::sync::atomic::AtomicU64,
) -> Result<(), Ended>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(READ_CHUNK);
    loop {
        let (malformed, opened) = {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            // A reload applies from the client's next message on (an Execute of a
            // statement prepared before it included).
            state.refresh(ctx, sql);
            let malformed = loop {
                let range = match inbox.next(true, ctx.max_message) {
                    Ok(Some(range)) => range,
                    Ok(None) => break None,
                    Err(error) => break Some(error),
                };
                let msg = &inbox.buf[range];
                match frontend::parse(msg) {
                    Ok(parsed) => handle_frontend(&mut state, ctx, sql, parsed, msg, &mut out),
                    Err(error) => break Some(error),
                }
            };
            (malformed, std::mem::take(&mut state.opened))
        };
        // recording.durable: nothing goes to the server before its statements' rows are
        // committed (with those of every other session waiting now).
        if !opened.is_empty() {
            let started = opened
                .into_iter()
                .map(|record| RecordEvent::StatementStarted(Box::new(record)));
            if !ctx.recorder.commit(started, DURABLE_TIMEOUT).await {
                return Err(Ended::from(format!(
                    "recording.durable: the statements' records were not committed within \
                     {DURABLE_TIMEOUT:?}; the session is closed"
                )));
            }
        }
        if let Some(error) = malformed {
            // What was accepted before the bad message still goes to the server.
            let _ = write_flushed(writer, &out).await;
            return Err(Ended::violation("client", "malformed", error));
        }
        if !out.is_empty() {
            // Flushed, not only written: a TLS stream may keep records it could not send
            // at once, and nothing else writes before the next read.
            write_flushed(writer, &out)
                .await
                .map_err(|e| Ended::from(format!("client to server: {e}")))?;
            out.clear();
        }
        match inbox.fill(reader).await {
            Ok(0) => {
                if !inbox.is_empty() {
                    return Err(Ended::violation(
                        "client",
                        "truncated",
                        "the client closed in the middle of a message",
                    ));
                }
                let _ = writer.shutdown().await;
                return Ok(());
            }
            Ok(n) => {
                count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => return Err(Ended::from(format!("client to server: {e}"))),
        }
    }
}

fn handle_frontend(
    state: &mut State,
    ctx: &Context,
    sql: &SqlContext,
    message: frontend::Message<'_>,
    raw: &[u8],
    out: &mut Vec<u8>,
) {
    match message {
        frontend::Message::Query(text) => {
            let (_, statements) = state.classify(text);
            let (decision, kind) = state.decide(ctx, sql, &statements);
            let records = statements
                .iter()
                .map(|s| state.record(ctx, s, &decision, "simple", Vec::new()))
                .collect();
            let blocked = decision.blocks();
            state.pending.push_back(Pending {
                expect: Expect::Query,
                denial: blocked.then(|| denial(&decision, kind, &state.encoding)),
                records,
                described: None,
                plan: None,
                execute: None,
            });
            if blocked {
                out.extend_from_slice(&frontend::query(DENIED_SQL));
            } else {
                out.extend_from_slice(raw);
            }
        }
        frontend::Message::Parse {
            name, sql: text, ..
        } => {
            let (text, statements) = state.classify(text);
            let (decision, kind) = state.decide(ctx, sql, &statements);
            let blocked = decision.blocks();
            let mut records = VecDeque::new();
            if blocked {
                // It will never run: its record is written now, with the denial.
                for s in statements.iter() {
                    records.push_back(state.record(ctx, s, &decision, "extended", Vec::new()));
                }
                state.pending.push_back(Pending {
                    expect: Expect::Parse,
                    denial: Some(denial(&decision, kind, &state.encoding)),
                    records,
                    described: None,
                    plan: None,
                    execute: None,
                });
                state.prepared.remove(name);
                out.extend_from_slice(&frontend::parse_message(name, DENIED_SQL));
            } else {
                state.prepared.insert(
                    name.to_owned(),
                    Prepared {
                        sql: text.into_owned(),
                        statements,
                        decision,
                        generation: state.generation,
                        columns: None,
                    },
                );
                state.pending.push_back(Pending {
                    expect: Expect::Parse,
                    denial: None,
                    records,
                    described: None,
                    plan: None,
                    execute: None,
                });
                out.extend_from_slice(raw);
            }
        }
        frontend::Message::Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        } => {
            state.portal_columns.remove(portal);
            state.portals.insert(
                portal.to_owned(),
                (
                    statement.to_owned(),
                    params_of(&params, &param_formats, &state.encoding),
                    result_formats,
                ),
            );
            state.pending.push_back(simple(Expect::Bind));
            out.extend_from_slice(raw);
        }
        frontend::Message::Execute { portal, .. } => {
            if let Some(denied) = redecide_stale(state, ctx, sql, portal) {
                state.pending.push_back(denied);
                // A Parse the server rejects puts it into the state the client now
                // expects: an error, then everything skipped up to Sync.
                out.extend_from_slice(&frontend::parse_message(DENIED_STATEMENT, DENIED_SQL));
                return;
            }
            let mut records = VecDeque::new();
            let mut plan = None;
            if let Some((statement, params, formats)) = state.portals.get(portal).cloned()
                && let Some(prepared) = state.prepared.get(&statement)
            {
                if !state.exempt {
                    let columns = state
                        .portal_columns
                        .get(portal)
                        .map(|c| (c.clone(), c.iter().map(|c| c.format).collect()))
                        .or_else(|| prepared.columns.clone().map(|c| (c, formats.clone())));
                    let tables: Vec<String> = prepared
                        .statements
                        .iter()
                        .flat_map(|s| s.tables.iter().cloned())
                        .collect();
                    plan = columns.and_then(|(columns, formats)| {
                        Plan::new(
                            &state.masking,
                            state.detect_results,
                            &scope(ctx, sql),
                            &tables,
                            &columns,
                            &formats,
                        )
                    });
                }
                let statements = prepared.statements.clone();
                let decision = prepared.decision.clone();
                let sql_text = prepared.sql.clone();
                for s in statements.iter() {
                    let mut record = state.record(ctx, s, &decision, "extended", params.clone());
                    if statements.len() == 1 {
                        let text = sql_text.trim().trim_end_matches(';').trim_end();
                        record.sql = state.masking.redact(text).into();
                    }
                    records.push_back(record);
                }
            }
            let execute = state.portals.get(portal).map(|(statement, _, formats)| {
                let tables = state
                    .prepared
                    .get(statement)
                    .map(|p| {
                        p.statements
                            .iter()
                            .flat_map(|s| s.tables.iter().cloned())
                            .collect()
                    })
                    .unwrap_or_default();
                ExecuteInfo {
                    portal: portal.to_owned(),
                    statement: statement.clone(),
                    formats: formats.clone(),
                    tables,
                }
            });
            state.pending.push_back(Pending {
                expect: Expect::Execute,
                denial: None,
                records,
                described: None,
                plan,
                execute,
            });
            out.extend_from_slice(raw);
        }
        frontend::Message::Describe { kind, name } => {
            let mut pending = simple(Expect::Describe);
            pending.described = Some((kind, name.to_owned()));
            state.pending.push_back(pending);
            out.extend_from_slice(raw);
        }
        frontend::Message::Close { kind, name } => {
            if kind == b'S' {
                state.prepared.remove(name);
            } else {
                state.portals.remove(name);
            }
            state.pending.push_back(simple(Expect::Close));
            out.extend_from_slice(raw);
        }
        frontend::Message::Sync => {
            state.pending.push_back(simple(Expect::Sync));
            out.extend_from_slice(raw);
        }
        frontend::Message::FunctionCall { oid } => {
            let statement = classify::Statement {
                text: format!("(function call, oid {oid})").into(),
                kind: Kind::Procedural,
                tables: Arc::default(),
                functions: Arc::from([oid.to_string()]),
                error: None,
            };
            let (decision, _) = state.decide(ctx, sql, std::slice::from_ref(&statement));
            let record = state.record(ctx, &statement, &decision, "function", Vec::new());
            let blocked = decision.blocks();
            state.pending.push_back(Pending {
                expect: Expect::Function,
                denial: blocked.then(|| denial(&decision, Kind::Procedural, &state.encoding)),
                records: [record].into(),
                described: None,
                plan: None,
                execute: None,
            });
            if blocked {
                out.extend_from_slice(&frontend::query(DENIED_SQL));
            } else {
                out.extend_from_slice(raw);
            }
        }
        frontend::Message::Flush
        | frontend::Message::Terminate
        | frontend::Message::CopyData(_)
        | frontend::Message::CopyDone
        | frontend::Message::CopyFail(_)
        | frontend::Message::Auth(_) => out.extend_from_slice(raw),
    }
}

/// Decides a portal's prepared statement again when a reload came after its Parse. Keeps
/// the new decision; when it blocks, returns the pending denial (with the statements'
/// records) that takes the Execute's place.
fn redecide_stale(
    state: &mut State,
    ctx: &Context,
    sql: &SqlContext,
    portal: &[u8],
) -> Option<Pending> {
    let (statement, params, _) = state.portals.get(portal)?;
    let prepared = state.prepared.get(statement)?;
    if prepared.generation == state.generation {
        return None;
    }
    let (statement, params) = (statement.clone(), params.clone());
    let statements = prepared.statements.clone();
    let (decision, kind) = state.decide(ctx, sql, &statements);
    let generation = state.generation;
    if let Some(prepared) = state.prepared.get_mut(&statement) {
        prepared.decision = decision.clone();
        prepared.generation = generation;
    }
    if !decision.blocks() {
        return None;
    }
    let records = statements
        .iter()
        .map(|s| state.record(ctx, s, &decision, "extended", params.clone()))
        .collect();
    Some(Pending {
        expect: Expect::Execute,
        denial: Some(denial(&decision, kind, &state.encoding)),
        records,
        described: None,
        plan: None,
        execute: None,
    })
}

fn simple(expect: Expect) -> Pending {
    Pending {
        expect,
        denial: None,
        records: VecDeque::new(),
        described: None,
        plan: None,
        execute: None,
    }
}

fn scope<'a>(ctx: &'a Context, sql: &'a SqlContext) -> mask::Scope<'a> {
    mask::Scope {
        target: &ctx.target,
        database: &sql.database,
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one direction of the relay and what it shares"
)]
async fn server_to_client<R, W>(
    reader: &mut R,
    writer: &mut W,
    mut inbox: Inbox,
    state: &Mutex<State>,
    ctx: &Context,
    sql: &SqlContext,
    count: &std::sync::atomic::AtomicU64,
) -> Result<(), Ended>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(READ_CHUNK);
    let mut finished = Vec::new();
    loop {
        let malformed = {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            // A reload applies from the client's next message on (an Execute of a
            // statement prepared before it included).
            state.refresh(ctx, sql);
            loop {
                let range = match inbox.next(true, ctx.max_message) {
                    Ok(Some(range)) => range,
                    Ok(None) => break None,
                    Err(error) => break Some(error),
                };
                let msg = &inbox.buf[range];
                match backend::parse(msg) {
                    Ok(parsed) => {
                        handle_backend(&mut state, ctx, sql, parsed, msg, &mut out, &mut finished)
                    }
                    Err(error) => break Some(error),
                }
            }
        };
        for record in finished.drain(..) {
            finish(ctx, record);
        }
        if let Some(error) = malformed {
            // What was accepted before the bad message still goes to the client.
            let _ = write_flushed(writer, &out).await;
            return Err(Ended::violation("server", "malformed", error));
        }
        if !out.is_empty() {
            // Flushed, as above: a result's last records must not wait in the TLS
            // session for a write that never comes.
            write_flushed(writer, &out)
                .await
                .map_err(|e| Ended::from(format!("server to client: {e}")))?;
            out.clear();
        }
        match inbox.fill(reader).await {
            Ok(0) => {
                let _ = writer.shutdown().await;
                return Ok(());
            }
            Ok(n) => {
                count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => return Err(Ended::from(format!("server to client: {e}"))),
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the relay's state and one message"
)]
fn handle_backend(
    state: &mut State,
    ctx: &Context,
    sql: &SqlContext,
    message: backend::Message<'_>,
    raw: &[u8],
    out: &mut Vec<u8>,
    finished: &mut Vec<StatementRecord>,
) {
    match message {
        backend::Message::Error(fields) => {
            let sqlstate = backend::field(&fields, b'C').map(|v| state.encoding.lossy(v));
            let text = backend::field(&fields, b'M').map(|v| state.encoding.lossy(v));
            let Some(head) = state.pending.front_mut() else {
                // An error outside any request (e.g. during authentication, or FATAL).
                out.extend_from_slice(raw);
                return;
            };
            if let Some(denial) = head.denial.take() {
                out.extend_from_slice(&denial);
                for mut record in head.records.drain(..) {
                    if record.decision == "deny" || record.decision == "require_approval" {
                        record.sqlstate = Some(DENIED_SQLSTATE.to_owned());
                        record.error = Some("denied by policy".to_owned());
                    } else {
                        record.error = Some(
                            "not executed: another statement of the query was denied".to_owned(),
                        );
                    }
                    finished.push(record);
                }
            } else {
                out.extend_from_slice(raw);
                if let Some(mut record) = head.records.pop_front() {
                    record.sqlstate = sqlstate;
                    record.error = text;
                    finished.push(record);
                }
                for mut record in head.records.drain(..) {
                    record.error = Some("not executed: an earlier statement failed".to_owned());
                    finished.push(record);
                }
            }
            match head.expect {
                Expect::Query | Expect::Function | Expect::Sync => {}
                _ => {
                    // Extended protocol: the server discards messages up to Sync.
                    state.pending.pop_front();
                    while let Some(next) = state.pending.front() {
                        if next.expect == Expect::Sync {
                            break;
                        }
                        if let Some(skipped) = state.pending.pop_front() {
                            for mut record in skipped.records {
                                record.error =
                                    Some("not executed: an earlier message failed".to_owned());
                                finished.push(record);
                            }
                        }
                    }
                    state.skipping = true;
                }
            }
        }
        backend::Message::ReadyForQuery(_) => {
            state.skipping = false;
            state.plan = None;
            state.copy_out_text = false;
            // Ends a Query, a FunctionCall or a Sync.
            if let Some(head) = state.pending.pop_front() {
                for record in head.records {
                    finished.push(record);
                }
            }
            out.extend_from_slice(raw);
        }
        backend::Message::CommandComplete(tag) => {
            state.plan = None;
            if let Some(head) = state.pending.front_mut() {
                if let Some(mut record) = head.records.pop_front() {
                    record.rows = backend::rows_of(tag);
                    finished.push(record);
                }
                if head.expect == Expect::Execute {
                    state.pending.pop_front();
                }
            }
            out.extend_from_slice(raw);
        }
        backend::Message::EmptyQuery => {
            if let Some(head) = state.pending.front_mut() {
                if let Some(record) = head.records.pop_front() {
                    finished.push(record);
                }
                if head.expect == Expect::Execute {
                    state.pending.pop_front();
                }
            }
            out.extend_from_slice(raw);
        }
        backend::Message::ParameterStatus { name, value } => {
            // The server says which encoding the session's text is in, at startup and
            // after every change (`SET client_encoding`).
            if name == b"client_encoding"
                && let Some(encoding) = ClientEncoding::from_name(value)
            {
                state.encoding = encoding;
            }
            out.extend_from_slice(raw);
        }
        backend::Message::Other(b'H') => {
            // CopyOutResponse: overall format 0 is text or CSV. COPY says nothing of
            // its columns' types, so the detectors read its rows only when the session's
            // results are detected, and leave every bare number as it is.
            state.copy_out_text = raw.get(5) == Some(&0) && state.detect_results && !state.exempt;
            out.extend_from_slice(raw);
        }
        backend::Message::Other(b'd') if state.copy_out_text => {
            let row = raw.get(5..).unwrap_or_default();
            match state.masking.redact_copy_row(row, &state.encoding) {
                std::borrow::Cow::Owned(masked) => {
                    ctx.metrics.masked_rows.inc();
                    out.push(b'd');
                    out.extend_from_slice(&((masked.len() + 4) as i32).to_be_bytes());
                    out.extend_from_slice(&masked);
                }
                std::borrow::Cow::Borrowed(_) => out.extend_from_slice(raw),
            }
        }
        backend::Message::Other(b'c') => {
            state.copy_out_text = false;
            out.extend_from_slice(raw);
        }
        backend::Message::Other(tag) => {
            let pops = match tag {
                b'1' => Some(Expect::Parse),
                b'2' => Some(Expect::Bind),
                b'3' => Some(Expect::Close),
                b'n' => Some(Expect::Describe),
                // PortalSuspended: the Execute ran up to its row limit.
                b's' => Some(Expect::Execute),
                _ => None,
            };
            if let Some(expect) = pops
                && state.pending.front().is_some_and(|p| p.expect == expect)
                && let Some(head) = state.pending.pop_front()
            {
                for record in head.records {
                    finished.push(record);
                }
            }
            out.extend_from_slice(raw);
        }
        backend::Message::RowDescription(columns) => {
            let columns: Vec<ColumnInfo> = columns
                .iter()
                .map(|c| ColumnInfo {
                    name: state.encoding.lossy(c.name),
                    type_oid: c.type_oid,
                    format: c.format,
                })
                .collect();
            match state.pending.front() {
                // Describe (statement or portal) ends with RowDescription or NoData.
                Some(head) if head.expect == Expect::Describe => {
                    match head.described.clone() {
                        Some((b'S', name)) => {
                            if let Some(prepared) = state.prepared.get_mut(&name) {
                                prepared.columns = Some(columns);
                            }
                        }
                        Some((_, name)) => {
                            state.portal_columns.insert(name, columns);
                        }
                        None => {}
                    }
                    state.pending.pop_front();
                }
                Some(head) if head.expect == Expect::Query && !state.exempt => {
                    let tables = head
                        .records
                        .front()
                        .map(|r| r.tables.clone())
                        .unwrap_or_default();
                    let formats: Vec<i16> = columns.iter().map(|c| c.format).collect();
                    state.plan = Plan::new(
                        &state.masking,
                        state.detect_results,
                        &scope(ctx, sql),
                        &tables,
                        &columns,
                        &formats,
                    );
                }
                _ => {}
            }
            out.extend_from_slice(raw);
        }
        backend::Message::DataRow(values) => {
            // The first row of an Execute whose columns were described after it was sent.
            let late = match state.pending.front() {
                Some(head)
                    if head.expect == Expect::Execute && head.plan.is_none() && !state.exempt =>
                {
                    head.execute.as_ref().and_then(|info| {
                        let (columns, formats) = match state.portal_columns.get(&info.portal) {
                            Some(columns) => {
                                (columns.clone(), columns.iter().map(|c| c.format).collect())
                            }
                            None => (
                                state.prepared.get(&info.statement)?.columns.clone()?,
                                info.formats.clone(),
                            ),
                        };
                        Plan::new(
                            &state.masking,
                            state.detect_results,
                            &scope(ctx, sql),
                            &info.tables,
                            &columns,
                            &formats,
                        )
                    })
                }
                _ => None,
            };
            if let Some(plan) = late
                && let Some(head) = state.pending.front_mut()
            {
                head.plan = Some(plan);
            }
            let plan = match state.pending.front() {
                Some(head) if head.expect == Expect::Execute => head.plan.as_ref(),
                _ => state.plan.as_ref(),
            };
            match plan.and_then(|plan| plan.apply(&values, &state.encoding)) {
                Some(masked) => {
                    ctx.metrics.masked_rows.inc();
                    out.extend_from_slice(&masked);
                }
                None => out.extend_from_slice(raw),
            }
        }
        backend::Message::Authentication { code, data }
            if code == backend::AUTH_SASL && state.client_tls =>
        {
            // The client's TLS ends here: it cannot bind to the server's channel, so it
            // is not offered SCRAM-SHA-256-PLUS.
            match backend::sasl_mechanisms(data) {
                Ok(mechanisms) if mechanisms.iter().any(|m| m.ends_with("-PLUS")) => {
                    let kept: Vec<&str> = mechanisms
                        .into_iter()
                        .filter(|m| !m.ends_with("-PLUS"))
                        .collect();
                    out.extend_from_slice(&backend::authentication_sasl(&kept));
                }
                _ => out.extend_from_slice(raw),
            }
        }
        backend::Message::Authentication { .. } | backend::Message::Notice(_) => {
            out.extend_from_slice(raw)
        }
    }
}
