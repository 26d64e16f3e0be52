//! Socket options nix has no wrapper for: a socket's family and protocol (SO_DOMAIN,
//! SO_PROTOCOL) and its cookie (SO_COOKIE), the key the kernel programs know it by.
use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
};

use tollgate_common::SockKind;

/// A SOL_SOCKET option of exactly `size_of::<T>()` bytes.
fn get<T: Default>(socket: impl AsFd, name: libc::c_int) -> io::Result<T> {
    let mut value = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: value and len describe writable memory of exactly one T, and the
    // descriptor is borrowed for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
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
