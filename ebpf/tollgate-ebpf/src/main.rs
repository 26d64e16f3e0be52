//! Tollgate's eBPF programs, attached once to the root-owned parent cgroup of all job
//! cgroups (and so inherited by every job cgroup).
//!
//! - `connect4`/`connect6` (kernel 4.17+): record the original destination and the
//!   caller's process facts by socket cookie, then redirect TCP connects to the proxy.
//! - `tollgate_sockops` at `TCP_CONNECT_CB` (kernel 4.13+; cookies in sock_ops 5.x):
//!   copy the entry to a map keyed by the client tuple, which the proxy's `accept()` sees.
//! - `sendmsg4`/`sendmsg6` (kernel 4.18+): redirect DNS datagrams to the resolver and
//!   other UDP to the relay (or refuse it); `recvmsg4`/`recvmsg6` (5.2+) show what comes
//!   back as coming from the server addressed; `udp_egress` (cgroup_skb) keys each
//!   redirected datagram by its source for the agent.
//! - `getpeername4`/`getpeername6` (kernel 5.8+): show clients their original peer.
//! - `sock_release` (kernel 5.9+): forget the socket's entry when it is closed.
//! - `cgroup_attach_task` (tracepoint): reports cgroup moves, so the agent can kill a
//!   job's process that leaves its job.
//! - `sock_create` (kernel 4.10+) and `socket_post_create` (BPF LSM cgroup, kernel 6.0+
//!   with `lsm=bpf`): refuse the kinds of socket that are not on the allow list.
#![no_std]
#![no_main]

mod caller;
mod connect;
mod maps;
mod moves;
mod peer;
mod pending;
mod rare;
mod release;
mod sock_create;
mod sockops;
mod udp;
mod verdict;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
