//! One PostgreSQL session, relayed message by message. Each statement is classified,
//! decided by policy and recorded. A denied statement never reaches the server as
//! itself: the server gets a statement that fails to parse instead, so that client and
//! server agree on the transaction state and the error recovery of the extended
//! protocol, and the client gets Tollgate's ErrorResponse (SQLSTATE 42501) in place of
//! the server's.
//!
//! The stages: [`startup`](super::startup) (TLS and the startup message), then one
//! [`pump`](super::pump) per direction over the session's [`Tracker`]; what is left
//! unanswered is recorded as such, however the session ends (a revocation is raced with
//! the whole session, in [`handler`](crate::proxy::handler)).
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tollgate_policy::{Principal, Process, SqlContext, Subject};

pub use super::startup::{Startup, StartupKind};
use super::{
    error::SessionError,
    pump::{ToClient, ToServer, pump},
    startup::{self, Negotiated},
    tracker::Tracker,
};
use crate::{
    enforce::Enforcer,
    proxy::handler::{Progress, reset},
    record::{RecordEvent, Recorder, StatementRecord},
};

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
    /// Where a statement that needs approval asks for it.
    pub approvals: Arc<crate::approvals::Approvals>,
}

impl Context {
    /// Who the session's decisions are about.
    pub(super) fn subject(&self) -> Subject<'_> {
        Subject::new(&self.principal, &self.process, self.destination)
            .with_hostname(self.hostname.as_deref())
    }
}

/// Records the statements still waiting for an answer when the session ends, however it
/// ends: returned, or dropped by a revocation or a cancelled task.
struct Unanswered<'a> {
    tracker: &'a Mutex<Tracker>,
    ctx: &'a Context,
    progress: &'a Progress,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let leftover = self
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_unanswered();
        for mut record in leftover {
            record.error.get_or_insert_with(|| {
                "the session ended before the statement completed".to_owned()
            });
            finish(self.ctx, self.progress, record);
        }
    }
}

/// Relays a PostgreSQL session between `client` and `upstream`, reporting its bytes and
/// its startup into `progress` as they come. Some error when it ended early.
pub async fn run(
    client: TcpStream,
    upstream_tcp: TcpStream,
    ctx: &Context,
    progress: &Progress,
) -> Option<SessionError> {
    let mut said = Startup::default();
    progress.postgres(&said);
    let negotiated = startup::negotiate(client, upstream_tcp, ctx, progress, &mut said).await;
    progress.postgres(&said);
    let Negotiated {
        mut client,
        mut upstream,
        from_client: inbox,
        from_server,
        encoding,
    } = match negotiated {
        Ok(negotiated) => negotiated,
        Err(error) => return error,
    };
    let sql_context = SqlContext {
        database: said.database.clone().unwrap_or_default(),
        user: said.user.clone().unwrap_or_default(),
        tables: Vec::new(),
    };

    let state = Mutex::new(Tracker::new(ctx, &sql_context, encoding, said.client_tls));
    let _unanswered = Unanswered {
        tracker: &state,
        ctx,
        progress,
    };
    // Wakes the server's direction for what Tollgate tells the client (a held
    // statement's notice).
    let wake = tokio::sync::Notify::new();
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
            progress,
            &wake,
        );
        let to_client = pump(
            ToClient::default(),
            &mut upstream_read,
            &mut client_write,
            from_server,
            &state,
            ctx,
            &sql_context,
            progress,
            &wake,
        );
        tokio::pin!(to_server, to_client);
        let (mut up_done, mut down_done) = (false, false);
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
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    match error.as_ref().map(SessionError::to_client) {
        Some(Some(response)) => {
            // A protocol violation: the client gets the error, then an orderly close.
            reset(upstream.tcp());
            let _ = client.write_all(&response).await;
            let _ = client.shutdown().await;
        }
        Some(None) => {
            reset(client.tcp());
            reset(upstream.tcp());
        }
        None => {}
    }
    error
}

pub(super) fn finish(ctx: &Context, progress: &Progress, mut record: StatementRecord) {
    ctx.metrics.statement(&record.kind, record.decision);
    progress.statement(record.decision.refused());
    if let Some(started) = record.started.take() {
        record.duration_us = Some(started.elapsed().as_micros() as u64);
    }
    ctx.recorder
        .record(RecordEvent::Statement(Box::new(record)));
}
