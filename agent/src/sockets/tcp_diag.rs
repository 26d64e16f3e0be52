//! The host's TCP sockets as the kernel lists them (an inet_diag dump over
//! NETLINK_SOCK_DIAG): which addresses are an end of a socket right now, in any state.
use std::{collections::HashSet, io, net::SocketAddr, os::fd::AsRawFd as _};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};
use tollgate_common::TupleKey;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub(crate) const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32.
pub(crate) const HEADER_LEN: usize = 16;
/// nlmsghdr + struct inet_diag_req_v2 (family, protocol, ext, pad: u8; states: u32;
/// inet_diag_sockid: sport, dport: be16; src, dst: [be32; 4]; if: u32; cookie: [u32; 2]).
pub(crate) const REQUEST_LEN: usize = HEADER_LEN + 8 + 48;
/// In an inet_diag_msg: family at 0; the sockid from 4: sport and dport (be16) at 4 and
/// 6, the source and destination addresses ([be32; 4]) at 8 and 24.
const MSG_FAMILY: usize = 0;
const MSG_SPORT: usize = 4;
const MSG_DPORT: usize = 6;
const MSG_SRC: usize = 8;
const MSG_DST: usize = 24;
const MSG_MIN: usize = 40;

/// Both ends (local and remote address) of every TCP socket of the host, canonical as
/// the kernel's keys are (IPv4-mapped IPv6 as IPv4). A connection waiting in a
/// listener's accept queue is there by its remote end even once its client closed.
pub fn endpoints() -> io::Result<HashSet<TupleKey>> {
    let mut out = HashSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        dump(family, &mut out)?;
    }
    Ok(out)
}

/// The start of an inet_diag request for TCP sockets in every state, up to its
/// inet_diag_sockid, which the caller appends (48 bytes).
pub(crate) fn request_head(kind: u16, flags: u16, family: AddressFamily) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_LEN);
    out.extend_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes()); // seq
    out.extend_from_slice(&0u32.to_ne_bytes()); // pid
    out.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    out.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    out
}

fn dump_request(family: AddressFamily) -> Vec<u8> {
    let mut out = request_head(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family);
    out.resize(REQUEST_LEN, 0);
    out
}

/// A NETLINK_SOCK_DIAG socket with `request` sent to the kernel: read the reply on it.
pub(crate) fn send(request: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    sendto(
        fd.as_raw_fd(),
        request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    Ok(fd)
}

fn dump(family: AddressFamily, out: &mut HashSet<TupleKey>) -> io::Result<()> {
    let fd = send(&dump_request(family))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 {
            return Err(io::Error::other("sock_diag dump ended without NLMSG_DONE"));
        }
        if parse(&buf[..n], out)? {
            return Ok(());
        }
    }
}

/// Adds the sockets of one datagram of the dump; true at its end.
fn parse(mut data: &[u8], out: &mut HashSet<TupleKey>) -> io::Result<bool> {
    while data.len() >= HEADER_LEN {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < HEADER_LEN || len > data.len() {
            return Err(io::Error::other("malformed sock_diag reply"));
        }
        let body = &data[HEADER_LEN..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= MSG_MIN => {
                out.extend(end(body, MSG_SPORT, MSG_SRC));
                out.extend(end(body, MSG_DPORT, MSG_DST));
            }
            _ => {}
        }
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(false)
}

/// One end of a socket: its port and address at these offsets.
fn end(msg: &[u8], port_at: usize, addr_at: usize) -> Option<TupleKey> {
    let port = u16::from_be_bytes(msg.get(port_at..port_at + 2)?.try_into().ok()?);
    let addr: [u8; 16] = msg.get(addr_at..addr_at + 16)?.try_into().ok()?;
    let ip = match i32::from(msg[MSG_FAMILY]) {
        libc::AF_INET => std::net::IpAddr::from([addr[0], addr[1], addr[2], addr[3]]),
        libc::AF_INET6 => std::net::IpAddr::from(addr),
        _ => return None,
    };
    Some(TupleKey::from_addr(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_of_connected_and_v4_mapped_sockets_are_listed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let v6 = std::net::TcpListener::bind("[::]:0").unwrap();
        let mapped =
            std::net::TcpStream::connect(("127.0.0.1", v6.local_addr().unwrap().port())).unwrap();
        let (accepted, _) = v6.accept().unwrap();
        let tuples = endpoints().unwrap();
        for addr in [
            client.local_addr().unwrap(),
            listener.local_addr().unwrap(),
            mapped.local_addr().unwrap(),
            accepted.local_addr().unwrap(),
        ] {
            assert!(tuples.contains(&TupleKey::from_addr(addr)), "{addr}");
        }
        // The control: a port no socket of this test has.
        let unused = SocketAddr::new(client.local_addr().unwrap().ip(), 1);
        assert!(!tuples.contains(&TupleKey::from_addr(unused)));
    }

    #[test]
    fn a_truncated_reply_is_an_error_not_a_panic() {
        let mut reply = 100u32.to_ne_bytes().to_vec();
        reply.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        reply.resize(20, 0);
        assert!(parse(&reply, &mut HashSet::new()).is_err());
        assert!(!parse(&[1, 2, 3], &mut HashSet::new()).unwrap());
    }
}
