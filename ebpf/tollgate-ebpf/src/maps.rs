//! The maps shared with the agent. All are pinned by name under the agent's pin
//! directory, so they survive the agent and are re-adopted when it restarts.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, SockMap},
};
use tollgate_common::{
    CONN_MAP_CAPACITY, ConnInfo, Counter, EVENTS_BYTES, Event, EventKind, JOB_VERDICTS_CAPACITY,
    JobVerdict, NetKey, PROXIED_NETS_CAPACITY, PendingConn, PendingKey, PortSet, REFUSED_CAPACITY,
    Refusal, RefusedKey, SOCK_ALLOW_CAPACITY, Settings, SockKind, TupleKey, UDP_DENIED_CAPACITY,
    UDP_MAP_CAPACITY, UDP_RELAY_CAPACITY, UNIX_RULES_CAPACITY, UdpDenyKey, UnixKey,
    VERDICTS_CAPACITY, Verdict, VerdictKey,
};

/// Live intercepted job sockets: written by the connect hooks, read by sock_ops and
/// getpeername, removed by sock_release.
#[map(name = "CONN_BY_COOKIE")]
pub static CONN_BY_COOKIE: HashMap<u64, ConnInfo> = HashMap::pinned(CONN_MAP_CAPACITY, 0);

/// Connections waiting for the proxy's accept(): written by sock_ops, taken by the agent.
#[map(name = "CONN_BY_TUPLE")]
pub static CONN_BY_TUPLE: HashMap<PendingKey, PendingConn> = HashMap::pinned(CONN_MAP_CAPACITY, 0);

/// One [`Settings`] entry, written by the agent before any program is attached.
#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::pinned(1, 0);

/// Per-CPU event counters, indexed by [`Counter`].
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);

/// Redirected datagrams (DNS queries, relayed UDP) by their source (family, address,
/// port): written by udp_egress, read by the resolver and the relay to attribute each
/// datagram. LRU: old sources age out.
#[map(name = "UDP_BY_TUPLE")]
pub static UDP_BY_TUPLE: LruHashMap<TupleKey, ConnInfo> = LruHashMap::pinned(UDP_MAP_CAPACITY, 0);

/// UDP destination -> the port of the agent's relay socket for it (host byte order).
#[map(name = "UDP_RELAY_PORT")]
pub static UDP_RELAY_PORT: HashMap<TupleKey, u32> = HashMap::pinned(UDP_RELAY_CAPACITY, 0);

/// Relay socket port -> the destination it carries, for recvmsg.
#[map(name = "UDP_RELAY_PEER")]
pub static UDP_RELAY_PEER: HashMap<u32, TupleKey> = HashMap::pinned(UDP_RELAY_CAPACITY, 0);

/// (socket, destination) pairs the agent denied: their sends fail in the kernel.
#[map(name = "UDP_DENIED")]
pub static UDP_DENIED: LruHashMap<UdpDenyKey, u32> = LruHashMap::pinned(UDP_DENIED_CAPACITY, 0);

/// IPv4 and IPv6 sockets created or accepted in jobs (cookie -> cgroup id): written by
/// sock_create and sock_ops, removed by sock_release, read by the agent's scan.
#[map(name = "JOB_SOCKETS")]
pub static JOB_SOCKETS: HashMap<u64, u64> = HashMap::pinned(CONN_MAP_CAPACITY, 0);

/// The kinds of socket a job may create, written by the agent from `[sockets] allow`.
#[map(name = "SOCK_ALLOW")]
pub static SOCK_ALLOW: HashMap<SockKind, u32> = HashMap::pinned(SOCK_ALLOW_CAPACITY, 0);

/// Destinations whose last connect from a job's cgroup the upstream refused: written by
/// the agent's proxy, read (and touched) by the connect hooks, removed by the agent.
#[map(name = "REFUSED_DST")]
pub static REFUSED_DST: LruHashMap<RefusedKey, Refusal> = LruHashMap::pinned(REFUSED_CAPACITY, 0);

/// Whether the kernel has `bpf_set_retval` (5.19+), set by the agent at load. A constant
/// to the verifier, which prunes the call where it is 0.
#[unsafe(no_mangle)]
pub static TOLLGATE_SET_RETVAL: u8 = 0;

/// Kernel verdicts: connects the proxy found final at connect time, by what the kernel
/// sees of them. Written and dropped by the agent, read by the connect hooks.
#[map(name = "VERDICTS")]
pub static VERDICTS: HashMap<VerdictKey, Verdict> = HashMap::pinned(VERDICTS_CAPACITY, 0);

/// Kernel-path connections from their SYN to their close: written and removed by
/// sock_ops, read by the agent to find closes that were never reported.
#[map(name = "KERNEL_CONNS")]
pub static KERNEL_CONNS: HashMap<u64, ConnInfo> = HashMap::pinned(CONN_MAP_CAPACITY, 0);

/// Job cgroups whose every connect is final in the kernel (no policy reads anything the
/// kernel cannot see), except to the networks of [`PROXIED_NETS`].
#[map(name = "JOB_VERDICTS")]
pub static JOB_VERDICTS: HashMap<u64, JobVerdict> = HashMap::pinned(JOB_VERDICTS_CAPACITY, 0);

/// Networks and ports that stay on the proxy path for [`JOB_VERDICTS`].
#[map(name = "PROXIED_NETS")]
pub static PROXIED_NETS: LpmTrie<NetKey, PortSet> = LpmTrie::pinned(PROXIED_NETS_CAPACITY, 0);

/// One of the agent's proxy listeners: gone (closed by the kernel) once the agent dies.
#[map(name = "AGENT_ALIVE")]
pub static AGENT_ALIVE: SockMap = SockMap::pinned(1, 0);

/// The agent's heartbeat: CLOCK_MONOTONIC ns of its last refresh.
#[map(name = "HEARTBEAT")]
pub static HEARTBEAT: Array<u64> = Array::pinned(1, 0);

/// Unix socket verdicts by (cgroup, address), written by the agent from `unix:connect`;
/// cgroup id 0 holds the host-wide defaults (container-engine sockets denied). Read by
/// the connect_unix and sendmsg_unix programs, which live in their own object.
#[map(name = "UNIX_RULES")]
pub static UNIX_RULES: HashMap<UnixKey, u32> = HashMap::pinned(UNIX_RULES_CAPACITY, 0);

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

/// Reports an event about the calling task to the agent (counted when the ring is full).
#[inline(always)]
pub fn report(kind: EventKind, sock: SockKind, dst: TupleKey) {
    let c = crate::caller::caller();
    let event = Event {
        kind: kind as u32,
        tgid: c.tgid,
        tid: c.tid,
        uid: c.uid,
        gid: c.gid,
        _pad: 0,
        cgroup_id: c.cgroup_id,
        ktime_ns: c.ktime_ns,
        sock,
        _pad2: 0,
        comm: c.comm,
        dst,
    };
    if EVENTS.output::<Event>(&event, 0).is_err() {
        count(Counter::EventsLost);
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
