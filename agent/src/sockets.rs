//! Which kinds of socket a job may create (`[sockets] allow`), and their names.
//!
//! Each entry is `family[/type[/protocol]]`, by name or number; a missing part or `*`
//! is any. The kernel resolves a protocol of 0 before the check (TCP for an IPv4 stream
//! socket), so entries name the protocol the socket really has.
use serde::{Deserialize, Serialize};
use tollgate_common::{SOCK_ANY, SockKind};

pub mod brought;
pub mod options;
pub mod scan;
pub mod tcp_diag;
#[cfg(test)]
mod tests;

/// `[sockets]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketsConfig {
    /// The kinds of socket a job may create; everything else fails with EPERM.
    pub allow: Vec<SockSpec>,
    /// Where the kernel cannot refuse other families (no BPF LSM), how often job
    /// processes are scanned for them.
    #[serde(with = "humantime_serde")]
    pub scan_interval: std::time::Duration,
}

impl Default for SocketsConfig {
    fn default() -> Self {
        let allow = [
            "inet/stream/tcp",
            "inet/stream/mptcp",
            "inet/dgram/udp",
            "inet6/stream/tcp",
            "inet6/stream/mptcp",
            "inet6/dgram/udp",
            "unix",
            // libc (getifaddrs, if_nameindex) and iproute (ip, ss).
            "netlink/*/route",
            "netlink/*/sock_diag",
        ]
        .iter()
        .filter_map(|s| SockSpec::parse(s).ok())
        .collect();
        Self {
            allow,
            scan_interval: std::time::Duration::from_millis(200),
        }
    }
}

impl SocketsConfig {
    /// The allow list as the kernel's map keys.
    pub fn kinds(&self) -> Vec<SockKind> {
        self.allow.iter().map(|s| s.kind).collect()
    }
}

/// One allow-list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct SockSpec {
    pub kind: SockKind,
}

impl TryFrom<String> for SockSpec {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<SockSpec> for String {
    fn from(spec: SockSpec) -> String {
        describe(spec.kind)
    }
}

const FAMILIES: &[(&str, u32)] = &[
    ("unix", 1),
    ("inet", 2),
    ("ax25", 3),
    ("ipx", 4),
    ("appletalk", 5),
    ("inet6", 10),
    ("key", 15),
    ("netlink", 16),
    ("packet", 17),
    ("rds", 21),
    ("irda", 23),
    ("can", 29),
    ("tipc", 30),
    ("bluetooth", 31),
    ("alg", 38),
    ("vsock", 40),
    ("kcm", 41),
    ("qipcrtr", 42),
    ("smc", 43),
    ("xdp", 44),
    ("mctp", 45),
];

const TYPES: &[(&str, u32)] = &[
    ("stream", 1),
    ("dgram", 2),
    ("raw", 3),
    ("rdm", 4),
    ("seqpacket", 5),
    ("dccp", 6),
    ("packet", 10),
];

const INET_PROTOCOLS: &[(&str, u32)] = &[
    ("ip", 0),
    ("icmp", 1),
    ("igmp", 2),
    ("tcp", 6),
    ("udp", 17),
    ("ipv6", 41),
    ("gre", 47),
    ("esp", 50),
    ("icmpv6", 58),
    ("sctp", 132),
    ("udplite", 136),
    ("raw", 255),
    ("mptcp", 262),
];

const NETLINK_PROTOCOLS: &[(&str, u32)] = &[
    ("route", 0),
    ("usersock", 2),
    ("firewall", 3),
    ("sock_diag", 4),
    ("nflog", 5),
    ("xfrm", 6),
    ("selinux", 7),
    ("iscsi", 8),
    ("audit", 9),
    ("fib_lookup", 10),
    ("connector", 11),
    ("netfilter", 12),
    ("ip6_fw", 13),
    ("dnrtmsg", 14),
    ("kobject_uevent", 15),
    ("generic", 16),
    ("scsitransport", 18),
    ("ecryptfs", 19),
    ("rdma", 20),
    ("crypto", 21),
    ("smc", 22),
];

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_NETLINK: u32 = 16;

fn protocols(family: u32) -> &'static [(&'static str, u32)] {
    match family {
        AF_INET | AF_INET6 => INET_PROTOCOLS,
        AF_NETLINK => NETLINK_PROTOCOLS,
        _ => &[],
    }
}

fn by_name(table: &[(&str, u32)], part: &str) -> Option<u32> {
    table
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(part))
        .map(|&(_, v)| v)
        .or_else(|| part.parse().ok())
}

fn name_of(table: &[(&str, u32)], value: u32) -> String {
    table
        .iter()
        .find(|&&(_, v)| v == value)
        .map_or_else(|| value.to_string(), |(name, _)| (*name).to_owned())
}

impl SockSpec {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split('/');
        let family = parts.next().unwrap_or_default().trim();
        let family = by_name(FAMILIES, family).ok_or_else(|| {
            format!(
                "`{text}`: unknown address family `{family}` (one of {}, or a number)",
                FAMILIES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let type_ = match wildcard(parts.next()) {
            None => SOCK_ANY,
            Some(part) => by_name(TYPES, part).ok_or_else(|| {
                format!(
                    "`{text}`: unknown socket type `{part}` (stream, dgram, raw, seqpacket, \
                     rdm, packet, `*`, or a number)"
                )
            })?,
        };
        let protocol = match wildcard(parts.next()) {
            None => SOCK_ANY,
            Some(part) => by_name(protocols(family), part)
                .ok_or_else(|| format!("`{text}`: unknown protocol `{part}` for this family"))?,
        };
        if parts.next().is_some() {
            return Err(format!("`{text}`: expected family[/type[/protocol]]"));
        }
        if type_ == SOCK_ANY && protocol != SOCK_ANY {
            // The kernel map has no (family, any type, protocol) key; spell the type.
            if family != AF_NETLINK {
                return Err(format!(
                    "`{text}`: a protocol needs a socket type (use `*` only for netlink)"
                ));
            }
        }
        Ok(Self {
            kind: SockKind {
                family,
                type_,
                protocol,
            },
        })
    }
}

fn wildcard(part: Option<&str>) -> Option<&str> {
    part.map(str::trim).filter(|p| *p != "*")
}

/// Netlink sockets are opened as SOCK_RAW or SOCK_DGRAM interchangeably: a
/// `netlink/*/proto` entry becomes one key per type.
pub fn expand(kinds: &[SockKind]) -> Vec<SockKind> {
    let mut out = Vec::with_capacity(kinds.len() + 2);
    for &kind in kinds {
        if kind.type_ == SOCK_ANY && kind.protocol != SOCK_ANY {
            for type_ in [2, 3] {
                out.push(SockKind { type_, ..kind });
            }
        } else {
            out.push(kind);
        }
    }
    out.sort_by_key(|k| (k.family, k.type_, k.protocol));
    out.dedup();
    out
}

/// `family/type/protocol` with names where known, e.g. `packet/raw/768`, `inet/dgram/icmp`.
pub fn describe(kind: SockKind) -> String {
    let mut text = name_of(FAMILIES, kind.family);
    if kind.type_ == SOCK_ANY && kind.protocol == SOCK_ANY {
        return text;
    }
    text.push('/');
    if kind.type_ == SOCK_ANY {
        text.push('*');
    } else {
        text.push_str(&name_of(TYPES, kind.type_));
    }
    if kind.protocol != SOCK_ANY {
        text.push('/');
        text.push_str(&name_of(protocols(kind.family), kind.protocol));
    }
    text
}
