//! cgroup/sock_create (IPv4 and IPv6 sockets) and lsm_cgroup/socket_post_create (every
//! other family): a job may create only the kinds of socket on the agent's allow list.
//! Anything else fails with EPERM, and is counted and reported to the agent.
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, lsm_cgroup},
    programs::{LsmContext, SockContext},
};
use tollgate_common::{AF_INET, AF_INET6, Counter, EventKind, SOCK_ANY, SockKind, TupleKey};

use crate::maps::{JOB_SOCKETS, SOCK_ALLOW, report};

const ALLOW: i32 = 1;
/// Returning 0 from a cgroup sock or LSM cgroup program fails the call with EPERM.
const REFUSE: i32 = 0;

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: family, type and protocol are readable in cgroup/sock_create.
    let kind = unsafe {
        SockKind {
            family: (*sk).family,
            type_: (*sk).type_,
            protocol: (*sk).protocol,
        }
    };
    if decide(kind) == REFUSE {
        return REFUSE;
    }
    // SAFETY: the cookie and cgroup helpers are allowed in cgroup/sock_create.
    let (cookie, cgroup_id) = unsafe {
        (
            bpf_get_socket_cookie(sk.cast()),
            aya_ebpf::helpers::bpf_get_current_cgroup_id(),
        )
    };
    // A job's socket is known as the job's, or it is not made (fail closed).
    if JOB_SOCKETS.insert(cookie, cgroup_id, 0).is_err() {
        crate::rare::insert_failed(Counter::RefusedSocketMapFull, "JOB_SOCKETS", cgroup_id);
        return REFUSE;
    }
    ALLOW
}

/// `socket_post_create(struct socket *sock, int family, int type, int protocol, int kern)`.
/// The cgroup this runs for is the new socket's, which is its creator's.
#[lsm_cgroup(hook = "socket_post_create")]
pub fn socket_post_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(1);
    let type_: i32 = ctx.arg(2);
    let protocol: i32 = ctx.arg(3);
    let kern: i32 = ctx.arg(4);
    // Kernel sockets are not the job's; IPv4 and IPv6 are decided by sock_create.
    if kern != 0 || family == i32::from(AF_INET) || family == i32::from(AF_INET6) {
        return ALLOW;
    }
    decide(SockKind {
        family: family as u32,
        type_: type_ as u32,
        protocol: protocol as u32,
    })
}

#[inline(always)]
fn decide(kind: SockKind) -> i32 {
    let by_type = SockKind {
        protocol: SOCK_ANY,
        ..kind
    };
    let by_family = SockKind {
        type_: SOCK_ANY,
        ..by_type
    };
    // SAFETY: the values are not kept; only their presence matters.
    let allowed = unsafe {
        SOCK_ALLOW.get(kind).is_some()
            || SOCK_ALLOW.get(by_type).is_some()
            || SOCK_ALLOW.get(by_family).is_some()
    };
    if allowed {
        return ALLOW;
    }
    crate::rare::socket_refused(kind.family, kind.type_, kind.protocol);
    report(EventKind::SocketRefused, kind, TupleKey::default());
    REFUSE
}
