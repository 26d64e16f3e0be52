//! cgroup/connect4|6 and cgroup/sendmsg4|6: record and redirect TCP connects of job
//! sockets to the proxy, DNS over UDP (port 53, connected or per datagram) to the agent's
//! resolver on the same address and port, and other UDP to the agent's relay, unless it
//! is refused here: no policy can permit it, or the agent denied the socket's flow.
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id,
        generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use tollgate_common::{
    AF_INET, AF_INET6, ConnInfo, Counter, EventKind, PATH_PROXY, RefusedKey, Settings, SockKind,
    TupleKey, UdpDenyKey,
};

use crate::{
    caller::{Caller, caller},
    maps::{
        CONN_BY_COOKIE, REFUSED_DST, TOLLGATE_SET_RETVAL, UDP_DENIED, UDP_RELAY_PEER,
        UDP_RELAY_PORT, count, report, settings,
    },
};

const ALLOW: i32 = 1;
/// Returning 0 from a cgroup sock_addr hook fails the syscall with EPERM.
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx, false) {
        Ok(v) | Err(v) => v,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx, false) {
        Ok(v) | Err(v) => v,
    }
}

/// A datagram with a destination (sendto, sendmsg): the same as a connect.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx, true) {
        Ok(v) | Err(v) => v,
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx, true) {
        Ok(v) | Err(v) => v,
    }
}

const DNS_PORT: u16 = 53;

/// Where a socket goes.
enum Route {
    /// Redirected: the proxy's port (TCP, DNS, first UDP datagrams), or the relay socket
    /// of a UDP destination.
    To(u16),
    /// Straight to its destination, on a kernel verdict.
    Direct,
}

#[inline(always)]
fn route(
    sa: *mut bpf_sock_addr,
    settings: &Settings,
    c: &Caller,
    dst: TupleKey,
    local: bool,
    sending: bool,
) -> Result<Route, i32> {
    let port = dst.port as u16;
    // SAFETY: the cookie helper is allowed in cgroup sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // A job never addresses Tollgate's own listeners, except where the kernel does so
    // for it: each send of a dual-stack socket connected to an IPv4-mapped address runs
    // sendmsg4 with the address that connect6 already redirected.
    // SAFETY: the values are not kept; only their presence matters.
    if local && (port == settings.proxy_port || unsafe { UDP_RELAY_PEER.get(dst.port).is_some() }) {
        // SAFETY: as above, only the entry's presence is read.
        if sending && is_udp(sa) && unsafe { CONN_BY_COOKIE.get(cookie).is_some() } {
            return Err(ALLOW);
        }
        crate::rare::refused(Counter::RefusedProxyDirect, port);
        return Err(REFUSE);
    }
    if is_tcp(sa) {
        if port != DNS_PORT && crate::verdict::direct(c, dst) {
            return Ok(Route::Direct);
        }
        refuse_remembered(dst)?;
        return Ok(Route::To(settings.proxy_port));
    }
    if port == DNS_PORT {
        return Ok(Route::To(settings.proxy_port));
    }
    // SAFETY: as above.
    let denied = unsafe { UDP_DENIED.get(UdpDenyKey { cookie, dst }).is_some() };
    if settings.udp_relay == 0 || denied {
        crate::rare::refused(Counter::RefusedUdp, port);
        report(EventKind::UdpRefused, SockKind::default(), dst);
        return Err(REFUSE);
    }
    count(Counter::UdpRelayed);
    // SAFETY: the value is copied out at once.
    Ok(Route::To(
        unsafe { UDP_RELAY_PORT.get(dst) }.map_or(settings.proxy_port, |p| *p as u16),
    ))
}

/// The port the socket is redirected to, or `None` when it went straight to its
/// destination (recorded for the kernel path). A kernel verdict whose event finds no room
/// in the ring takes the proxy path.
#[inline(always)]
fn redirect(
    sa: *mut bpf_sock_addr,
    settings: &Settings,
    c: &Caller,
    orig: (TupleKey, u16),
    local: bool,
    sending: bool,
) -> Result<Option<u16>, i32> {
    let (dst, sock_family) = orig;
    match route(sa, settings, c, dst, local, sending)? {
        Route::To(port) => Ok(Some(port)),
        Route::Direct => {
            // SAFETY: the cookie helper is allowed in cgroup sock_addr programs.
            let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
            let info = conn_info(
                c,
                cookie,
                dst.ip,
                dst.port as u16,
                dst.family as u16,
                sock_family,
            );
            match crate::verdict::record_direct(cookie, info) {
                Ok(true) => Ok(None),
                Ok(false) => Ok(Some(settings.proxy_port)),
                Err(()) => {
                    crate::rare::insert_failed(
                        Counter::RefusedMapFull,
                        "CONN_BY_COOKIE",
                        c.cgroup_id,
                    );
                    Err(REFUSE)
                }
            }
        }
    }
}

/// The largest errno a hook may return (the kernel's MAX_ERRNO).
const MAX_ERRNO: u32 = 4095;
const EPERM: u32 = 1;

/// A TCP connect to a destination that refused the proxy's last connect for this cgroup
/// (and has not been found listening since) is refused here, with the destination's
/// errno where the kernel lets the hook set it.
#[inline(always)]
fn refuse_remembered(dst: TupleKey) -> Result<(), i32> {
    // SAFETY: the helpers are allowed in cgroup sock_addr programs.
    let (cgroup_id, now) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_ns()) };
    let key = RefusedKey { cgroup_id, dst };
    let Some(refusal) = REFUSED_DST.get_ptr_mut(key) else {
        return Ok(());
    };
    // SAFETY: the pointer is to this entry's value; a racing writer can only lose a
    // count or a timestamp, which the agent tolerates.
    let errno = unsafe {
        (*refusal).last_attempt_ns = now;
        (*refusal).refused += 1;
        (*refusal).errno
    };
    // SAFETY: reading a read-only global the loader set.
    if unsafe { core::ptr::read_volatile(&TOLLGATE_SET_RETVAL) } != 0 {
        // Newer verifiers (7.x) want the value provably in [-4095, 0]: an errno outside
        // 1..=4095 (the agent never writes one) is EPERM.
        let errno = if errno == 0 || errno > MAX_ERRNO {
            EPERM
        } else {
            errno
        };
        // SAFETY: allowed in connect hooks on the kernels where the loader sets the flag.
        unsafe { bpf_set_retval(-(errno as i32)) };
    }
    crate::rare::refused(Counter::RefusedRemembered, dst.port as u16);
    Err(REFUSE)
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext, sending: bool) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields of a connect4 or sendmsg4 hook are readable.
    let (ip, port) = unsafe { ((*sa).user_ip4, u16::from_be((*sa).user_port as u16)) };
    if !is_tcp(sa) && !is_udp(sa) {
        return Ok(ALLOW);
    }
    let settings = configured()?;
    let c = caller();
    let dst = TupleKey {
        family: u32::from(AF_INET),
        port: u32::from(port),
        ip: [ip, 0, 0, 0],
    };
    let Some(to_port) = redirect(sa, &settings, &c, (dst, AF_INET), is_local4(ip), sending)? else {
        return Ok(ALLOW);
    };
    record(sa, &c, [ip, 0, 0, 0], port, AF_INET, AF_INET)?;
    // SAFETY: user_ip4 and user_port are writable in connect4.
    unsafe {
        (*sa).user_ip4 = settings.proxy_ip4;
        (*sa).user_port = u32::from(to_port.to_be());
    }
    count(Counter::Redirected);
    Ok(ALLOW)
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext, sending: bool) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    let (ip, port) = user_addr6(sa);
    if !is_tcp(sa) && !is_udp(sa) {
        return Ok(ALLOW);
    }
    let settings = configured()?;
    let c = caller();
    if is_v4_mapped(&ip) {
        let dst = TupleKey {
            family: u32::from(AF_INET),
            port: u32::from(port),
            ip: [ip[3], 0, 0, 0],
        };
        let orig = (dst, AF_INET6);
        let Some(to_port) = redirect(sa, &settings, &c, orig, is_local4(ip[3]), sending)? else {
            return Ok(ALLOW);
        };
        record(sa, &c, [ip[3], 0, 0, 0], port, AF_INET, AF_INET6)?;
        // SAFETY: user_ip6 and user_port are writable in connect6.
        unsafe {
            (*sa).user_ip6[0] = 0;
            (*sa).user_ip6[1] = 0;
            (*sa).user_ip6[2] = 0xffff_u32.to_be();
            (*sa).user_ip6[3] = settings.proxy_ip4;
            (*sa).user_port = u32::from(to_port.to_be());
        }
    } else {
        let dst = TupleKey {
            family: u32::from(AF_INET6),
            port: u32::from(port),
            ip,
        };
        let orig = (dst, AF_INET6);
        let Some(to_port) = redirect(sa, &settings, &c, orig, is_local6(&ip), sending)? else {
            return Ok(ALLOW);
        };
        record(sa, &c, ip, port, AF_INET6, AF_INET6)?;
        // SAFETY: as above.
        unsafe {
            (*sa).user_ip6[0] = settings.proxy_ip6[0];
            (*sa).user_ip6[1] = settings.proxy_ip6[1];
            (*sa).user_ip6[2] = settings.proxy_ip6[2];
            (*sa).user_ip6[3] = settings.proxy_ip6[3];
            (*sa).user_port = u32::from(to_port.to_be());
        }
    }
    count(Counter::Redirected);
    Ok(ALLOW)
}

#[inline(always)]
fn configured() -> Result<Settings, i32> {
    match settings() {
        Some(settings) => Ok(settings),
        None => {
            // Fail closed: without settings there is no proxy to send the job to.
            crate::rare::refused(Counter::RefusedUnconfigured, 0);
            Err(REFUSE)
        }
    }
}

/// The address and port of an IPv6 sock_addr hook (connect6, sendmsg6, recvmsg6,
/// getpeername6): each 4-byte word read separately, as the verifier requires.
#[inline(always)]
pub fn user_addr6(sa: *mut bpf_sock_addr) -> ([u32; 4], u16) {
    // SAFETY: user_ip6 and user_port are readable in every IPv6 sock_addr hook.
    unsafe {
        (
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            u16::from_be((*sa).user_port as u16),
        )
    }
}

#[inline(always)]
fn is_tcp(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: type and protocol are readable in every sock_addr hook.
    unsafe { (*sa).type_ == SOCK_STREAM && (*sa).protocol == IPPROTO_TCP }
}

#[inline(always)]
fn is_udp(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: as above.
    unsafe { (*sa).type_ == SOCK_DGRAM && (*sa).protocol == IPPROTO_UDP }
}

/// Records the connect in the caller's context. A failed insert refuses the connect:
/// a connection is never passed through unattributed.
#[inline(always)]
fn record(
    sa: *mut bpf_sock_addr,
    c: &Caller,
    orig_ip: [u32; 4],
    orig_port: u16,
    orig_family: u16,
    sock_family: u16,
) -> Result<(), i32> {
    // SAFETY: the cookie helper is allowed in cgroup sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let info = conn_info(c, cookie, orig_ip, orig_port, orig_family, sock_family);
    if CONN_BY_COOKIE.insert(cookie, info, 0).is_err() {
        crate::rare::insert_failed(Counter::RefusedMapFull, "CONN_BY_COOKIE", c.cgroup_id);
        return Err(REFUSE);
    }
    Ok(())
}

#[inline(always)]
fn conn_info(
    c: &Caller,
    cookie: u64,
    orig_ip: [u32; 4],
    orig_port: u16,
    orig_family: u16,
    sock_family: u16,
) -> ConnInfo {
    ConnInfo {
        orig_ip,
        orig_port,
        orig_family,
        tgid: c.tgid,
        tid: c.tid,
        uid: c.uid,
        gid: c.gid,
        sock_family,
        path: PATH_PROXY,
        cgroup_id: c.cgroup_id,
        cookie,
        ktime_ns: c.ktime_ns,
        comm: c.comm,
    }
}

/// 127.0.0.0/8 or 0.0.0.0 (network byte order).
#[inline(always)]
fn is_local4(ip: u32) -> bool {
    let host = u32::from_be(ip);
    host >> 24 == 127 || host == 0
}

/// ::1, :: or an IPv4-mapped local address (network byte order words).
#[inline(always)]
fn is_local6(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && (ip[3] == 0 || ip[3] == 1_u32.to_be())
}

#[inline(always)]
pub fn is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0xffff_u32.to_be()
}
