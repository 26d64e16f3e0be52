//! The kernel path's shared types: the verdicts the agent installs so that a connect
//! goes straight to its destination, what keeps them honest (the agent's liveness and
//! heartbeat), and the events of a kernel-path connection's life.
use crate::{ConnInfo, TupleKey};
#[cfg(doc)]
use crate::{Event, EventKind, MAP_EVENTS};

/// A connection the connect hook redirected to the proxy.
pub const PATH_PROXY: u16 = 0;
/// A connection a kernel verdict let go straight to its destination.
pub const PATH_KERNEL: u16 = 1;

/// Name of the map of kernel verdicts ([`VerdictKey`] -> [`Verdict`]): a connect whose
/// key the proxy found final at connect time goes straight to its destination.
pub const MAP_VERDICTS: &str = "VERDICTS";
/// Capacity of [`MAP_VERDICTS`] (entries). A full map leaves further connects on the
/// proxy path.
pub const VERDICTS_CAPACITY: u32 = 65_536;
/// Name of the map of kernel-path connections on their way (cookie -> [`ConnInfo`]):
/// written by sock_ops once the SYN is due, removed when the connection closes. (The
/// cookie map's entry goes when the socket is released, before a TCP close completes.)
pub const MAP_KERNEL_CONNS: &str = "KERNEL_CONNS";
/// Name of the map of job cgroups whose every connect is final in the kernel (cgroup id
/// -> [`JobVerdict`]), except to [`MAP_PROXIED_NETS`].
pub const MAP_JOB_VERDICTS: &str = "JOB_VERDICTS";
/// Capacity of [`MAP_JOB_VERDICTS`] (entries).
pub const JOB_VERDICTS_CAPACITY: u32 = 4_096;
/// Name of the LPM trie of networks ([`NetKey`] -> [`PortSet`]) that stay on the proxy
/// path whatever [`MAP_JOB_VERDICTS`] says: L7 targets, audit mode, opted out.
pub const MAP_PROXIED_NETS: &str = "PROXIED_NETS";
/// Capacity of [`MAP_PROXIED_NETS`] (entries).
pub const PROXIED_NETS_CAPACITY: u32 = 4_096;
/// Port ranges a [`PortSet`] holds.
pub const PORT_SET_RANGES: usize = 8;
/// Name of the sockmap holding one of the agent's proxy listeners: the kernel drops it
/// the moment the agent's process dies, and verdicts count only while it is there.
pub const MAP_AGENT_ALIVE: &str = "AGENT_ALIVE";
/// Name of the agent's heartbeat (one `u64`, CLOCK_MONOTONIC ns). Verdicts apply only
/// while it is younger than [`HEARTBEAT_MAX_AGE_NS`].
pub const MAP_HEARTBEAT: &str = "HEARTBEAT";
/// How old the heartbeat may be before verdicts are ignored (fail closed: connects go
/// to the proxy, which is refused while the agent is down).
pub const HEARTBEAT_MAX_AGE_NS: u64 = 2_000_000_000;

/// What the kernel sees of a connect: the key of [`MAP_VERDICTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    pub cgroup_id: u64,
    pub uid: u32,
    pub gid: u32,
    /// The caller's `comm`, NUL padded.
    pub comm: [u8; 16],
    /// The destination, canonical.
    pub dst: TupleKey,
}

/// A verdict the agent installed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The agent's policy generation it was decided under.
    pub generation: u64,
    /// Connects it let through (racy across CPUs: a count, not a ledger).
    pub hits: u64,
}

/// A job cgroup whose every connect is final in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobVerdict {
    pub generation: u64,
    pub hits: u64,
}

/// An LPM key of [`MAP_PROXIED_NETS`]: `prefix_len` counts the bits of `family` (32)
/// and then of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetKey {
    pub family: u32,
    /// Network byte order; for `AF_INET`, only `ip[0]`.
    pub ip: [u32; 4],
}

/// The ports of a network that stay on the proxy path: `count` inclusive ranges.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    pub count: u32,
    pub _pad: u32,
    pub first: [u16; PORT_SET_RANGES],
    pub last: [u16; PORT_SET_RANGES],
}

/// A kernel-path connection's life, through the [`MAP_EVENTS`] ring: its first field is
/// the kind, as in [`Event`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConnEvent {
    /// [`EventKind::KernelConnect`], [`EventKind::KernelEstablished`] or
    /// [`EventKind::KernelClosed`].
    pub kind: u32,
    /// For a close: the TCP state it closed from (`BPF_TCP_*`: 2 is SYN_SENT, never
    /// established); the agent takes the SYN and FIN out of the byte counts by it.
    pub old_state: u32,
    /// When it happened (CLOCK_MONOTONIC ns).
    pub ktime_ns: u64,
    /// What the connect hook recorded (the cookie identifies the connection).
    pub info: ConnInfo,
    /// For an establish: the client's own address and port.
    pub local: TupleKey,
    /// For a close: bytes sent and acknowledged, and bytes received.
    pub bytes_acked: u64,
    pub bytes_received: u64,
}
