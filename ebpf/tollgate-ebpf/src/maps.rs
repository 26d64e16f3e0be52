//! The maps shared with the agent. All are pinned by name under the agent's pin
//! directory, so they survive the agent and are re-adopted when it restarts.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tollgate_common::{
    CONN_MAP_CAPACITY, ConnInfo, Counter, DNS_MAP_CAPACITY, EVENTS_BYTES, SOCK_ALLOW_CAPACITY,
    Settings, SockKind, TupleKey,
};

/// Live intercepted job sockets: written by the connect hooks, read by sock_ops and
/// getpeername, removed by sock_release.
#[map(name = "CONN_BY_COOKIE")]
pub static CONN_BY_COOKIE: HashMap<u64, ConnInfo> = HashMap::pinned(CONN_MAP_CAPACITY, 0);

/// Connections waiting for the proxy's accept(): written by sock_ops, taken by the agent.
#[map(name = "CONN_BY_TUPLE")]
pub static CONN_BY_TUPLE: HashMap<TupleKey, ConnInfo> = HashMap::pinned(CONN_MAP_CAPACITY, 0);

/// One [`Settings`] entry, written by the agent before any program is attached.
#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// Per-CPU event counters, indexed by [`Counter`].
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

/// DNS query datagrams by their source (family, address, port): written by dns_egress,
/// read by the resolver to attribute each query. LRU: old sources age out.
#[map(name = "DNS_BY_TUPLE")]
pub static DNS_BY_TUPLE: LruHashMap<TupleKey, ConnInfo> = LruHashMap::pinned(DNS_MAP_CAPACITY, 0);

/// The kinds of socket a job may create, written by the agent from `[sockets] allow`.
#[map(name = "SOCK_ALLOW")]
pub static SOCK_ALLOW: HashMap<SockKind, u32> = HashMap::pinned(SOCK_ALLOW_CAPACITY, 0);

/// Events for the agent (refusals, tampering), read by its event reader.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; no other writer runs on this CPU concurrently.
        unsafe { *slot += 1 };
    }
}

/// Returns the settings, or `None` when the agent has not configured the programs.
#[inline(always)]
pub fn settings() -> Option<Settings> {
    let settings = SETTINGS.get(0)?;
    if settings.abi_version == tollgate_common::ABI_VERSION {
        Some(*settings)
    } else {
        None
    }
}
