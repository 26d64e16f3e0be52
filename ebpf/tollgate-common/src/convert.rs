//! Between the kernel's records and the agent's addresses and names (userspace only).
//!
//! The kernel writes addresses as 32-bit words in network byte order, in memory order
//! (`ip[0]` holds an IPv4 address, or the first four bytes of an IPv6 one), ports in host
//! order, and `comm` NUL padded. Every conversion the agent makes lives here.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::{AF_INET, AF_INET6, ConnInfo, TupleKey};

/// An IPv4 address as the kernel's word.
pub fn ipv4_word(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// An IPv6 address as the kernel's four words.
pub fn ipv6_words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])
    })
}

/// The inverse of [`ipv6_words`].
pub fn ipv6_from_words(words: [u32; 4]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(octets)
}

/// An address as the kernel's words: for an AF_INET6 socket (`v6_socket`), IPv4 as
/// IPv4-mapped.
pub fn ip_words(ip: IpAddr, v6_socket: bool) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) if v6_socket => ipv6_words(v4.to_ipv6_mapped()),
        IpAddr::V4(v4) => [ipv4_word(v4), 0, 0, 0],
        IpAddr::V6(v6) => ipv6_words(v6),
    }
}

/// A kernel `comm` (NUL padded) as text.
pub fn comm(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

impl TupleKey {
    /// The kernel's key for an address, canonical: IPv4-mapped IPv6 as IPv4.
    pub fn from_addr(addr: SocketAddr) -> Self {
        let (ip, port) = (addr.ip().to_canonical(), addr.port());
        match ip {
            IpAddr::V4(v4) => Self {
                family: u32::from(AF_INET),
                port: u32::from(port),
                ip: [ipv4_word(v4), 0, 0, 0],
            },
            IpAddr::V6(v6) => Self {
                family: u32::from(AF_INET6),
                port: u32::from(port),
                ip: ipv6_words(v6),
            },
        }
    }

    /// The address a kernel key names.
    pub fn addr(&self) -> SocketAddr {
        let port = self.port as u16;
        if self.family == u32::from(AF_INET) {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(self.ip[0].to_ne_bytes()),
                port,
            ))
        } else {
            SocketAddr::V6(SocketAddrV6::new(ipv6_from_words(self.ip), port, 0, 0))
        }
    }
}

impl ConnInfo {
    /// The original destination the kernel recorded, in canonical form.
    pub fn original_destination(&self) -> SocketAddr {
        if self.orig_family == AF_INET {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(self.orig_ip[0].to_ne_bytes()),
                self.orig_port,
            ))
        } else {
            SocketAddr::V6(SocketAddrV6::new(
                ipv6_from_words(self.orig_ip),
                self.orig_port,
                0,
                0,
            ))
        }
    }

    /// The process name, up to the first NUL.
    pub fn comm(&self) -> String {
        comm(&self.comm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_what_the_kernel_writes() {
        let key = TupleKey::from_addr("127.0.0.1:40000".parse().unwrap());
        assert_eq!(key.family, u32::from(AF_INET));
        assert_eq!(key.port, 40000);
        // Network order in memory: 127 is the first byte.
        assert_eq!(key.ip[0].to_ne_bytes(), [127, 0, 0, 1]);
        let mapped = TupleKey::from_addr("[::ffff:127.0.0.1]:40000".parse().unwrap());
        assert_eq!(mapped, key);
        let v6 = TupleKey::from_addr("[::1]:1".parse().unwrap());
        assert_eq!(v6.family, u32::from(AF_INET6));
        assert_eq!(v6.ip, [0, 0, 0, 1_u32.to_be()]);
        for addr in ["127.0.0.1:40000", "[2001:db8::7]:443"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(TupleKey::from_addr(addr).addr(), addr);
        }
    }

    #[test]
    fn ipv6_words_round_trip() {
        let ip: Ipv6Addr = "2001:db8::1:2".parse().unwrap();
        assert_eq!(ipv6_from_words(ipv6_words(ip)), ip);
        let mapped = ip_words("127.0.0.1".parse().unwrap(), true);
        assert_eq!(mapped[3].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(
            ip_words("127.0.0.1".parse().unwrap(), false)[1..],
            [0, 0, 0]
        );
    }

    #[test]
    fn destinations_and_names_are_canonical() {
        let mut info = ConnInfo {
            orig_family: AF_INET,
            orig_port: 5432,
            ..Default::default()
        };
        info.orig_ip[0] = u32::from_ne_bytes([10, 1, 2, 3]);
        assert_eq!(info.original_destination().to_string(), "10.1.2.3:5432");
        info.orig_family = AF_INET6;
        info.orig_ip = ipv6_words("2001:db8::1".parse().unwrap());
        assert_eq!(
            info.original_destination().to_string(),
            "[2001:db8::1]:5432"
        );
        info.comm[..4].copy_from_slice(b"psql");
        assert_eq!(info.comm(), "psql");
        assert_eq!(comm(&[b'x'; 16]), "x".repeat(16));
    }
}
