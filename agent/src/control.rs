//! The control socket: newline-delimited JSON requests and replies over a Unix socket.
//! Callers are authorized by the credentials the kernel recorded (SO_PEERCRED).
mod client;
mod protocol;
mod server;

pub use client::{Client, ClientError};
pub use protocol::{PolicyStatus, Request, Response, Status};

/// What the control protocol's replies carry, for its clients.
pub use crate::{
    bpf::{Coverage, OutsideSockets},
    features::{Gap, KernelReport},
    identity::{Assurance, Identity},
    jobs::{Job, JobKind},
    kernel_path::KernelStatus,
};
pub use server::{ControlError, ControlServer, Handler};
