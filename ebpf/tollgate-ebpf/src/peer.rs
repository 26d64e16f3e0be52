//! cgroup/getpeername4|6: show the client its original peer, not the proxy; and
//! cgroup/recvmsg4|6: show a job the datagrams of its resolver and of its UDP relay as
//! coming from the server it addressed.
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
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
        // SAFETY: user_ip4 and user_port are writable in recvmsg4.
        unsafe {
            (*sa).user_ip4 = peer.ip[0];
            (*sa).user_port = u32::from((peer.port as u16).to_be());
        }
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
        let ip = if peer.family == u32::from(AF_INET) {
            [0, 0, 0xffff_u32.to_be(), peer.ip[0]]
        } else {
            peer.ip
        };
        // SAFETY: user_ip6 and user_port are writable in recvmsg6.
        unsafe {
            (*sa).user_ip6[0] = ip[0];
            (*sa).user_ip6[1] = ip[1];
            (*sa).user_ip6[2] = ip[2];
            (*sa).user_ip6[3] = ip[3];
            (*sa).user_port = u32::from((peer.port as u16).to_be());
        }
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
        // SAFETY: user_ip4 and user_port are writable in getpeername4.
        unsafe {
            (*sa).user_ip4 = info.orig_ip[0];
            (*sa).user_port = u32::from(info.orig_port.to_be());
        }
    }
    ALLOW
}

#[inline(always)]
fn show_original6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some(info) = lookup(ctx) {
        let ip = if info.orig_family == AF_INET {
            [0, 0, 0xffff_u32.to_be(), info.orig_ip[0]]
        } else {
            info.orig_ip
        };
        // SAFETY: user_ip6 and user_port are writable in getpeername6.
        unsafe {
            (*sa).user_ip6[0] = ip[0];
            (*sa).user_ip6[1] = ip[1];
            (*sa).user_ip6[2] = ip[2];
            (*sa).user_ip6[3] = ip[3];
            (*sa).user_port = u32::from(info.orig_port.to_be());
        }
    }
    ALLOW
}

#[inline(always)]
fn lookup(ctx: &SockAddrContext) -> Option<ConnInfo> {
    // SAFETY: the cookie helper is allowed in sock_addr programs; the value is copied.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.sock_addr.cast());
        CONN_BY_COOKIE.get(cookie).copied()
    }
}
