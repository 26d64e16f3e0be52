//! One PostgreSQL session, relayed message by message. Each statement is classified,
//! decided by policy and recorded. A denied statement never reaches the server as
//! itself: the server gets a statement that fails to parse instead, so that client and
//! server agree on the transaction state and the error recovery of the extended
//! protocol, and the client gets Tollgate's ErrorResponse (SQLSTATE 42501) in place of
//! the server's.
//!
//! The stages: [`startup`](super::startup) (TLS and the startup message), then one
//! [`pump`](super::pump) per direction over the session's [`Tracker`], raced here with
//! a revocation; what is left unanswered is recorded as such.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::oneshot};
use tollgate_pgwire::backend;
use tollgate_policy::{Decision, Principal, Process, SqlContext, Subject};

pub use super::startup::Startup;
use super::{
    pump::{ToClient, ToServer, pump},
    startup::{self, Negotiated},
    tracker::Tracker,
};
use crate::{
    enforce::Enforcer,
    record::{RecordEvent, Recorder, StatementRecord},
};

/// SQLSTATE protocol_violation.
const PROTOCOL_VIOLATION: &str = "08P01";

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
    pub(super) fn subject(&self) -> Subject<'_> {
        Subject::new(&self.principal, &self.process, self.destination)
            .with_hostname(self.hostname.as_deref())
    }
}

/// Why one direction of the relay stopped early.
pub(super) struct Ended {
    pub(super) message: String,
    /// Tollgate's own error for the client, delivered before an orderly close (a
    /// protocol violation), instead of resetting the client.
    pub(super) to_client: Option<Vec<u8>>,
}

impl Ended {
    /// A protocol violation by `side` (`client` or `server`): the client gets a
    /// protocol_violation error, then the session closes in order.
    pub(super) fn violation(side: &str, what: &str, error: impl std::fmt::Display) -> Self {
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

/// Relays a PostgreSQL session between `client` and `upstream`.
pub async fn run(
    client: TcpStream,
    upstream_tcp: TcpStream,
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
    let Some(Negotiated {
        mut client,
        mut upstream,
        from_client: inbox,
        from_server,
        encoding,
    }) = startup::negotiate(client, upstream_tcp, ctx, &mut outcome).await
    else {
        return outcome;
    };
    let sql_context = SqlContext {
        database: outcome.startup.database.clone().unwrap_or_default(),
        user: outcome.startup.user.clone().unwrap_or_default(),
        tables: Vec::new(),
    };

    let state = Mutex::new(Tracker::new(
        ctx,
        &sql_context,
        encoding,
        outcome.startup.client_tls,
    ));
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let error = {
        let (mut client_read, mut client_write) = tokio::io::split(&mut client);
        let (mut upstream_read, mut upstream_write) = tokio::io::split(&mut upstream);
        let to_server = pump(
            ToServer::default(),
            &mut client_read,
            &mut upstream_write,
            inbox,
            &state,
            ctx,
            &sql_context,
            &up,
        );
        let to_client = pump(
            ToClient::default(),
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
    let leftover = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take_unanswered();
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

pub(super) fn finish(ctx: &Context, mut record: StatementRecord) {
    ctx.metrics.statement(&record.kind, record.decision);
    if let Some(started) = record.started.take() {
        record.duration_us = Some(started.elapsed().as_micros() as u64);
    }
    ctx.recorder
        .record(RecordEvent::Statement(Box::new(record)));
}
