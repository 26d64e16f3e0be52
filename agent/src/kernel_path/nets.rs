//! The networks that stay on the proxy path, as LPM trie entries: each network with the
//! port ranges of every target that covers it (the trie answers with the longest match
//! only, so a narrower network carries the ranges of the wider ones too).
use ipnet::IpNet;
use tollgate_common::{AF_INET, AF_INET6, NetKey, PORT_SET_RANGES, PortSet};
use tollgate_policy::PortRange;

use crate::{bpf::LpmKey, enforce::KernelPlan};

const ANY: PortRange = PortRange {
    first: 1,
    last: u16::MAX,
};

fn key(net: &IpNet) -> LpmKey {
    match net {
        IpNet::V4(v4) => LpmKey {
            prefix_len: 32 + u32::from(v4.prefix_len()),
            net: NetKey {
                family: u32::from(AF_INET),
                ip: [tollgate_common::convert::ipv4_word(v4.network()), 0, 0, 0],
            },
        },
        IpNet::V6(v6) => LpmKey {
            prefix_len: 32 + u32::from(v6.prefix_len()),
            net: NetKey {
                family: u32::from(AF_INET6),
                ip: tollgate_common::convert::ipv6_words(v6.network()),
            },
        },
    }
}

/// The port set of a list of ranges: every port when any list is empty (any port) or
/// there are more ranges than the set holds.
fn port_set(ranges: &[PortRange]) -> PortSet {
    let mut set = PortSet::default();
    let ranges = if ranges.len() > PORT_SET_RANGES {
        &[ANY][..]
    } else {
        ranges
    };
    for (i, range) in ranges.iter().enumerate() {
        set.first[i] = range.first;
        set.last[i] = range.last;
    }
    set.count = ranges.len() as u32;
    set
}

pub fn entries(plan: &KernelPlan) -> Vec<(LpmKey, PortSet)> {
    let nets: Vec<IpNet> = {
        let mut nets: Vec<IpNet> = plan.proxied.iter().map(|(net, _, _)| net.trunc()).collect();
        nets.sort();
        nets.dedup();
        nets
    };
    nets.iter()
        .map(|net| {
            let mut ranges: Vec<PortRange> = Vec::new();
            for (other, ports, _) in &plan.proxied {
                if other.contains(net) {
                    if ports.is_empty() {
                        ranges.push(ANY);
                    } else {
                        ranges.extend(ports.iter().copied());
                    }
                }
            }
            if ranges.contains(&ANY) {
                ranges = vec![ANY];
            }
            ranges.dedup();
            (key(net), port_set(&ranges))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_narrow_network_carries_the_ports_of_the_wide_one() {
        let plan = KernelPlan {
            proxied: vec![
                (
                    "10.0.0.0/8".parse().unwrap(),
                    vec![PortRange {
                        first: 5432,
                        last: 5432,
                    }],
                    String::new(),
                ),
                (
                    "10.1.0.0/16".parse().unwrap(),
                    vec![PortRange {
                        first: 80,
                        last: 81,
                    }],
                    String::new(),
                ),
                ("::1/128".parse().unwrap(), Vec::new(), String::new()),
            ],
            ..KernelPlan::default()
        };
        let entries = entries(&plan);
        assert_eq!(entries.len(), 3);
        let narrow = entries.iter().find(|(k, _)| k.prefix_len == 48).unwrap();
        assert_eq!(narrow.1.count, 2);
        assert_eq!((narrow.1.first[0], narrow.1.last[0]), (5432, 5432));
        assert_eq!((narrow.1.first[1], narrow.1.last[1]), (80, 81));
        assert_eq!(narrow.0.net.ip[0].to_ne_bytes(), [10, 1, 0, 0]);
        let v6 = entries.iter().find(|(k, _)| k.prefix_len == 160).unwrap();
        assert_eq!((v6.1.count, v6.1.first[0], v6.1.last[0]), (1, 1, u16::MAX));
    }
}
