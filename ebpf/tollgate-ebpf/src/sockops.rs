//! sock_ops: key each intercepted connection by its client tuple once the local port is
//! bound (TCP_CONNECT_CB, before the SYN), and drop that key again if the connection
//! fails before it could be accepted. For a kernel-path connection, report its establish
//! and its close (with the bytes each way) instead.
use core::ptr::addr_of;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, BPF_TCP_FIN_WAIT1, BPF_TCP_FIN_WAIT2, BPF_TCP_SYN_SENT,
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use tollgate_common::{
    AF_INET, AF_INET6, ConnInfo, Counter, EventKind, KernelConnEvent, PATH_KERNEL, PATH_PROXY,
    TupleKey,
};

use crate::{
    connect::is_v4_mapped,
    maps::{CONN_BY_COOKIE, JOB_SOCKETS, KERNEL_CONNS},
    verdict::report_conn,
};

const DONE: u32 = 1;

/// Named apart from the `sockops` section to avoid a symbol clash.
#[sock_ops]
pub fn tollgate_sockops(ctx: SockOpsContext) -> u32 {
    match try_sockops(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_sockops(ctx: &SockOpsContext) -> Result<u32, u32> {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ctx),
        BPF_SOCK_OPS_STATE_CB => on_state(ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accepted(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(ctx),
        _ => Ok(DONE),
    }
}

fn on_connect(ctx: &SockOpsContext) -> Result<u32, u32> {
    // SAFETY: the cookie helper is allowed in sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the value is copied out at once; the entry is only removed by
    // sock_release, which cannot run while this socket is connecting.
    let Some(info) = (unsafe { CONN_BY_COOKIE.get(cookie) }).copied() else {
        return Ok(DONE);
    };
    if info.path == PATH_KERNEL {
        // Straight to its destination: report its establish and its close (and bytes).
        if KERNEL_CONNS.insert(cookie, info, 0).is_err() {
            crate::rare::insert_failed(Counter::KernelEventsLost, "KERNEL_CONNS", info.cgroup_id);
            return Ok(DONE);
        }
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        return Ok(DONE);
    }
    let inserted = crate::pending::insert(local_tuple(ctx), info);
    if !inserted {
        // The proxy will find no entry and refuse the connection (fail closed).
        crate::rare::insert_failed(Counter::TupleInsertFailed, "CONN_BY_TUPLE", info.cgroup_id);
        return Ok(DONE);
    }
    // Ask for state callbacks, so a connection that fails before the proxy accepts it
    // does not leave its tuple behind.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    Ok(DONE)
}

/// A connection a job's listener accepted: its socket is the job's too. (This runs in
/// the network stack, not in the job: its cgroup id is recorded as 0.)
fn on_accepted(ctx: &SockOpsContext) -> Result<u32, u32> {
    // SAFETY: the cookie helper is allowed in sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let _ = JOB_SOCKETS.insert(cookie, 0, 0);
    Ok(DONE)
}

/// The kernel-path entry of this socket, if it has one.
#[inline(always)]
fn kernel_path(ctx: &SockOpsContext) -> Option<(u64, ConnInfo)> {
    // SAFETY: the cookie helper is allowed in sock_ops programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: the value is copied out at once.
    let info = (unsafe { KERNEL_CONNS.get(cookie) }).copied()?;
    Some((cookie, info))
}

fn on_established(ctx: &SockOpsContext) -> Result<u32, u32> {
    let Some((_, info)) = kernel_path(ctx) else {
        // SAFETY: the cookie helper is allowed in sock_ops programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        // SAFETY: the value is read at once, not kept.
        let proxied = unsafe { CONN_BY_COOKIE.get(cookie) }.is_some_and(|i| i.path == PATH_PROXY);
        if proxied {
            // Its entry waits for the proxy's accept: mark it, and its tuple's others.
            crate::pending::established(local_tuple(ctx), cookie);
        }
        return Ok(DONE);
    };
    report_conn(KernelConnEvent {
        kind: EventKind::KernelEstablished as u32,
        old_state: 0,
        // SAFETY: allowed in sock_ops programs.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        info,
        local: local_tuple(ctx),
        bytes_acked: 0,
        bytes_received: 0,
    });
    Ok(DONE)
}

fn on_state(ctx: &SockOpsContext) -> Result<u32, u32> {
    let (old, new) = (ctx.arg(0), ctx.arg(1));
    if new == BPF_TCP_CLOSE
        && let Some((cookie, info)) = kernel_path(ctx)
    {
        let _ = KERNEL_CONNS.remove(cookie);
        let ops = ctx.ops;
        // SAFETY: reading sock_ops context fields of a full socket in a state callback.
        let (acked, received) = unsafe {
            (
                core::ptr::read_volatile(addr_of!((*ops).bytes_acked)),
                core::ptr::read_volatile(addr_of!((*ops).bytes_received)),
            )
        };
        report_conn(KernelConnEvent {
            kind: EventKind::KernelClosed as u32,
            old_state: old,
            // SAFETY: allowed in sock_ops programs.
            ktime_ns: unsafe { bpf_ktime_get_ns() },
            info,
            local: local_tuple(ctx),
            bytes_acked: acked,
            bytes_received: received,
        });
        return Ok(DONE);
    }
    if old == BPF_TCP_SYN_SENT && new == BPF_TCP_CLOSE {
        // SAFETY: the cookie helper is allowed in sock_ops programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        crate::pending::release_unaccepted(local_tuple(ctx), cookie);
    } else if old == BPF_TCP_FIN_WAIT1 && new == BPF_TCP_FIN_WAIT2 {
        // SAFETY: the cookie helper is allowed in sock_ops programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        crate::pending::acked(local_tuple(ctx), cookie);
    }
    Ok(DONE)
}

/// The client's (family, local ip, local port), canonical as the proxy's accept() sees it.
#[inline(always)]
fn local_tuple(ctx: &SockOpsContext) -> TupleKey {
    let ops = ctx.ops;
    // SAFETY: reading sock_ops context fields; each 4-byte word of local_ip6 separately,
    // because the verifier rejects a wider access to the context.
    unsafe {
        let port = core::ptr::read_volatile(addr_of!((*ops).local_port));
        if ctx.family() == u32::from(AF_INET6) {
            let ip = [
                core::ptr::read_volatile(addr_of!((*ops).local_ip6[0])),
                core::ptr::read_volatile(addr_of!((*ops).local_ip6[1])),
                core::ptr::read_volatile(addr_of!((*ops).local_ip6[2])),
                core::ptr::read_volatile(addr_of!((*ops).local_ip6[3])),
            ];
            if is_v4_mapped(&ip) {
                TupleKey {
                    family: u32::from(AF_INET),
                    port,
                    ip: [ip[3], 0, 0, 0],
                }
            } else {
                TupleKey {
                    family: u32::from(AF_INET6),
                    port,
                    ip,
                }
            }
        } else {
            let ip = core::ptr::read_volatile(addr_of!((*ops).local_ip4));
            TupleKey {
                family: u32::from(AF_INET),
                port,
                ip: [ip, 0, 0, 0],
            }
        }
    }
}
