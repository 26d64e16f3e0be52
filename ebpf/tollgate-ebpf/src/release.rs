//! cgroup/sock_release: forget a job socket's entry when the socket is closed.
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext,
};

use crate::maps::{CONN_BY_COOKIE, JOB_SOCKETS};

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the cookie helper is allowed in cgroup sock programs (kernel 5.8+).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    let _ = CONN_BY_COOKIE.remove(cookie);
    let _ = JOB_SOCKETS.remove(cookie);
    1
}
