//! cgroup/getpeername4 and getpeername6: show the client its original peer, not the proxy.
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use tollgate_common::{AF_INET, ConnInfo};

use crate::maps::CONN_BY_COOKIE;

const ALLOW: i32 = 1;

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some(info) = lookup(&ctx)
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

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if let Some(info) = lookup(&ctx) {
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
