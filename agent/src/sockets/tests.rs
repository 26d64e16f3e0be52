use super::*;

fn kind(family: u32, type_: u32, protocol: u32) -> SockKind {
    SockKind {
        family,
        type_,
        protocol,
    }
}

#[test]
fn entries_parse_by_name_and_number() {
    let p = |s: &str| SockSpec::parse(s).map(|s| s.kind);
    assert_eq!(p("inet/stream/tcp"), Ok(kind(2, 1, 6)));
    assert_eq!(p("INET6/dgram/udp"), Ok(kind(10, 2, 17)));
    assert_eq!(p("unix"), Ok(kind(1, SOCK_ANY, SOCK_ANY)));
    assert_eq!(p("packet/raw"), Ok(kind(17, 3, SOCK_ANY)));
    assert_eq!(p("inet/*"), Ok(kind(2, SOCK_ANY, SOCK_ANY)));
    assert_eq!(p("netlink/*/route"), Ok(kind(16, SOCK_ANY, 0)));
    assert_eq!(p("2/3/1"), Ok(kind(2, 3, 1)));
    assert_eq!(p("inet/dgram/icmp"), Ok(kind(2, 2, 1)));
    for bad in [
        "",
        "ipv4",
        "inet/stream/tcp/x",
        "inet/weird",
        "inet/*/tcp",
        "inet/raw/nope",
    ] {
        assert!(SockSpec::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn descriptions_round_trip() {
    for text in [
        "inet/stream/tcp",
        "inet6/dgram/udp",
        "unix",
        "netlink/*/route",
        "packet/raw",
        "vsock/stream",
        "inet/dgram/icmp",
    ] {
        assert_eq!(describe(SockSpec::parse(text).unwrap().kind), text);
    }
    assert_eq!(describe(kind(17, 3, 768)), "packet/raw/768");
    assert_eq!(describe(kind(99, 7, 5)), "99/7/5");
}

#[test]
fn the_default_allows_what_clients_need_and_nothing_raw() {
    let kinds = expand(&SocketsConfig::default().kinds());
    let allowed = |k: SockKind| {
        kinds.contains(&k)
            || kinds.contains(&SockKind {
                protocol: SOCK_ANY,
                ..k
            })
            || kinds.contains(&SockKind {
                type_: SOCK_ANY,
                protocol: SOCK_ANY,
                ..k
            })
    };
    for ok in [
        kind(2, 1, 6),
        kind(10, 1, 6),
        kind(2, 1, 262),
        kind(2, 2, 17),
        kind(10, 2, 17),
        kind(1, 1, 0),
        kind(1, 2, 0),
        kind(1, 5, 0),
        kind(16, 3, 0),
        kind(16, 2, 0),
        kind(16, 3, 4),
    ] {
        assert!(allowed(ok), "{}", describe(ok));
    }
    for refused in [
        kind(2, 3, 1),    // raw ICMP
        kind(2, 3, 255),  // IPPROTO_RAW
        kind(2, 2, 1),    // ICMP ping socket
        kind(10, 2, 58),  // ICMPv6 ping socket
        kind(17, 3, 768), // AF_PACKET
        kind(17, 2, 768), // AF_PACKET cooked
        kind(2, 1, 132),  // SCTP
        kind(2, 5, 132),  // SCTP seqpacket
        kind(40, 1, 0),   // AF_VSOCK
        kind(44, 3, 0),   // AF_XDP
        kind(16, 3, 9),   // netlink audit
        kind(16, 3, 16),  // netlink generic
        kind(2, 2, 136),  // UDP-Lite
    ] {
        assert!(!allowed(refused), "{}", describe(refused));
    }
}

#[test]
fn the_config_key_names_the_bad_entry() {
    let err = crate::config::Config::parse(
        "[sockets]\nallow = [\"unix\", \"inet/stream/tpc\"]\n",
        "agent.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("agent.toml:2:"), "{err}");
    assert!(err.contains("sockets.allow"), "{err}");
    assert!(err.contains("unknown protocol `tpc`"), "{err}");
}
