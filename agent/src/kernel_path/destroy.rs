//! Destroying a live TCP socket from outside its process: SOCK_DESTROY through the
//! inet_diag netlink family (`CONFIG_INET_DIAG_DESTROY`), keyed by the socket's tuple
//! and cookie, so that no other socket can be hit.
use std::{io, net::SocketAddr, os::fd::AsRawFd as _};

use nix::{
    errno::Errno,
    sys::socket::{AddressFamily, MsgFlags, recv},
};

use crate::sockets::tcp_diag::{
    HEADER_LEN, NLM_F_REQUEST, NLMSG_ERROR, REQUEST_LEN, request_head, send,
};

const SOCK_DESTROY: u16 = 21;
const NLM_F_ACK: u16 = 4;

/// The SOCK_DESTROY request for one socket, in the kernel's layout (native byte order,
/// ports and addresses in network order).
fn request(local: SocketAddr, remote: SocketAddr, cookie: u64, v6_socket: bool) -> Vec<u8> {
    let family = if v6_socket {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let mut out = request_head(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family);
    out.extend_from_slice(&local.port().to_be_bytes());
    out.extend_from_slice(&remote.port().to_be_bytes());
    for ip in [local.ip(), remote.ip()] {
        for word in tollgate_common::convert::ip_words(ip, v6_socket) {
            out.extend_from_slice(&word.to_ne_bytes());
        }
    }
    out.extend_from_slice(&0u32.to_ne_bytes()); // interface
    out.extend_from_slice(&(cookie as u32).to_ne_bytes());
    out.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    debug_assert_eq!(out.len(), REQUEST_LEN);
    out
}

/// Destroys the TCP socket from `local` to `remote` with this cookie. `v6_socket`: the
/// socket is AF_INET6 (a dual-stack socket with IPv4-mapped addresses included). Ok(false)
/// when no such socket exists any more.
pub fn destroy(
    local: SocketAddr,
    remote: SocketAddr,
    cookie: u64,
    v6_socket: bool,
) -> io::Result<bool> {
    let fd = send(&request(local, remote, cookie, v6_socket))?;
    let mut reply = [0u8; 512];
    let n = recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty())?;
    let reply = &reply[..n];
    let (Some(kind), Some(errno)) = (reply.get(4..6), reply.get(HEADER_LEN..HEADER_LEN + 4)) else {
        return Err(io::Error::other("short netlink reply"));
    };
    let kind = u16::from_ne_bytes([kind[0], kind[1]]);
    if kind != NLMSG_ERROR {
        return Err(io::Error::other(format!(
            "unexpected netlink reply type {kind}"
        )));
    }
    let errno = i32::from_ne_bytes([errno[0], errno[1], errno[2], errno[3]]);
    match -errno {
        0 => Ok(true),
        e if e == Errno::ENOENT as i32 => Ok(false),
        other => Err(io::Error::from_raw_os_error(other)),
    }
}

/// Whether this kernel can destroy a socket from outside: a loopback connection of the
/// agent's own is destroyed through [`destroy`]. Fails where SOCK_DESTROY does not
/// work (no `CONFIG_INET_DIAG_DESTROY`, or tcp_diag neither built in nor loadable).
pub fn probe() -> io::Result<()> {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    let cookie = crate::sockets::options::cookie(&client)?;
    if !destroy(client.local_addr()?, client.peer_addr()?, cookie, false)? {
        return Err(io::Error::other("SOCK_DESTROY found no socket to destroy"));
    }
    client.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
    match client.read(&mut [0; 1]) {
        Err(e) if e.raw_os_error() == Some(Errno::ECONNABORTED as i32) => Ok(()),
        other => Err(io::Error::other(format!(
            "a destroyed socket read {other:?}, not ECONNABORTED"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_has_the_kernel_layout() {
        let local: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let remote: SocketAddr = "127.0.0.2:40000".parse().unwrap();
        let bytes = request(local, remote, 0x1122_3344_5566_7788, false);
        assert_eq!(bytes.len(), 72);
        assert_eq!(bytes[..4], 72u32.to_ne_bytes());
        assert_eq!(bytes[4..6], SOCK_DESTROY.to_ne_bytes());
        assert_eq!(bytes[16], libc::AF_INET as u8);
        assert_eq!(bytes[17], libc::IPPROTO_TCP as u8);
        assert_eq!(bytes[24..28], [0x15, 0x38, 0x9c, 0x40]);
        assert_eq!(bytes[28..32], [127, 0, 0, 1]);
        assert_eq!(bytes[44..48], [127, 0, 0, 2]);
        assert_eq!(bytes[64..68], 0x5566_7788u32.to_ne_bytes());
        assert_eq!(bytes[68..72], 0x1122_3344u32.to_ne_bytes());
        let mapped = tollgate_common::convert::ip_words("127.0.0.1".parse().unwrap(), true);
        assert_eq!(mapped[2], 0xffff_u32.to_be());
        assert_eq!(mapped[3].to_ne_bytes(), [127, 0, 0, 1]);
    }
}
