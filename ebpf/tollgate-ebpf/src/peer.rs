//! cgroup/getpeername4|6: show the client its original peer, not the proxy; and
//! cgroup/recvmsg4|6: show a job the datagrams of its resolver and of its UDP relay as
//! coming from the server it addressed.
use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use tollgate_common::{AF_INET, ConnInfo, TupleKey};

use crate::{
    connect::{is_v4_mapped, user_addr6},
    maps::{CONN_BY_COOKIE, UDP_RELAY_PEER, settings},
};

const ALLOW: i32 = 1;

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: user_ip4 and user_port (the datagram's source) are readable in recvmsg4.
    let (ip, port) = unsafe { ((*sa).user_ip4, u16::from_be((*sa).user_port as u16)) };
    let Some(settings) = settings() else {
        return ALLOW;
    };
    if ip != settings.proxy_ip4 {
        return ALLOW;
    }
    if port == settings.proxy_port {
        return show_original4(&ctx);
    }
    if let Some(peer) = relay_peer(port)
        && peer.family == u32::from(AF_INET)
    {
        set_peer4(sa, peer.ip[0], peer.port as u16);
    }
    ALLOW
}

/// The destination a relay socket's port carries.
#[inline(always)]
fn relay_peer(port: u16) -> Option<TupleKey> {
    // SAFETY: the value is copied out at once.
    unsafe { UDP_RELAY_PEER.get(u32::from(port)) }.copied()
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let (ip, port) = user_addr6(sa);
    let Some(settings) = settings() else {
        return ALLOW;
    };
    let ours = if is_v4_mapped(&ip) {
        ip[3] == settings.proxy_ip4
    } else {
        ip == settings.proxy_ip6
    };
    if !ours {
        return ALLOW;
    }
    if port == settings.proxy_port {
        return show_original6(&ctx);
    }
    if let Some(peer) = relay_peer(port) {
        set_peer6(sa, peer.family as u16, peer.ip, peer.port as u16);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    show_original4(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    show_original6(&ctx)
}

#[inline(always)]
fn show_original4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some(info) = lookup(ctx)
        && info.orig_family == AF_INET
    {
        set_peer4(sa, info.orig_ip[0], info.orig_port);
    }
    ALLOW
}

#[inline(always)]
fn show_original6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some(info) = lookup(ctx) {
        set_peer6(sa, info.orig_family, info.orig_ip, info.orig_port);
    }
    ALLOW
}

/// Shows `ip` (network order) and `port` as the address of an IPv4 hook's peer.
#[inline(always)]
fn set_peer4(sa: *mut bpf_sock_addr, ip: u32, port: u16) {
    // SAFETY: user_ip4 and user_port are writable in recvmsg4 and getpeername4.
    unsafe {
        (*sa).user_ip4 = ip;
        (*sa).user_port = u32::from(port.to_be());
    }
}

/// Shows an address of `family` (IPv4 as IPv4-mapped) as an IPv6 hook's peer; each
/// 4-byte word written separately, as the verifier requires.
#[inline(always)]
fn set_peer6(sa: *mut bpf_sock_addr, family: u16, ip: [u32; 4], port: u16) {
    let ip = if family == AF_INET {
        [0, 0, 0xffff_u32.to_be(), ip[0]]
    } else {
        ip
    };
    // SAFETY: user_ip6 and user_port are writable in recvmsg6 and getpeername6.
    unsafe {
        (*sa).user_ip6[0] = ip[0];
        (*sa).user_ip6[1] = ip[1];
        (*sa).user_ip6[2] = ip[2];
        (*sa).user_ip6[3] = ip[3];
        (*sa).user_port = u32::from(port.to_be());
    }
}

#[inline(always)]
fn lookup(ctx: &SockAddrContext) -> Option<ConnInfo> {
    // SAFETY: the cookie helper is allowed in sock_addr programs; the value is copied.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.sock_addr.cast());
        CONN_BY_COOKIE.get(cookie).copied()
    }
}
