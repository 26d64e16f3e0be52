//! Rare events, logged through aya-log when the agent turns the kernel log on
//! ([`Settings::log_level`], off by default, switchable while the programs run): why a
//! connect or a socket was refused, and a map insert that failed. Each still counts
//! first; the counters stay the hot-path signal, and a disabled log costs one array
//! lookup on these rare paths only.
//!
//! [`Settings::log_level`]: tollgate_common::Settings::log_level
use aya_ebpf::helpers::bpf_get_current_cgroup_id;
use aya_log_ebpf::{info, warn};
use tollgate_common::{Counter, KERNEL_LOG_INFO, KERNEL_LOG_WARN};

use crate::maps::{SETTINGS, count};

#[inline(always)]
fn level() -> u16 {
    SETTINGS.get(0).map_or(0, |settings| settings.log_level)
}

/// The calling task's cgroup (sock_addr and sock_create programs only).
#[inline(always)]
fn cgroup() -> u64 {
    // SAFETY: the helper is allowed in the program types that call refused and
    // socket_refused (cgroup sock_addr, cgroup sock_create and the cgroup LSM hook).
    unsafe { bpf_get_current_cgroup_id() }
}

/// A connect (or send) refused for `counter`'s reason, to destination port `port`.
#[inline(always)]
pub fn refused(counter: Counter, port: u16) {
    count(counter);
    if level() >= KERNEL_LOG_INFO {
        info!(
            &(),
            "connect refused: {} (cgroup {}, port {})",
            counter.name(),
            cgroup(),
            port
        );
    }
}

/// A socket of a kind not on the allow list, refused at creation.
#[inline(always)]
pub fn socket_refused(family: u32, type_: u32, protocol: u32) {
    count(Counter::RefusedSocket);
    if level() >= KERNEL_LOG_INFO {
        info!(
            &(),
            "socket refused: family {} type {} protocol {} (cgroup {})",
            family,
            type_,
            protocol,
            cgroup()
        );
    }
}

/// An insert into `map` that failed (full, or out of memory), counted as `counter`.
/// The caller passes the cgroup: sock_ops programs cannot ask for it before 6.x.
#[inline(always)]
pub fn insert_failed(counter: Counter, map: &str, cgroup_id: u64) {
    count(counter);
    if level() >= KERNEL_LOG_WARN {
        warn!(
            &(),
            "{} insert failed: {} (cgroup {})",
            map,
            counter.name(),
            cgroup_id
        );
    }
}
