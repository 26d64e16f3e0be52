//! Socket options nix has no wrapper for: a socket's family and protocol (SO_DOMAIN,
//! SO_PROTOCOL), its cookie (SO_COOKIE), the key the kernel programs know it by, and a
//! TCP socket's state (the first byte of TCP_INFO).
use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
};

use tollgate_common::SockKind;

/// A SOL_SOCKET option of exactly `size_of::<T>()` bytes.
fn get<T: Default>(socket: impl AsFd, name: libc::c_int) -> io::Result<T> {
    get_at(socket, libc::SOL_SOCKET, name)
}

/// An option of `level` of exactly `size_of::<T>()` bytes (or its first bytes, for an
/// option the kernel truncates to the length asked, as TCP_INFO).
fn get_at<T: Default>(socket: impl AsFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut value = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: value and len describe writable memory of exactly one T, and the
    // descriptor is borrowed for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<T>() {
        return Err(io::Error::other(format!(
            "socket option {name} has {len} bytes"
        )));
    }
    Ok(value)
}

/// The family, type and protocol of a socket.
pub fn kind(socket: impl AsFd) -> io::Result<SockKind> {
    let socket = socket.as_fd();
    Ok(SockKind {
        family: get::<libc::c_int>(socket, libc::SO_DOMAIN)? as u32,
        type_: get::<libc::c_int>(socket, libc::SO_TYPE)? as u32,
        protocol: get::<libc::c_int>(socket, libc::SO_PROTOCOL)? as u32,
    })
}

/// The socket's cookie (kernel 4.12+).
pub fn cookie(socket: impl AsFd) -> io::Result<u64> {
    get::<u64>(socket, libc::SO_COOKIE)
}

/// TCP_CLOSE in `tcpi_state`: a connection reset (or never established).
pub const TCP_CLOSE: u8 = 7;

/// A TCP socket's state (`tcpi_state`, TCP_ESTABLISHED 1 … TCP_CLOSING 11): the first
/// byte of TCP_INFO, the only part asked for.
pub fn tcp_state(socket: impl AsFd) -> io::Result<u8> {
    let head = get_at::<[u8; 8]>(socket, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    Ok(head[0])
}
