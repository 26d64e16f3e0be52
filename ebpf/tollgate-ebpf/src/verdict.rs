//! Kernel verdicts: a TCP connect whose key the agent found final at connect time goes
//! straight to its destination, and is recorded from kernel events instead of by the
//! proxy. Verdicts count only while the agent's heartbeat is fresh.
use aya_ebpf::{
    helpers::generated::{bpf_map_lookup_elem, bpf_sk_release},
    maps::lpm_trie::Key,
};
use tollgate_common::{
    AF_INET, ConnInfo, Counter, EventKind, HEARTBEAT_MAX_AGE_NS, KernelConnEvent, NetKey,
    PATH_KERNEL, PORT_SET_RANGES, TupleKey, VerdictKey,
};

use crate::{
    caller::Caller,
    maps::{
        AGENT_ALIVE, CONN_BY_COOKIE, EVENTS, HEARTBEAT, JOB_VERDICTS, PROXIED_NETS, VERDICTS, count,
    },
};

/// Whether a verdict lets the caller's connect to `dst` go straight to it.
#[inline(always)]
pub fn direct(c: &Caller, dst: TupleKey) -> bool {
    let key = VerdictKey {
        cgroup_id: c.cgroup_id,
        uid: c.uid,
        gid: c.gid,
        comm: c.comm,
        dst,
    };
    let hit = if let Some(verdict) = VERDICTS.get_ptr_mut(key) {
        // SAFETY: the pointer is to this entry's value; a racing writer loses a count.
        unsafe { (*verdict).hits += 1 };
        true
    } else if let Some(job) = JOB_VERDICTS.get_ptr_mut(c.cgroup_id) {
        if proxied(dst) {
            false
        } else {
            // SAFETY: as above.
            unsafe { (*job).hits += 1 };
            true
        }
    } else {
        false
    };
    if !hit {
        count(Counter::KernelMiss);
        return false;
    }
    if !fresh(c.ktime_ns) || !agent_alive() {
        // The agent is dead or stuck: its verdicts may be stale (fail closed).
        count(Counter::KernelStale);
        return false;
    }
    true
}

/// Whether the agent's heartbeat is within the limit of `now`, on either side: `now` is
/// when the program began, so a beat written since is later than it. A beat later by
/// more than the limit is not the agent's clock, and stale.
#[inline(always)]
fn fresh(now: u64) -> bool {
    match HEARTBEAT.get(0) {
        Some(&beat) if beat != 0 => now.abs_diff(beat) < HEARTBEAT_MAX_AGE_NS,
        _ => false,
    }
}

/// Whether the agent's listener is still in [`AGENT_ALIVE`]: the kernel removes it when
/// the socket closes, which it does the moment the agent's process dies.
#[inline(always)]
fn agent_alive() -> bool {
    let key: u32 = 0;
    // SAFETY: a lookup in a sockmap returns a referenced socket (or null), released at
    // once; only its presence matters.
    unsafe {
        let sk = bpf_map_lookup_elem(
            core::ptr::addr_of!(AGENT_ALIVE).cast_mut().cast(),
            core::ptr::addr_of!(key).cast(),
        );
        if sk.is_null() {
            return false;
        }
        bpf_sk_release(sk);
    }
    true
}

/// Whether `dst` is in a network that stays on the proxy path.
#[inline(always)]
fn proxied(dst: TupleKey) -> bool {
    let bits = if dst.family == u32::from(AF_INET) {
        32
    } else {
        128
    };
    let key = Key::new(
        32 + bits,
        NetKey {
            family: dst.family,
            ip: dst.ip,
        },
    );
    let Some(set) = PROXIED_NETS.get(&key) else {
        return false;
    };
    let port = dst.port as u16;
    for i in 0..PORT_SET_RANGES {
        if i as u32 >= set.count {
            break;
        }
        if set.first[i] <= port && port <= set.last[i] {
            return true;
        }
    }
    false
}

/// Records a connect that goes straight to its destination: the cookie entry (marked
/// [`PATH_KERNEL`], so sock_ops reports its establish and close) and a connect event.
/// `Ok(false)`: the ring had no room for the event, so the connect takes the proxy path
/// instead (never passed unrecorded). `Err`: the cookie map is full.
#[inline(always)]
pub fn record_direct(cookie: u64, mut info: ConnInfo) -> Result<bool, ()> {
    let Some(mut entry) = EVENTS.reserve::<KernelConnEvent>(0) else {
        count(Counter::KernelFallback);
        return Ok(false);
    };
    info.path = PATH_KERNEL;
    if CONN_BY_COOKIE.insert(cookie, info, 0).is_err() {
        entry.discard(0);
        return Err(());
    }
    entry.write(KernelConnEvent {
        kind: EventKind::KernelConnect as u32,
        old_state: 0,
        ktime_ns: info.ktime_ns,
        info,
        local: TupleKey::default(),
        bytes_acked: 0,
        bytes_received: 0,
    });
    entry.submit(0);
    count(Counter::KernelHit);
    Ok(true)
}

/// Reports an establish or a close of a kernel-path connection (counted when lost).
#[inline(always)]
pub fn report_conn(event: KernelConnEvent) {
    match EVENTS.reserve::<KernelConnEvent>(0) {
        Some(mut entry) => {
            entry.write(event);
            entry.submit(0);
        }
        None => count(Counter::KernelEventsLost),
    }
}
