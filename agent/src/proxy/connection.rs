//! One intercepted connection: attribute, decide, connect upstream, relay.
use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;
use tollgate_policy::Decision;

use super::{
    Shared,
    access::AccessLog,
    attribute::Attributed,
    handler::{self, Handler, reset},
    live,
};
use crate::{
    http::detect::Detect,
    metrics::UpstreamErrorKind,
    proxy::hello::{ALPN_POSTGRESQL, MAX_RECORD, Sniffed},
};

const DNS_PORT: u16 = 53;

pub async fn handle(client: TcpStream, peer: SocketAddr, shared: &Shared) {
    let accepted = Instant::now();
    let mut log = AccessLog::new(shared, peer);

    let conn =
        match Attributed::accepted(&shared.maps, &shared.jobs, &shared.metrics, peer, &client) {
            Ok(conn) => conn,
            Err(why) => {
                log.unattributed(why.to_string());
                reset(&client);
                return;
            }
        };
    log.attribute(&conn);
    let destination = conn.destination;
    if destination.port() == DNS_PORT && conn.job.is_some() {
        // DNS over TCP, to whatever server: Tollgate's resolver answers, and decides and
        // records each query.
        log.decide(&Decision::allow(
            "DNS over TCP: answered by Tollgate's resolver, each query decided",
        ));
        log.opened();
        log.connected(accepted);
        let (up, down) = shared.dns.serve_tcp(client, conn.info).await;
        log.progress().up(up);
        log.progress().down(down);
        return;
    }
    let mut hostname = conn
        .job
        .as_ref()
        .and_then(|job| shared.dns.name_of(&job.id, destination.ip()));
    // Every decision about this connection comes from this one policy.
    let policy = shared.enforcer.snapshot();
    // Where a policy may read what the ClientHello names, it is read before the
    // decision (the client's first bytes, peeked, waited for briefly).
    let reads = policy.reads_hello();
    let hello = if conn.job.is_some() && (reads.sni || (reads.hostname && hostname.is_none())) {
        Some(super::hello::read(&client, shared.proxy.client_hello_wait).await)
    } else {
        None
    };
    let sni = hello.as_ref().and_then(Sniffed::sni).map(str::to_owned);
    if hostname.is_none()
        && let Some(name) = &sni
        && shared.dns.resolves_to(name, destination.ip()).await
    {
        // The name the client asked for, where it resolves to this destination: a
        // client cannot name a host it is not connecting to.
        hostname = Some(name.clone());
    }
    log.hostname(hostname.clone());
    log.sni(sni.clone());
    let decision = match conn.subject(hostname.as_deref()) {
        None => Decision::deny(format!(
            "cgroup {} is not an active Tollgate job: refused",
            conn.info.cgroup_id
        )),
        Some(_) if let Some(why) = shared.gate.refusal() => {
            Decision::deny(format!("{why}: refused"))
        }
        Some(_) if hello == Some(Sniffed::Malformed) => Decision::deny(
            "a TLS ClientHello whose server name cannot be read, where policy reads it: refused",
        ),
        Some(subject) => policy.decide_connect(subject.with_sni(sni.as_deref())),
    };
    // A connect that needs approval waits here, accepted but not yet connected. Its
    // key never goes to the kernel path: each connect asks (or finds a grant).
    let approved = decision.enforced && decision.effect == tollgate_policy::Effect::RequireApproval;
    let held = super::approval::decide(
        shared,
        &client,
        &conn,
        decision,
        log.id(),
        hostname.as_deref(),
    );
    let Some(decision) = held.await else {
        log.decide(&Decision::deny(
            "the client hung up while its connect waited for approval (abandoned)",
        ));
        return;
    };
    log.decide(&decision);
    if decision.blocks() {
        reset(&client);
        return;
    }
    log.opened();

    let upstream = match connect(destination, shared.proxy.connect_timeout).await {
        Ok(upstream) => upstream,
        Err((kind, error)) => {
            shared.metrics.upstream_error(kind);
            log.error(format!("upstream connect to {destination}: {error}"));
            if let Some(refusals) = &shared.refusals {
                refusals.upstream_failed(&conn.info, &error);
            }
            // Mirror the failure promptly: the client sees a reset, as it would have
            // seen a refusal from the destination itself.
            reset(&client);
            return;
        }
    };
    log.connected(accepted);
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);

    let wanted = Wanted {
        postgres: shared.postgres.enabled,
        declared: match decision.protocol.as_deref() {
            Some("postgres") if shared.postgres.enabled => Some(Declared::Postgres),
            Some("http") if shared.http.enabled => Some(Declared::Http),
            Some("mcp") if shared.http.enabled && shared.mcp.config.enabled => Some(Declared::Http),
            _ => None,
        },
        http: shared.http.enabled
            && (policy.governs_http() || (shared.mcp.config.enabled && policy.governs_mcp())),
        terminate: matches!(decision.protocol.as_deref(), Some("http" | "mcp"))
            && policy.terminates_tls(destination, &decision.target),
    };
    let mcp_declared = decision.protocol.as_deref() == Some("mcp");
    let mcp = (shared.mcp.config.enabled && (mcp_declared || policy.governs_mcp()))
        .then(|| shared.mcp.clone());
    let (how, seen) = match conn.principal() {
        Some(_) => follow(&client, &upstream, wanted).await,
        None => (Follow::Tcp, None),
    };
    // The name of a ClientHello first seen here (no policy read it before).
    if sni.is_none() && seen.is_some() {
        log.sni(seen);
    }
    if let Follow::Unfollowable(why) = how {
        let target = match wanted.declared {
            Some(Declared::Http) => "an HTTP target",
            _ => "a PostgreSQL target",
        };
        log.error(format!(
            "refused: {target}, but the client opened with {why}"
        ));
        reset(&client);
        return;
    }
    if how == Follow::Tcp
        && !approved
        && let Some(job) = &conn.job
    {
        shared.kernel.offer(
            &conn.info,
            job,
            destination,
            hostname.as_deref(),
            &decision,
            &policy,
        );
    }
    let handler = match conn.principal() {
        Some(principal) if matches!(how, Follow::Http(_) | Follow::Https) => {
            let (version, https) = match how {
                Follow::Http(version) => (version, None),
                _ => (Detect::Http1, Some(shared.https.clone())),
            };
            Handler::Http(Box::new(crate::http::session::Context {
                enforcer: shared.enforcer.clone(),
                recorder: shared.recorder.clone(),
                principal: principal.clone(),
                process: conn.process.clone(),
                destination,
                hostname: hostname.clone(),
                connection_id: log.id().into(),
                job_id: conn.job.as_ref().map(|j| j.id.as_str().into()),
                config: shared.http.clone(),
                metrics: shared.http_metrics.clone(),
                version,
                https,
                approvals: shared.approvals.clone(),
                target: decision.target.clone(),
                mcp,
                mcp_declared,
            }))
        }
        Some(principal) if how != Follow::Tcp => {
            Handler::Postgres(Box::new(crate::postgres::session::Context {
                enforcer: shared.enforcer.clone(),
                recorder: shared.recorder.clone(),
                principal: principal.clone(),
                process: conn.process.clone(),
                destination,
                connection_id: log.id().into(),
                job_id: conn.job.as_ref().map(|j| j.id.as_str().into()),
                max_message: shared.postgres.max_message_size,
                tls: shared.tls.clone(),
                metrics: shared.postgres_metrics.clone(),
                target: decision.target.clone(),
                direct_tls: how == Follow::PostgresDirectTls,
                hostname: hostname.clone(),
                approvals: shared.approvals.clone(),
            }))
        }
        _ => Handler::Tcp {
            buffer_size: shared.proxy.buffer_size,
        },
    };

    // A policy reload may revoke the connection while it is relayed.
    let (_registration, revoked) = match conn.principal() {
        Some(principal) => {
            let (registration, revoked) =
                live::register(principal.clone(), conn.process, destination, hostname);
            (Some(registration), Some(revoked))
        }
        None => (None, None),
    };
    let outcome = handler::run(handler, client, upstream, log.progress(), revoked).await;
    if let Some(decision) = &outcome.revoked {
        log.revoked(decision);
    }
    if let Some(error) = outcome.error {
        log.error(error.to_string());
    }
}

/// How a connection is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Relayed at L4.
    Tcp,
    /// PostgreSQL, opened with a startup-phase message (SSLRequest or StartupMessage).
    Postgres,
    /// PostgreSQL with direct TLS (`sslnegotiation=direct`): a ClientHello first.
    PostgresDirectTls,
    /// HTTP/1 or HTTP/2 (prior knowledge), request by request.
    Http(Detect),
    /// HTTP inside TLS that the agent terminates (`tls = "terminate"`).
    Https,
    /// A target declaring a protocol whose first bytes are not it: refused, never
    /// relayed blind.
    Unfollowable(&'static str),
}

/// The protocol a connection's target declares, where the agent follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declared {
    Postgres,
    Http,
}

/// What the proxy follows on this connection.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    /// PostgreSQL detected on the client's first bytes (`[postgres] enabled`).
    postgres: bool,
    /// What the target declares.
    declared: Option<Declared>,
    /// HTTP detected on the client's first bytes (`[http] enabled`, and a policy names
    /// `http:request`).
    http: bool,
    /// The HTTP target's `tls = "terminate"`: its clients open with TLS.
    terminate: bool,
}

/// How to follow the connection: its target declares the protocol, or the client speaks
/// first and its first bytes are a PostgreSQL startup-phase message, a ClientHello
/// offering ALPN `postgresql`, or HTTP (where wanted). A server that speaks first (SMTP,
/// SSH, MySQL, ...) means plain TCP; nothing is consumed either way.
async fn follow(
    client: &TcpStream,
    upstream: &TcpStream,
    wanted: Wanted,
) -> (Follow, Option<String>) {
    let mut sni = None;
    let how = follow_first_bytes(client, upstream, wanted, &mut sni).await;
    (how, sni)
}

/// [`follow`]'s reading; `sni`: the name of a ClientHello it read.
async fn follow_first_bytes(
    client: &TcpStream,
    upstream: &TcpStream,
    wanted: Wanted,
    sni: &mut Option<String>,
) -> Follow {
    let declared = wanted.declared.is_some();
    let postgres = wanted.declared == Some(Declared::Postgres);
    let http = wanted.declared == Some(Declared::Http);
    if !declared {
        tokio::select! {
            biased;
            ready = client.readable() => if ready.is_err() { return Follow::Tcp },
            _ = upstream.readable() => return Follow::Tcp,
        }
    }
    let mut first = vec![0u8; 8];
    let deadline = Instant::now() + Duration::from_millis(if declared { 2_000 } else { 200 });
    loop {
        let n = match client.peek(&mut first).await {
            Ok(n) => n,
            Err(_) if declared => {
                return Follow::Unfollowable("the client's first bytes could not be read");
            }
            Err(_) => return Follow::Tcp,
        };
        let waiting = n > 0 && Instant::now() < deadline;
        match super::hello::sniff(&first[..n]) {
            hello @ Sniffed::ClientHello { .. } => {
                sni.clone_from(&hello.sni().map(str::to_owned));
                let offers_none =
                    matches!(&hello, Sniffed::ClientHello { alpn, .. } if alpn.is_empty());
                if http && wanted.terminate {
                    return Follow::Https;
                }
                if http {
                    return Follow::Unfollowable(
                        "TLS, which the agent does not terminate for this target (tls)",
                    );
                }
                return match (hello.offers(ALPN_POSTGRESQL), postgres) {
                    (true, _) if wanted.postgres => Follow::PostgresDirectTls,
                    // A PostgreSQL target: direct TLS from a client that offers no ALPN.
                    (false, true) if offers_none => Follow::PostgresDirectTls,
                    (false, true) => Follow::Unfollowable(
                        "TLS for another protocol (ALPN) to a PostgreSQL target",
                    ),
                    _ => Follow::Tcp,
                };
            }
            Sniffed::NeedMore(want) if waiting => {
                if first.len() < want {
                    first.resize(want.min(MAX_RECORD), 0);
                } else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                continue;
            }
            Sniffed::NeedMore(_) if n >= 5 || declared => {
                return if declared {
                    Follow::Unfollowable("an incomplete TLS ClientHello")
                } else {
                    Follow::Tcp
                };
            }
            Sniffed::Malformed if declared => {
                return Follow::Unfollowable("a malformed TLS ClientHello");
            }
            Sniffed::Malformed => return Follow::Tcp,
            Sniffed::NotTls | Sniffed::NeedMore(_) => {}
        }
        if http || wanted.http {
            match crate::http::detect::detect(&first[..n]) {
                version @ (Detect::Http1 | Detect::Http2) if !wanted.terminate => {
                    return Follow::Http(version);
                }
                Detect::Http1 | Detect::Http2 => {
                    return Follow::Unfollowable("plain HTTP to a target whose TLS is terminated");
                }
                Detect::NeedMore if waiting => {
                    if first.len() < HTTP_SNIFF && n == first.len() {
                        first.resize(HTTP_SNIFF, 0);
                    } else {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    continue;
                }
                _ if http => return Follow::Unfollowable("bytes that are not HTTP"),
                _ => {}
            }
        }
        if !postgres && !wanted.postgres {
            return Follow::Tcp;
        }
        match tollgate_pgwire::detect(&first[..n.min(8)]) {
            tollgate_pgwire::Detect::Postgres => return Follow::Postgres,
            tollgate_pgwire::Detect::NotPostgres if postgres => {
                // The session reads it and answers with a protocol error, on record.
                return Follow::Postgres;
            }
            tollgate_pgwire::Detect::NotPostgres => return Follow::Tcp,
            // A startup message arrives whole in practice; wait briefly for the rest.
            tollgate_pgwire::Detect::NeedMore if waiting => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tollgate_pgwire::Detect::NeedMore if postgres => return Follow::Postgres,
            tollgate_pgwire::Detect::NeedMore => return Follow::Tcp,
        }
    }
}

/// How many first bytes tell HTTP (the HTTP/2 preface's length).
const HTTP_SNIFF: usize = crate::http::detect::H2_PREFACE.len();

async fn connect(
    destination: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, (UpstreamErrorKind, io::Error)> {
    match tokio::time::timeout(timeout, TcpStream::connect(destination)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => {
            let kind = match error.kind() {
                io::ErrorKind::ConnectionRefused => UpstreamErrorKind::Refused,
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    UpstreamErrorKind::Unreachable
                }
                io::ErrorKind::TimedOut => UpstreamErrorKind::Timeout,
                _ => UpstreamErrorKind::Other,
            };
            Err((kind, error))
        }
        Err(_) => Err((
            UpstreamErrorKind::Timeout,
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ),
        )),
    }
}
