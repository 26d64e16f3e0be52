//! What carries an allowed connection once it is decided: a protocol handler (the L4
//! relay or a PostgreSQL session; later HTTP and MCP), raced here, and only here, with
//! the connection's revocation by a policy reload.
//!
//! A handler reports its progress (bytes each way, what its protocol's startup said)
//! into the connection's [`Progress`] as it goes, so a connection that is revoked, or
//! whose task is cancelled, is recorded with what it relayed so far.
use std::{
    fmt, io,
    os::fd::{AsFd, OwnedFd},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{net::TcpStream, sync::oneshot};
use tollgate_policy::Decision;

use crate::postgres::{error::SessionError, session, startup::Startup};

/// One end of a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub const fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Server => "server",
        })
    }
}

/// Why a relayed connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{from} to {to}: {source}", to = .from.other())]
    Io {
        from: Side,
        #[source]
        source: io::Error,
    },
    #[error("closed: revoked by a policy reload")]
    Revoked,
    #[error(transparent)]
    Postgres(#[from] SessionError),
    #[error(transparent)]
    Http(#[from] crate::http::session::HttpError),
}

/// What a handler has relayed so far; owned by the connection's access-log guard, which
/// reads it however the connection ends.
#[derive(Debug, Default)]
pub struct Progress {
    up: AtomicU64,
    down: AtomicU64,
    /// Statements recorded, and of them refused (PostgreSQL sessions).
    statements: AtomicU64,
    refused: AtomicU64,
    postgres: Mutex<Option<Startup>>,
    /// The protocol another handler follows the connection as (`http/1.1`, `http/2`).
    followed: std::sync::OnceLock<&'static str>,
    /// While a revocation can end the connection: a descriptor of each leg, so that
    /// they are reset (not closed in order) when it does.
    legs: Mutex<Option<Legs>>,
}

/// The two legs of a revocable connection.
#[derive(Debug)]
struct Legs {
    client: Option<OwnedFd>,
    upstream: Option<OwnedFd>,
}

impl Progress {
    /// `n` bytes went from the client to the server.
    pub fn up(&self, n: u64) {
        // Only the connection's task counts; the atomic makes the borrow Send.
        self.up.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes went from the server to the client.
    pub fn down(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }

    /// A statement of the session was recorded (`refused`: denied, held for approval or
    /// revoked).
    pub fn statement(&self, refused: bool) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        if refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `n` statements (or HTTP requests) were recorded, `refused` of them refused.
    pub fn statements_add(&self, n: u64, refused: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
        self.refused.fetch_add(refused, Ordering::Relaxed);
    }

    /// Statements recorded so far, and how many of them were refused.
    pub fn statements(&self) -> (u64, u64) {
        (
            self.statements.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    fn legs(&self) -> std::sync::MutexGuard<'_, Option<Legs>> {
        self.legs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection can be revoked: its legs are held to be reset then.
    fn hold(&self, client: &impl AsFd, upstream: &impl AsFd) {
        *self.legs() = Some(Legs {
            client: client.as_fd().try_clone_to_owned().ok(),
            upstream: upstream.as_fd().try_clone_to_owned().ok(),
        });
    }

    /// The handler made its server connection again (PostgreSQL, SCRAM over terminated
    /// TLS): a revocation resets the new one, and the old one closes with its stream.
    pub fn new_upstream(&self, upstream: &impl AsFd) {
        if let Some(legs) = self.legs().as_mut() {
            legs.upstream = upstream.as_fd().try_clone_to_owned().ok();
        }
    }

    /// The held legs: reset first when `revoked`, then let go.
    fn release(&self, revoked: bool) {
        let Some(legs) = self.legs().take() else {
            return;
        };
        if revoked {
            for fd in legs.client.iter().chain(&legs.upstream) {
                reset(fd);
            }
        }
    }

    /// The connection is followed as PostgreSQL, and its startup has said this so far.
    pub fn postgres(&self, startup: &Startup) {
        *self.postgres.lock().unwrap_or_else(|e| e.into_inner()) = Some(startup.clone());
    }

    /// The connection is followed as `protocol` (by a handler other than PostgreSQL's).
    pub fn followed(&self, protocol: &'static str) {
        let _ = self.followed.set(protocol);
    }

    pub fn protocol(&self) -> Option<&'static str> {
        self.followed.get().copied()
    }

    pub fn startup(&self) -> Option<Startup> {
        self.postgres
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How an allowed connection is carried.
pub enum Handler {
    /// Bytes both ways, as they come.
    Tcp { buffer_size: usize },
    /// A PostgreSQL session, statement by statement.
    Postgres(Box<session::Context>),
    /// HTTP, request by request.
    Http(Box<crate::http::session::Context>),
}

/// How a handled connection ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub error: Option<RelayError>,
    /// The decision of the policy reload that revoked it.
    pub revoked: Option<Decision>,
}

/// Carries the connection with `handler` until it ends, or until `revoke` delivers a
/// decision: then the handler is dropped (its pending records are flushed as it drops)
/// and both legs are reset.
pub async fn run(
    handler: Handler,
    client: TcpStream,
    upstream: TcpStream,
    progress: &Progress,
    revoke: Option<oneshot::Receiver<Decision>>,
) -> Outcome {
    // The sockets outlive the handler's streams through the progress, so that a revoked
    // connection is reset (linger 0 on its last close), not closed in order.
    if revoke.is_some() {
        progress.hold(&client, &upstream);
    }
    let work = async {
        let error = match handler {
            Handler::Tcp { buffer_size } => {
                super::relay::relay(client, upstream, buffer_size, progress).await
            }
            Handler::Postgres(ctx) => session::run(client, upstream, &ctx, progress)
                .await
                .map(RelayError::from),
            Handler::Http(ctx) => crate::http::session::run(client, upstream, *ctx, progress)
                .await
                .err()
                .map(RelayError::from),
        };
        Outcome {
            error,
            revoked: None,
        }
    };
    let revoked = async {
        match revoke {
            Some(receiver) => match receiver.await {
                Ok(decision) => decision,
                // No revocation can come any more (the registry let go).
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        outcome = work => {
            progress.release(false);
            outcome
        }
        decision = revoked => {
            progress.release(true);
            Outcome {
                error: Some(RelayError::Revoked),
                revoked: Some(decision),
            }
        }
    }
}

/// Makes the socket's last close a reset (SO_LINGER 0), not an orderly FIN: for a peer
/// that must not wait for more, or that must see the refusal a destination would give.
pub fn reset(socket: &impl AsFd) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests;
