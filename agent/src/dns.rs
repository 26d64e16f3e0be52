//! Tollgate's resolver: every DNS query a job sends (UDP and TCP, port 53, to any server
//! it names) arrives here. Each is attributed to its job by the kernel's record of the
//! datagram's source, decided (`dns:query`), answered from a small cache or forwarded to
//! the host's upstream resolvers, and recorded with its answers.
pub mod cache;
pub mod message;
pub mod names;
pub mod server;

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Resolve jobs' queries here. Off: their DNS datagrams are still redirected to the
    /// resolver address, where they are refused (fail closed).
    pub enabled: bool,
    /// Upstream resolvers; empty means the `nameserver` lines of /etc/resolv.conf.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream may take before the next is tried.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Answers kept (by name, type and class), each for its TTL.
    pub cache_entries: usize,
    /// The longest an answer is cached, whatever its TTL.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            upstreams: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_entries: 10_000,
            max_ttl: Duration::from_secs(300),
        }
    }
}

impl DnsConfig {
    /// The upstreams to forward to: the configured ones, else the host's.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        if !self.upstreams.is_empty() {
            return self.upstreams.clone();
        }
        let text = std::fs::read_to_string(Path::new("/etc/resolv.conf")).unwrap_or_default();
        nameservers(&text)
    }
}

/// The `nameserver` addresses of a resolv.conf, on port 53. None at all means the
/// resolver library's default, the local host.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    let servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let addr = rest.trim().split('%').next()?;
            addr.parse::<std::net::IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if servers.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 53))]
    } else {
        servers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_are_read() {
        let text = "# generated\nsearch corp.example\nnameserver 10.0.0.2\nnameserver  fe80::1%eth0\n\
                    nameserver bogus\noptions ndots:2\n";
        let servers = nameservers(text);
        assert_eq!(
            servers,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(nameservers(""), vec!["127.0.0.1:53".parse().unwrap()]);
    }
}
