//! Destroying a live TCP socket from outside its process: SOCK_DESTROY through the
//! inet_diag netlink family (`CONFIG_INET_DIAG_DESTROY`), keyed by the socket's tuple
//! and cookie, so that no other socket can be hit.
use std::{
    io,
    mem::size_of,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

#[repr(C)]
#[derive(Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Default)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
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
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let family = if v6_socket {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DESTROY,
            flags: NLM_F_REQUEST | NLM_F_ACK,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: u32::MAX,
            id: InetDiagSockId {
                sport: local.port().to_be(),
                dport: remote.port().to_be(),
                src: tollgate_common::convert::ip_words(local.ip(), v6_socket),
                dst: tollgate_common::convert::ip_words(remote.ip(), v6_socket),
                interface: 0,
                cookie: [cookie as u32, (cookie >> 32) as u32],
            },
        },
    };
    // SAFETY: the kernel's netlink socket address, zeroed then addressed to pid 0.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: request is a plain #[repr(C)] message of the size passed; kernel is a
    // valid sockaddr_nl.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            (&raw const request).cast(),
            size_of::<Request>(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = [0u8; 512];
    // SAFETY: reading into a buffer of the size passed.
    let n = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let header = size_of::<NlMsgHdr>();
    if n < header + 4 {
        return Err(io::Error::other("short netlink reply"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind != NLMSG_ERROR {
        return Err(io::Error::other(format!(
            "unexpected netlink reply type {kind}"
        )));
    }
    let errno = i32::from_ne_bytes([
        reply[header],
        reply[header + 1],
        reply[header + 2],
        reply[header + 3],
    ]);
    match -errno {
        0 => Ok(true),
        libc::ENOENT => Ok(false),
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
    let cookie = socket_cookie(&client)?;
    if !destroy(client.local_addr()?, client.peer_addr()?, cookie, false)? {
        return Err(io::Error::other("SOCK_DESTROY found no socket to destroy"));
    }
    client.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
    match client.read(&mut [0; 1]) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
        other => Err(io::Error::other(format!(
            "a destroyed socket read {other:?}, not ECONNABORTED"
        ))),
    }
}

fn socket_cookie(stream: &std::net::TcpStream) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into the buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_has_the_kernel_layout() {
        assert_eq!(size_of::<InetDiagSockId>(), 48);
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(size_of::<Request>(), 72);
        let mapped = tollgate_common::convert::ip_words("127.0.0.1".parse().unwrap(), true);
        assert_eq!(mapped[2], 0xffff_u32.to_be());
        assert_eq!(mapped[3].to_ne_bytes(), [127, 0, 0, 1]);
    }
}
