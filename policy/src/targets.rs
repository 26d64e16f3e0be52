//! The targets catalog: named destinations matched by address, port and DNS name, with
//! a protocol hint and tags. Every destination becomes a Cedar `Target`: a catalog entry,
//! or an unknown target with just its address and port.
use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Mode;

/// A port or an inclusive port range, written `5432` or `"8000-8100"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PortSpec", into = "PortSpec")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum PortSpec {
    Port(u16),
    Text(String),
}

impl TryFrom<PortSpec> for PortRange {
    type Error = String;

    fn try_from(spec: PortSpec) -> Result<Self, String> {
        match spec {
            PortSpec::Port(0) => Err("port 0 is not a port".to_owned()),
            PortSpec::Port(port) => Ok(PortRange {
                first: port,
                last: port,
            }),
            PortSpec::Text(text) => {
                let parse = |p: &str| {
                    p.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|&p| p != 0)
                        .ok_or_else(|| format!("`{text}` is not a port or a range like 8000-8100"))
                };
                match text.split_once('-') {
                    Some((first, last)) => {
                        let (first, last) = (parse(first)?, parse(last)?);
                        if first > last {
                            return Err(format!("`{text}`: the range is empty"));
                        }
                        Ok(PortRange { first, last })
                    }
                    None => {
                        let port = parse(&text)?;
                        Ok(PortRange {
                            first: port,
                            last: port,
                        })
                    }
                }
            }
        }
    }
}

impl From<PortRange> for PortSpec {
    fn from(range: PortRange) -> Self {
        if range.first == range.last {
            PortSpec::Port(range.first)
        } else {
            PortSpec::Text(format!("{}-{}", range.first, range.last))
        }
    }
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// What masks the results a client sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultsMasking {
    /// Column rules only.
    #[default]
    Rules,
    /// Column rules, and the value detectors on values of text-like types.
    Detect,
}

/// A target's `masking = { results = "detect" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetMasking {
    pub results: ResultsMasking,
}

/// What the agent does with TLS to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetTls {
    /// Terminate the client's TLS with the local CA, and originate TLS to the target.
    Terminate,
}

/// One named target of the catalog (`[[targets]]` in the agent's config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub name: String,
    /// Addresses or networks, e.g. `"10.0.0.0/8"`, `"127.0.0.1"`, `"::1/128"`.
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
    /// Ports or ranges; empty means any port.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// DNS names that resolve to this target (informational until DNS-aware matching).
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// A protocol hint, e.g. `"postgres"` or `"http"`.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Overrides the global mode (`enforce` or `audit`) for this target.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Overrides `[masking]` settings for this target's sessions.
    #[serde(default)]
    pub masking: Option<TargetMasking>,
    /// `false` keeps every connection to this target on the proxy path, even where its
    /// decision is final in the kernel (`proxy.kernel_verdicts`).
    #[serde(default)]
    pub kernel_verdicts: Option<bool>,
    /// `"terminate"`: the agent terminates clients' TLS to this target with its local CA
    /// and originates TLS to it, so an L7 protocol (`protocol = "http"`) is followed
    /// inside. Unset: TLS passes untouched.
    #[serde(default)]
    pub tls: Option<TargetTls>,
    /// Addresses `dns_names` resolved to (filled in by the agent; not configured).
    #[serde(skip)]
    pub resolved: Vec<IpAddr>,
}

impl TargetSpec {
    /// A target with neither cidrs nor DNS names matches any address; one with DNS names
    /// matches only the addresses they resolved to (and its cidrs).
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical(ip);
        let any_address = self.cidrs.is_empty() && self.dns_names.is_empty();
        let address = any_address
            || self.cidrs.iter().any(|net| net_contains(net, ip))
            || self.resolved.iter().any(|r| {
                let r = canonical(*r);
                r == ip || (r.is_loopback() && ip.is_loopback())
            });
        address && (self.ports.is_empty() || self.ports.iter().any(|range| range.contains(port)))
    }

    /// Checks the entry; the message names the problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("a target needs a name".to_owned());
        }
        if self.cidrs.is_empty() && self.ports.is_empty() && self.dns_names.is_empty() {
            return Err(format!(
                "target `{}` would match every destination: give cidrs, dns_names or ports",
                self.name
            ));
        }
        Ok(())
    }
}

/// The one spelling policy sees for a destination address.
///
/// - IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) addresses are IPv4.
/// - Every spelling of the local host is loopback: `0.0.0.0` and all of 127/8 become
///   `127.0.0.1`; `::` and `::1` become `::1`. The kernel delivers a connect to any of
///   them to the local host, and a service bound to a wildcard answers on all of them.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let o = v6.octets();
                // IPv4-compatible ::a.b.c.d (deprecated, but the kernel still parses it);
                // :: and ::1 are the IPv6 unspecified and loopback addresses instead.
                if o[..12].iter().all(|&b| b == 0)
                    && u32::from_be_bytes([o[12], o[13], o[14], o[15]]) > 1
                {
                    IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
                } else {
                    ip
                }
            }
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() || v4.is_unspecified() => {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        other => other,
    }
}

/// Whether `net` holds a spelling of the local host (in 127/8, `0.0.0.0`, `::1` or `::`).
fn covers_loopback(net: &IpNet) -> bool {
    [
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    ]
    .iter()
    .any(|ip| net.contains(ip))
        || matches!(net, IpNet::V4(v4) if v4.network().is_loopback())
}

/// Whether a (canonical) address falls in `net`. The local host is one host: a
/// loopback destination of either family matches any network that holds a loopback
/// spelling, so `127.0.0.1`, `127.0.0.2`, `0.0.0.0`, `::1` and `::` all reach a target
/// written as any one of them.
fn net_contains(net: &IpNet, ip: IpAddr) -> bool {
    if ip.is_loopback() {
        covers_loopback(net)
    } else {
        net.contains(&ip)
    }
}

/// The catalog: the first matching entry wins, in config order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    targets: Vec<TargetSpec>,
}

impl Catalog {
    pub fn new(targets: Vec<TargetSpec>) -> Result<Self, String> {
        let mut names = std::collections::HashSet::new();
        for target in &targets {
            target.validate()?;
            if !names.insert(target.name.as_str()) {
                return Err(format!("target `{}` is defined twice", target.name));
            }
        }
        Ok(Self { targets })
    }

    pub fn targets(&self) -> &[TargetSpec] {
        &self.targets
    }

    pub fn lookup(&self, ip: IpAddr, port: u16) -> Option<&TargetSpec> {
        self.targets.iter().find(|t| t.matches(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, cidrs: &[&str], ports: &[&str]) -> TargetSpec {
        TargetSpec {
            name: name.to_owned(),
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ports: ports
                .iter()
                .map(|p| PortRange::try_from(PortSpec::Text((*p).to_owned())).unwrap())
                .collect(),
            dns_names: Vec::new(),
            protocol: None,
            tags: BTreeMap::new(),
            mode: None,
            masking: None,
            kernel_verdicts: None,
            tls: None,
            resolved: Vec::new(),
        }
    }

    #[test]
    fn cidr_and_port_range_matching() {
        let catalog = Catalog::new(vec![
            target("prod-db", &["10.1.0.0/16"], &["5432"]),
            target("internal-web", &["10.0.0.0/8", "fd00::/8"], &["8000-8100"]),
            target("any-ssh", &[], &["22"]),
        ])
        .unwrap();
        let name = |ip: &str, port| {
            catalog
                .lookup(ip.parse().unwrap(), port)
                .map(|t| t.name.clone())
        };
        assert_eq!(name("10.1.2.3", 5432).as_deref(), Some("prod-db"));
        assert_eq!(name("10.1.2.3", 5433), None);
        assert_eq!(name("10.9.9.9", 8000).as_deref(), Some("internal-web"));
        assert_eq!(name("10.9.9.9", 8100).as_deref(), Some("internal-web"));
        assert_eq!(name("10.9.9.9", 8101), None);
        assert_eq!(name("fd00::1", 8050).as_deref(), Some("internal-web"));
        assert_eq!(
            name("::ffff:10.1.0.1", 5432).as_deref(),
            Some("prod-db"),
            "mapped"
        );
        assert_eq!(name("192.0.2.1", 22).as_deref(), Some("any-ssh"));
    }

    #[test]
    fn dns_names_match_only_their_resolved_addresses() {
        let mut named = target("db", &[], &["5432"]);
        named.dns_names = vec!["db.internal".to_owned()];
        assert!(
            !named.matches("10.0.0.1".parse().unwrap(), 5432),
            "unresolved: nothing"
        );
        named.resolved = vec!["10.0.0.1".parse().unwrap()];
        assert!(named.matches("10.0.0.1".parse().unwrap(), 5432));
        assert!(named.matches("::ffff:10.0.0.1".parse().unwrap(), 5432));
        assert!(!named.matches("10.0.0.2".parse().unwrap(), 5432));
    }

    #[test]
    fn every_spelling_of_the_local_host_is_loopback() {
        for spelling in [
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.254",
            "0.0.0.0",
            "::ffff:0.0.0.0",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::127.1.2.3",
        ] {
            assert_eq!(
                canonical(spelling.parse().unwrap()).to_string(),
                "127.0.0.1",
                "{spelling}"
            );
        }
        for spelling in ["::", "::1"] {
            assert_eq!(canonical(spelling.parse().unwrap()).to_string(), "::1");
        }
        assert_eq!(
            canonical("::10.1.2.3".parse().unwrap()).to_string(),
            "10.1.2.3"
        );
        assert_eq!(
            canonical("10.1.2.3".parse().unwrap()).to_string(),
            "10.1.2.3"
        );
        assert_eq!(
            canonical("2001:db8::1".parse().unwrap()).to_string(),
            "2001:db8::1"
        );

        // A target written with one loopback spelling matches all of them; others do not.
        let catalog = Catalog::new(vec![
            target("redis", &["127.0.0.1/32"], &["6379"]),
            target("db", &["::1/128"], &["5432"]),
            target("lan", &["10.0.0.0/8"], &["80"]),
        ])
        .unwrap();
        let name = |ip: &str, port| {
            catalog
                .lookup(ip.parse().unwrap(), port)
                .map(|t| t.name.clone())
        };
        for spelling in [
            "0.0.0.0",
            "::",
            "127.0.0.2",
            "::ffff:0.0.0.0",
            "::1",
            "::127.0.0.1",
        ] {
            assert_eq!(name(spelling, 6379).as_deref(), Some("redis"), "{spelling}");
            assert_eq!(name(spelling, 5432).as_deref(), Some("db"), "{spelling}");
            assert_eq!(name(spelling, 80), None, "{spelling}");
        }
        assert_eq!(name("10.0.0.1", 80).as_deref(), Some("lan"));
        assert_eq!(name("10.0.0.1", 6379), None);
    }

    #[test]
    fn bad_entries_are_rejected() {
        assert!(PortRange::try_from(PortSpec::Text("9-1".into())).is_err());
        assert!(PortRange::try_from(PortSpec::Text("http".into())).is_err());
        assert!(PortRange::try_from(PortSpec::Port(0)).is_err());
        assert!(Catalog::new(vec![target("a", &[], &[])]).is_err());
        assert!(Catalog::new(vec![target("a", &[], &["1"]), target("a", &[], &["2"])]).is_err());
    }
}
