//! cgroup/connect_unix and cgroup/sendmsg_unix: a job's connect (or addressed datagram)
//! to a unix socket is decided by the verdict the agent wrote for the caller's cgroup and
//! the address, else by the host-wide one, else allowed; every one is reported.
//!
//! The address is not in `struct bpf_sock_addr`: the program reads it from the kernel's
//! `struct bpf_sock_addr_kern`, which the `bpf_cast_to_kern_ctx` kfunc hands out.
use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_kernel},
    },
};
use tollgate_common::{
    Counter, EventKind, UNIX_ALLOW, UNIX_AUDIT, UNIX_DENY, UNIX_PATH_MAX, UnixEvent, UnixKey,
};

use crate::maps::{EVENTS, UNIX_RULES, count, settings};

const ALLOW: i32 = 1;
/// Returning 0 from a cgroup sock_addr hook fails the syscall with EPERM.
const REFUSE: i32 = 0;
/// Offsets in `struct bpf_sock_addr_kern` { sk; uaddr; tmp_reg; t_ctx; uaddrlen; }.
const KERN_UADDR: usize = 8;
const KERN_UADDRLEN: usize = 32;
/// `sun_family` precedes `sun_path`.
const SUN_PATH_OFFSET: usize = 2;

unsafe extern "C" {
    /// kfunc (kernel 6.3+): the kernel's context behind a program's context pointer.
    fn bpf_cast_to_kern_ctx(ctx: *mut c_void) -> *mut c_void;
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect_unix")]
pub fn connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
    decide(ctx, 0)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/sendmsg_unix")]
pub fn sendmsg_unix(ctx: *mut bpf_sock_addr) -> i32 {
    decide(ctx, 1)
}

#[inline(always)]
fn decide(ctx: *mut bpf_sock_addr, send: u32) -> i32 {
    // Not configured: refused, as every other job socket is (fail closed).
    if settings().is_none() {
        count(Counter::RefusedUnconfigured);
        return REFUSE;
    }
    let mut event = MaybeUninit::<UnixEvent>::uninit();
    let ev = event.as_mut_ptr();
    // SAFETY: ev points to stack memory of the right size; every field is written below
    // before the event is read.
    let key = unsafe { &mut (*ev).addr };
    if read_address(ctx, key).is_err() {
        // An address the program cannot read is not decided: refused.
        count(Counter::RefusedUnix);
        return REFUSE;
    }
    key.cgroup_id = bpf_get_current_cgroup_id_safe();
    let mut ruled = 1;
    let job_key: &UnixKey = key;
    // SAFETY: the map values are plain u32 verdicts, read by value.
    let verdict = match unsafe { UNIX_RULES.get(job_key) } {
        Some(v) => *v,
        None => {
            let job = key.cgroup_id;
            key.cgroup_id = 0;
            let host_key: &UnixKey = key;
            // SAFETY: as above.
            let host = unsafe { UNIX_RULES.get(host_key) }.copied();
            key.cgroup_id = job;
            match host {
                Some(v) => v,
                None => {
                    ruled = 0;
                    UNIX_ALLOW
                }
            }
        }
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: ev is valid; the fields are plain integers. The helpers are allowed in
    // cgroup sock_addr programs. (Written field by field, with no zeroed arrays: this
    // object is loaded without bpf-to-bpf calls, so nothing may become a memset call.)
    unsafe {
        (*ev).kind = EventKind::UnixConnect as u32;
        (*ev).tgid = (pid_tgid >> 32) as u32;
        (*ev).tid = pid_tgid as u32;
        (*ev).uid = uid_gid as u32;
        (*ev).gid = (uid_gid >> 32) as u32;
        (*ev).verdict = verdict;
        (*ev).ktime_ns = bpf_ktime_get_ns();
        let comm = &raw mut (*ev).comm;
        if bpf_get_current_comm(comm.cast(), 16) != 0 {
            for i in 0..16 {
                core::ptr::write_volatile(comm.cast::<u8>().add(i), 0);
            }
        }
        (*ev).send = send;
        (*ev).ruled = ruled;
    }
    // SAFETY: every field of the event is now written.
    if EVENTS.output::<UnixEvent>(unsafe { &*ev }, 0).is_err() {
        count(Counter::EventsLost);
    }
    match verdict {
        UNIX_ALLOW | UNIX_AUDIT => {
            count(Counter::UnixAllowed);
            ALLOW
        }
        UNIX_DENY => {
            count(Counter::RefusedUnix);
            REFUSE
        }
        // A verdict this build does not know: refused.
        _ => {
            count(Counter::RefusedUnix);
            REFUSE
        }
    }
}

#[inline(always)]
fn bpf_get_current_cgroup_id_safe() -> u64 {
    // SAFETY: the helper is allowed in cgroup programs and takes no arguments.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Fills `key.path` and `key.len` from the address the caller passed: a filesystem path
/// up to its first NUL, an abstract name to its length; zero after it.
#[inline(always)]
fn read_address(ctx: *mut bpf_sock_addr, key: &mut UnixKey) -> Result<(), ()> {
    key._pad = 0;
    for i in 0..4 {
        // SAFETY: in bounds; volatile, so that it stays a store and not a memset call.
        unsafe { core::ptr::write_volatile(key._pad2.as_mut_ptr().add(i), 0) };
    }
    // SAFETY: the kfunc returns the kernel context of this program's context; its
    // fields at these offsets are `struct sockaddr *uaddr` and `u32 uaddrlen`.
    let (uaddr, uaddrlen) = unsafe {
        let kern = bpf_cast_to_kern_ctx(ctx.cast());
        let uaddr = core::ptr::read_volatile(kern.cast::<u8>().add(KERN_UADDR).cast::<u64>());
        let len = core::ptr::read_volatile(kern.cast::<u8>().add(KERN_UADDRLEN).cast::<u32>());
        (uaddr, len)
    };
    // SAFETY: reads at most sun_path's size from the kernel's copy of the address.
    let rc = unsafe {
        bpf_probe_read_kernel(
            key.path.as_mut_ptr().cast(),
            UNIX_PATH_MAX as u32,
            (uaddr as usize + SUN_PATH_OFFSET) as *const c_void,
        )
    };
    if rc != 0 {
        return Err(());
    }
    let given = (uaddrlen as usize).saturating_sub(SUN_PATH_OFFSET);
    let abstract_name = key.path[0] == 0 && given > 0;
    let mut len: u32 = 0;
    let mut ended = false;
    for i in 0..UNIX_PATH_MAX {
        if i >= given || ended {
            // SAFETY: in bounds; volatile, as above.
            unsafe { core::ptr::write_volatile(key.path.as_mut_ptr().add(i), 0) };
        } else if !abstract_name && key.path[i] == 0 {
            ended = true;
        } else {
            len += 1;
        }
    }
    key.len = len;
    Ok(())
}
