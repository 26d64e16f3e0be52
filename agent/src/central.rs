//! The fleet's central PostgreSQL store: every host's record chain, its checkpoints and
//! enrolled keys (docs/fleet.md). The local store is the outbox: the shipper sends what
//! the chain holds, in order and in batches, until the central store has all of it.
pub mod admin;
pub mod fleet;
mod metrics;
pub mod query;
pub mod schema;
pub mod ship;
mod target;

use std::path::PathBuf;

pub use metrics::CentralMetrics;
pub use target::Target;

#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error("central.url: {0}")]
    Url(String),
    #[error("central.password_file {path}: {source}")]
    Password {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("central store {url}: {}", describe(.source))]
    Connect {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("central store TLS: {0}")]
    Tls(String),
    #[error("central store: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error(
        "the central store has no Tollgate schema; create it with `tollgate central migrate \
         --url …`"
    )]
    NoSchema,
    #[error(
        "the central store's schema is version {found}, this agent's is {expected}; run \
         `tollgate central migrate` with the newer of the two"
    )]
    SchemaVersion { found: i32, expected: i32 },
    #[error("the local recording store: {0}")]
    Local(#[from] rusqlite::Error),
}

/// A PostgreSQL error with what the server said (tokio-postgres's own text is only "db
/// error"), or the I/O error under it.
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// The config's central store, if `[central] url` is set and its password file can be
/// read (otherwise logged: records then stay on this host, and approvals local).
pub fn target(config: &crate::config::Config) -> Option<Target> {
    let url = config.central.url.as_deref()?;
    match Target::parse(url, config.central.password_file.as_deref()) {
        Ok(target) => Some(target),
        Err(error) => {
            tracing::error!(%error, "records are not shipped to the central store; they stay on this host");
            None
        }
    }
}

/// Starts shipping to the central store.
pub fn start(
    config: &crate::config::Config,
    target: Target,
    db: &std::path::Path,
    gate: crate::record::Gate,
    metrics: std::sync::Arc<CentralMetrics>,
) -> Option<ship::ShipperHandle> {
    tracing::info!(
        url = target.shown(),
        host = config.central.host_name(),
        max_lag = ?config.central.max_lag,
        "shipping records to the central store"
    );
    let options = ship::Options {
        target,
        db: db.to_owned(),
        host: config.central.host_name(),
        batch_size: config.central.batch_size,
        max_lag: config.central.max_lag,
        prune_older_than: config.central.prune_older_than,
        gate,
        metrics,
    };
    match ship::spawn(options) {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::error!(%error, "starting the central shipper");
            None
        }
    }
}

/// Starts fleet-wide approvals through the central store.
pub fn start_fleet(
    config: &crate::config::Config,
    target: Target,
    key: std::sync::Arc<crate::record::checkpoint::HostKey>,
    approvals: std::sync::Arc<crate::approvals::Approvals>,
) -> Option<fleet::FleetHandle> {
    match fleet::spawn(target, config.central.host_name(), key, approvals) {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::error!(%error, "starting fleet approvals");
            None
        }
    }
}
