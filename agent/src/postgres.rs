//! PostgreSQL-aware interception: classification of statements, their enforcement and
//! recording. The wire protocol itself is the `tollgate-pgwire` crate.
pub mod classify;
mod decided;
pub mod encoding;
pub mod error;
pub mod io;
pub mod mask;
pub mod metrics;
mod pump;
pub mod session;
pub mod startup;
pub mod tls;
pub(crate) mod tracker;
