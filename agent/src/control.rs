//! The control socket: newline-delimited JSON requests and replies over a Unix socket.
//! Callers are authorized by the credentials the kernel recorded (SO_PEERCRED).
mod client;
mod protocol;
mod server;

pub use client::{Client, ClientError};
pub use protocol::{PolicyStatus, Request, Response, Status};
pub use server::{ControlError, ControlServer, Handler};
