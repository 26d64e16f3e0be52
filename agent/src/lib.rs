//! The Tollgate agent as a library: the daemon, its command-line interface and every
//! stage of the data path. The `tollgate` binary is [`cli::main`]; the end-to-end tests
//! read records and status through [`record`]'s and [`control`]'s types, and the fuzz
//! targets reach the PostgreSQL tracker through `fuzzing` (feature `fuzzing`).
mod accounts;
mod admin;
mod agent;
pub mod approvals;
mod bpf;
mod central;
mod cgroup;
pub mod cli;
mod config;
mod console;
pub mod control;
mod dns;
mod enforce;
mod enroll;
mod events;
mod features;
mod http;
mod identity;
mod jobs;
mod kernel_path;
mod leave;
mod mcp;
mod metrics;
mod postgres;
mod proc_info;
mod proxy;
pub mod record;
mod runtime_thread;
mod sockets;
mod udp;
mod unix;

/// What the fuzz targets drive: the PostgreSQL message tracker with an enforcer, a
/// recorder and masking around it, and a followed HTTP connection over in-memory
/// streams.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::{http::harness::Harness as HttpHarness, postgres::tracker::harness::Harness};
}
