//! A PostgreSQL session's startup: the untagged messages before the first tagged one,
//! TLS on either side as `[postgres.tls]` says (`SSLRequest`, direct TLS, or none), the
//! startup message itself, and the server connection made again in plaintext where
//! SCRAM channel binding cannot pass a TLS termination.
use tokio::{
    io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tollgate_pgwire::{WireError, backend, frontend};

use super::{
    encoding::ClientEncoding,
    error::{LegError, SessionError, Violation},
    io::Io,
    pump::{Inbox, write_flushed},
    session::Context,
    tls::UpstreamTls,
};
use crate::proxy::handler::{Progress, Side};

/// The session's startup parameters.
#[derive(Debug, Clone, Default)]
pub struct Startup {
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    pub kind: StartupKind,
    /// Tollgate terminated the client's TLS.
    pub client_tls: bool,
    /// Tollgate's connection to the server is TLS.
    pub server_tls: bool,
}

/// What the client opened the session with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartupKind {
    /// Nothing yet: the client closed (or failed) before a startup message.
    #[default]
    None,
    /// A startup message: a session.
    Startup,
    /// A cancel request for another session.
    Cancel,
}

/// A session past its startup: both legs, what each has sent that is not relayed yet,
/// and the encoding the client's text is read in until the server reports its own.
pub(super) struct Negotiated {
    pub client: Io,
    pub upstream: Io,
    /// The client's bytes after its startup message.
    pub from_client: Inbox,
    /// The server's bytes read during the startup (its first message, for SCRAM).
    pub from_server: Inbox,
    pub encoding: ClientEncoding,
}

/// Takes the session through its startup, filling `said` (and counting the client's
/// bytes on the way). An Err when the session ends there (a cancel request, a refusal,
/// a malformed startup, or a leg that failed), with why if it was not the client's own
/// close.
pub(super) async fn negotiate(
    client: TcpStream,
    mut upstream_tcp: TcpStream,
    ctx: &Context,
    progress: &Progress,
    said: &mut Startup,
) -> Result<Negotiated, Option<SessionError>> {
    let mut sni: Option<String> = None;
    // The server's answer to our SSLRequest, once asked.
    let mut server_tls: Option<bool> = None;
    let mut client = if ctx.direct_tls {
        // As for SSLRequest: the client has TLS only if the server leg has it too.
        let agrees = ctx.tls.offers_client_tls()
            && ctx.tls.upstream_mode() != UpstreamTls::Disable
            && match request_tls(&mut upstream_tcp).await {
                Ok(agrees) => agrees,
                Err(error) => return Err(Some(SessionError::AskingServerTls(error))),
            };
        if !agrees {
            // A direct-TLS client cannot be answered `N`: it is closed, on record.
            return Err(Some(SessionError::DirectTlsWithoutServerTls));
        }
        server_tls = Some(true);
        match accept_tls(client, ctx, false).await {
            Ok((io, name)) => {
                sni = name;
                io
            }
            Err(error) => return Err(Some(SessionError::ClientTls(error))),
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
                            return Err(Some(SessionError::MalformedStartup(error)));
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
                                    return Err(Some(SessionError::AskingServerTls(error)));
                                }
                            },
                        };
                        if !server_agrees {
                            if let Err(source) = client.write_all(b"N").await {
                                return Err(Some(SessionError::Startup {
                                    side: Side::Client,
                                    source,
                                }));
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
                            Err(error) => return Err(Some(SessionError::ClientTls(error))),
                        }
                    }
                    // GSS encryption is not offered, nor TLS when off: the client goes
                    // on in plaintext on loopback, or gives up if it requires encryption.
                    Ok(frontend::Startup::SslRequest | frontend::Startup::GssEncRequest) => {
                        if let Err(source) = client.write_all(b"N").await {
                            return Err(Some(SessionError::Startup {
                                side: Side::Client,
                                source,
                            }));
                        }
                    }
                    Ok(frontend::Startup::Cancel { .. }) => {
                        said.kind = StartupKind::Cancel;
                        // The original server is the one to cancel on.
                        progress.up(msg.len() as u64);
                        let sent = upstream_tcp.write_all(&msg).await;
                        let _ = upstream_tcp.shutdown().await;
                        let mut sink = [0u8; 64];
                        let _ = upstream_tcp.read(&mut sink).await;
                        return Err(sent.err().map(|source| SessionError::Startup {
                            side: Side::Server,
                            source,
                        }));
                    }
                    Ok(startup @ frontend::Startup::Startup { .. }) => break (startup, msg),
                    Err(error) => {
                        protocol_error(&mut client, &error).await;
                        return Err(Some(SessionError::MalformedStartup(error)));
                    }
                }
            }
            Ok(None) => match inbox.fill(&mut client).await {
                Ok(0) => return Err(None),
                Ok(n) => progress.up(n as u64),
                Err(source) => {
                    return Err(Some(SessionError::Startup {
                        side: Side::Client,
                        source,
                    }));
                }
            },
            Err(error) => {
                protocol_error(&mut client, &error).await;
                return Err(Some(SessionError::MalformedStartup(error)));
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
    *said = Startup {
        user: param("user"),
        database: param("database").or_else(|| param("user")),
        application_name: param("application_name"),
        kind: StartupKind::Startup,
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
            return Err(Some(SessionError::ServerTls(message)));
        }
    };
    if let Err(source) = write_flushed(&mut upstream, &startup_bytes).await {
        return Err(Some(SessionError::Startup {
            side: Side::Server,
            source,
        }));
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
                        progress.new_upstream(&tcp);
                        upstream = Io::Plain(tcp);
                        from_server = Inbox::new();
                    }
                    Err(e) => return Err(Some(SessionError::Reconnecting(e))),
                }
            }
            Err(e) => return Err(Some(e)),
        }
    }
    said.server_tls = upstream.is_tls();
    Ok(Negotiated {
        client,
        upstream,
        from_client: inbox,
        from_server,
        encoding,
    })
}

/// Reads the server's first message into `inbox` (it stays there to be relayed) and
/// says whether it offers SCRAM-SHA-256-PLUS.
async fn offers_channel_binding(
    upstream: &mut Io,
    inbox: &mut Inbox,
    max: usize,
) -> Result<bool, SessionError> {
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
                Ok(0) => return Err(SessionError::ClosedInAuthentication),
                Ok(_) => {}
                Err(source) => {
                    return Err(SessionError::Startup {
                        side: Side::Server,
                        source,
                    });
                }
            },
            Err(e) => return Err(SessionError::MalformedAuthentication(e)),
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
) -> Result<(Io, Option<String>), LegError> {
    if answer_ssl_request {
        tcp.write_all(b"S").await?;
    }
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let config = ctx.tls.server_config(
        sni.as_deref(),
        ctx.destination.ip(),
        super::tls::Alpn::Postgres,
    )?;
    let stream = start.into_stream(config).await?;
    Ok((Io::Accepted(Box::new(stream)), sni))
}

/// Sends the server an SSLRequest; true if it agreed to TLS.
async fn request_tls(tcp: &mut TcpStream) -> Result<bool, LegError> {
    tcp.write_all(&frontend::ssl_request()).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(LegError::UnexpectedAnswer(other)),
    }
}

/// Negotiates TLS with the server as `[postgres.tls] upstream` says. `asked` is the
/// server's answer to an SSLRequest already made on `tcp`, if one was.
async fn connect_tls(
    mut tcp: TcpStream,
    ctx: &Context,
    sni: Option<&str>,
    asked: Option<bool>,
) -> Result<Io, LegError> {
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
                Some(name) => rustls::pki_types::ServerName::try_from(name.to_owned())?,
                None => rustls::pki_types::ServerName::IpAddress(ctx.destination.ip().into()),
            };
            let connector = tokio_rustls::TlsConnector::from(ctx.tls.upstream_config());
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(LegError::Handshake)?;
            Ok(Io::Connected(Box::new(stream)))
        }
        false if mode == UpstreamTls::Prefer => Ok(Io::Plain(tcp)),
        false => Err(LegError::Required),
    }
}

async fn protocol_error<W: AsyncWrite + Unpin>(client: &mut W, error: &WireError) {
    let violation = SessionError::Violation {
        side: Side::Client,
        violation: Violation::Malformed(error.clone()),
    };
    if let Some(response) = violation.to_client() {
        let _ = client.write_all(&response).await;
    }
    let _ = client.shutdown().await;
}
