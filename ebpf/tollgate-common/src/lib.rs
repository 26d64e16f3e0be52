//! Types shared by Tollgate's eBPF programs and the agent.
//!
//! Every type here is `#[repr(C)]` with explicit padding, so that the kernel side and the
//! userspace side agree on the byte layout of map keys and values.
#![cfg_attr(not(feature = "user"), no_std)]

#[cfg(feature = "user")]
pub mod convert;
mod kernel_path;

pub use kernel_path::{
    HEARTBEAT_MAX_AGE_NS, JOB_VERDICTS_CAPACITY, JobVerdict, KernelConnEvent, MAP_AGENT_ALIVE,
    MAP_HEARTBEAT, MAP_JOB_VERDICTS, MAP_KERNEL_CONNS, MAP_PROXIED_NETS, MAP_VERDICTS, NetKey,
    PATH_KERNEL, PATH_PROXY, PORT_SET_RANGES, PROXIED_NETS_CAPACITY, PortSet, VERDICTS_CAPACITY,
    Verdict, VerdictKey,
};

/// `AF_INET`, as the kernel spells it in `struct sockaddr`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// Capacity of [`ConnInfo`] maps (entries). A connect that cannot be recorded is refused.
pub const CONN_MAP_CAPACITY: u32 = 65_536;

/// Name of the map from socket cookie to [`ConnInfo`] (live job sockets).
pub const MAP_CONN_BY_COOKIE: &str = "CONN_BY_COOKIE";
/// Name of the map from client tuple ([`PendingKey`]) to [`ConnInfo`] (awaiting accept).
pub const MAP_CONN_BY_TUPLE: &str = "CONN_BY_TUPLE";
/// Name of the settings array ([`Settings`], one entry).
pub const MAP_SETTINGS: &str = "SETTINGS";
/// Name of the per-CPU counter array (indexed by [`Counter`]).
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Name of the map from a relayed datagram's source ([`TupleKey`]) to [`ConnInfo`]: DNS
/// queries to the resolver and other UDP to the relay.
pub const MAP_UDP_BY_TUPLE: &str = "UDP_BY_TUPLE";
/// Capacity of [`MAP_UDP_BY_TUPLE`] (entries, LRU).
pub const UDP_MAP_CAPACITY: u32 = 16_384;
/// Name of the map from a UDP destination ([`TupleKey`]) to the port of the relay socket
/// that carries it (written by the agent once a flow to it is allowed).
pub const MAP_UDP_RELAY_PORT: &str = "UDP_RELAY_PORT";
/// Name of the map from a relay socket's port to the destination it carries
/// ([`TupleKey`]): a job's receive shows that destination as the datagram's source.
pub const MAP_UDP_RELAY_PEER: &str = "UDP_RELAY_PEER";
/// Capacity of [`MAP_UDP_RELAY_PORT`] and [`MAP_UDP_RELAY_PEER`] (entries).
pub const UDP_RELAY_CAPACITY: u32 = 4_096;
/// Name of the map of (socket, destination) pairs the agent denied ([`UdpDenyKey`]):
/// their sends fail with EPERM in the kernel.
pub const MAP_UDP_DENIED: &str = "UDP_DENIED";
/// Capacity of [`MAP_UDP_DENIED`] (entries, LRU).
pub const UDP_DENIED_CAPACITY: u32 = 16_384;
/// Name of the map of the IPv4 and IPv6 sockets created (or accepted) in jobs: socket
/// cookie -> cgroup id. A job's socket that is not in it came from outside the job.
pub const MAP_JOB_SOCKETS: &str = "JOB_SOCKETS";
/// Name of the map of socket kinds a job may create ([`SockKind`] -> 1).
pub const MAP_SOCK_ALLOW: &str = "SOCK_ALLOW";
/// Name of the ring buffer of [`Event`]s the programs report to the agent.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the map of destinations whose last connect from a job's cgroup the upstream
/// refused ([`RefusedKey`] -> [`Refusal`]): the connect hook refuses further connects to
/// them at `connect()`, as the destination itself would, until the agent's probe finds
/// them listening or they go unasked for `proxy.refusal_memory`.
pub const MAP_REFUSED_DST: &str = "REFUSED_DST";
/// Capacity of [`MAP_REFUSED_DST`] (entries, LRU).
pub const REFUSED_CAPACITY: u32 = 4_096;
/// Name of the read-only global that says whether the kernel has `bpf_set_retval`
/// (5.19+); without it a remembered refusal is EPERM, not the destination's errno.
pub const GLOBAL_SET_RETVAL: &str = "TOLLGATE_SET_RETVAL";

/// Name of the map of unix socket verdicts ([`UnixKey`] -> a `UNIX_*` verdict): per job
/// cgroup, and host-wide under cgroup id 0. A path in neither is allowed.
pub const MAP_UNIX_RULES: &str = "UNIX_RULES";
/// Capacity of [`MAP_UNIX_RULES`] (entries).
pub const UNIX_RULES_CAPACITY: u32 = 65_536;
/// Bytes of `sun_path` in `struct sockaddr_un`.
pub const UNIX_PATH_MAX: usize = 108;
/// A unix connect the programs allow (also the verdict of a path in no rule).
pub const UNIX_ALLOW: u32 = 1;
/// A unix connect the programs refuse (EPERM).
pub const UNIX_DENY: u32 = 2;
/// A unix connect the policy would refuse, allowed because its mode is audit.
pub const UNIX_AUDIT: u32 = 3;
/// Capacity of [`MAP_SOCK_ALLOW`] (entries).
pub const SOCK_ALLOW_CAPACITY: u32 = 256;
/// Size of the [`MAP_EVENTS`] ring buffer in bytes (a power of two, page aligned).
pub const EVENTS_BYTES: u32 = 1 << 23;

/// A wildcard in a [`SockKind`]: any type, or any protocol.
pub const SOCK_ANY: u32 = u32::MAX;

/// [`Settings::log_level`]: nothing is logged.
pub const KERNEL_LOG_OFF: u16 = 0;
/// [`Settings::log_level`]: failed map inserts (aya-log's warn level).
pub const KERNEL_LOG_WARN: u16 = 2;
/// [`Settings::log_level`]: also refusals and their reasons (aya-log's info level).
pub const KERNEL_LOG_INFO: u16 = 3;

/// Version of the layout of the maps and programs. The agent refuses to adopt pins
/// written by a build with another version.
pub const ABI_VERSION: u32 = 9;

/// What the connect hook recorded about one intercepted connection, in the client's own
/// `connect()`. Addresses are in network byte order, as the kernel hands them over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// Original destination. For `AF_INET`, only `orig_ip[0]` is used.
    pub orig_ip: [u32; 4],
    /// Original destination port, host byte order.
    pub orig_port: u16,
    /// Canonical family of the original destination: IPv4-mapped IPv6 destinations
    /// (`::ffff:a.b.c.d`) are recorded as `AF_INET`.
    pub orig_family: u16,
    /// Process id (thread group id) of the caller of `connect()`.
    pub tgid: u32,
    /// Thread id of the caller of `connect()`.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Family of the client's socket (`AF_INET6` for a dual-stack socket that connected
    /// to an IPv4-mapped address).
    pub sock_family: u16,
    /// [`PATH_PROXY`] (redirected to the proxy) or [`PATH_KERNEL`] (a kernel verdict let
    /// it go straight to its destination).
    pub path: u16,
    /// cgroup v2 id of the caller (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    /// Socket cookie of the client's socket.
    pub cookie: u64,
    /// `bpf_ktime_get_ns()` at connect; lets the agent expire entries never accepted.
    pub ktime_ns: u64,
    /// The caller's `comm`, NUL padded.
    pub comm: [u8; 16],
}

/// The client side of an intercepted connection as the proxy's `accept()` sees it: the
/// family, the client's local address and port. IPv4-mapped client addresses are keyed
/// as `AF_INET`, because the proxy's IPv4 listener sees them that way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub family: u32,
    /// Host byte order.
    pub port: u32,
    /// Network byte order; for `AF_INET`, only `ip[0]` is set.
    pub ip: [u32; 4],
}

/// How many connections from one client tuple can wait for the proxy's accept at once.
/// A client may reuse its source port (TIME_WAIT reuse on loopback) while the proxy has
/// yet to accept the connection that used it before, when the proxy lags by a second or
/// more; each waiting connection keeps its own record, in a slot of its own.
pub const TUPLE_SLOTS: u32 = 4;

/// The key of [`MAP_CONN_BY_TUPLE`]: a client tuple, and its slot. Slot 0 holds a
/// connection that found no other one waiting with its tuple; a connection that found
/// others waiting takes the first free slot above 0, and every entry of the tuple is
/// marked [`PENDING_SHARED`]. The proxy takes an unshared slot 0 at once, and chooses
/// among shared entries by the kernel's other marks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PendingKey {
    pub tuple: TupleKey,
    pub slot: u32,
}

/// The value of [`MAP_CONN_BY_TUPLE`]: a connection waiting for the proxy's accept, and
/// what the kernel learnt of it and of the others of its tuple while it waited
/// (`PENDING_*` flags).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingConn {
    pub info: ConnInfo,
    pub flags: u32,
    pub _pad: u32,
}

/// [`PendingConn::flags`]: another connection from the same tuple waited while this one
/// did. Only then does the proxy need the other flags to tell them apart.
pub const PENDING_SHARED: u32 = 1;
/// [`PendingConn::flags`]: the client's handshake completed (the proxy's listener made a
/// connection of it, or dropped its last ACK on a full accept queue).
pub const PENDING_ESTABLISHED: u32 = 2;
/// [`PendingConn::flags`]: a newer connection from the same tuple completed its
/// handshake after this one. Its SYN reached the listener while this one's connection,
/// if any, still held the tuple there, and reset it: this one is either accepted dead or
/// never.
pub const PENDING_SUPERSEDED: u32 = 4;
/// [`PendingConn::flags`]: the listener acknowledged the client's FIN (FIN_WAIT1 to
/// FIN_WAIT2), so it had made a connection of it, which the proxy will accept.
pub const PENDING_ACKED: u32 = 8;

/// A job cgroup and a destination: the key of [`MAP_REFUSED_DST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RefusedKey {
    pub cgroup_id: u64,
    /// Canonical, as in [`ConnInfo`] (IPv4-mapped addresses as `AF_INET`).
    pub dst: TupleKey,
}

/// What the proxy learnt of a destination: the errno of its refusal, when it learnt it,
/// and the job's connects refused since.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    /// ECONNREFUSED, EHOSTUNREACH or ENETUNREACH.
    pub errno: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the proxy's connect was refused.
    pub since_ns: u64,
    /// The last connect refused here (or `since_ns`).
    pub last_attempt_ns: u64,
    /// Connects refused here.
    pub refused: u64,
}

/// One job socket's sends to one destination: the key of [`MAP_UDP_DENIED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpDenyKey {
    pub cookie: u64,
    /// The destination, canonical (IPv4-mapped addresses as `AF_INET`).
    pub dst: TupleKey,
}

/// A kind of socket, as `socket(family, type, protocol)` resolved it: the key of the
/// allow list. `type_` has its flags (`SOCK_NONBLOCK`, `SOCK_CLOEXEC`) stripped; `type_`
/// and `protocol` may be [`SOCK_ANY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKind {
    pub family: u32,
    pub type_: u32,
    pub protocol: u32,
}

/// A unix socket address as a job's `connect()` or `sendmsg()` named it, for the
/// caller's cgroup: the key of [`MAP_UNIX_RULES`]. A filesystem path ends at its first
/// NUL; an abstract name (first byte NUL) is `len` bytes. The rest is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixKey {
    /// The caller's cgroup id, or 0 for a host-wide rule.
    pub cgroup_id: u64,
    /// Bytes of `path` that are the name.
    pub len: u32,
    pub _pad: u32,
    pub path: [u8; UNIX_PATH_MAX],
    pub _pad2: [u8; 4],
}

impl Default for UnixKey {
    fn default() -> Self {
        Self {
            cgroup_id: 0,
            len: 0,
            _pad: 0,
            path: [0; UNIX_PATH_MAX],
            _pad2: [0; 4],
        }
    }
}

/// One unix connect (or addressed send) of a job, through the [`MAP_EVENTS`] ring: its
/// first field is the kind, as in [`Event`], so the reader tells them apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixEvent {
    /// [`EventKind::UnixConnect`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The verdict the programs applied: [`UNIX_ALLOW`], [`UNIX_DENY`] or [`UNIX_AUDIT`].
    pub verdict: u32,
    pub ktime_ns: u64,
    pub comm: [u8; 16],
    /// 1: `sendmsg()` of a datagram; 0: `connect()`.
    pub send: u32,
    /// 1: the verdict came from a rule (job or host-wide); 0: the path is in no rule.
    pub ruled: u32,
    /// The address, with the caller's cgroup id.
    pub addr: UnixKey,
}

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A job's `socket()` was refused: the kind is not on the allow list.
    SocketRefused = 1,
    /// A task was moved to a cgroup (`tgid`: the task, `tid`: the mover, `cgroup_id`:
    /// the destination).
    CgroupMove = 2,
    /// A job's UDP datagram (or UDP connect) was refused in the kernel: no policy can
    /// permit `udp:send`, or the agent denied this socket's flow to the destination.
    UdpRefused = 3,
    /// A job's connect (or addressed send) to a unix socket: a [`UnixEvent`].
    UnixConnect = 4,
    /// A job's connect went straight to its destination on a kernel verdict: a
    /// [`KernelConnEvent`].
    KernelConnect = 5,
    /// A kernel-path connection was established: a [`KernelConnEvent`].
    KernelEstablished = 6,
    /// A kernel-path connection closed (or failed): a [`KernelConnEvent`].
    KernelClosed = 7,
}

impl EventKind {
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::SocketRefused),
            2 => Some(Self::CgroupMove),
            3 => Some(Self::UdpRefused),
            4 => Some(Self::UnixConnect),
            5 => Some(Self::KernelConnect),
            6 => Some(Self::KernelEstablished),
            7 => Some(Self::KernelClosed),
            _ => None,
        }
    }
}

/// One event from a program to the agent, through the [`MAP_EVENTS`] ring buffer. The
/// ring is pinned, so events written while the agent is down are read when it returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// An [`EventKind`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when it happened.
    pub ktime_ns: u64,
    /// For [`EventKind::SocketRefused`]: what was asked for.
    pub sock: SockKind,
    pub _pad2: u32,
    pub comm: [u8; 16],
    /// For [`EventKind::UdpRefused`]: the destination (family, port, address), canonical.
    pub dst: TupleKey,
}

/// Settings written by the agent and read by the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Must equal [`ABI_VERSION`]; zero means "not configured": connects are refused.
    pub abi_version: u32,
    /// The proxy listener's port, host byte order.
    pub proxy_port: u16,
    /// Which rare events the programs log through aya-log: [`KERNEL_LOG_OFF`] (the
    /// default), [`KERNEL_LOG_WARN`] (map inserts that failed) or [`KERNEL_LOG_INFO`]
    /// (also each refused connect or socket, and why). Changeable while attached.
    pub log_level: u16,
    /// The proxy's IPv4 listener address, network byte order.
    pub proxy_ip4: u32,
    /// The proxy's IPv6 listener address, network byte order.
    pub proxy_ip6: [u32; 4],
    /// 1: UDP other than DNS goes to the agent's relay, which decides `udp:send`. 0: no
    /// policy can permit it, so the kernel refuses it at once (EPERM).
    pub udp_relay: u32,
}

/// Kernel-side counters, one slot each in the per-CPU array [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Connects redirected to the proxy.
    Redirected = 0,
    /// Connects refused because they targeted the proxy listener itself.
    RefusedProxyDirect = 1,
    /// Connects refused because the cookie map was full or the insert failed.
    RefusedMapFull = 2,
    /// Connects refused because the agent had not configured the programs.
    RefusedUnconfigured = 3,
    /// TCP_CONNECT_CB events whose tuple insert failed (the proxy will refuse them).
    TupleInsertFailed = 4,
    /// Tuple entries removed because the connection failed before it was accepted.
    TupleReleasedUnaccepted = 5,
    /// `socket()` calls of jobs refused: the kind is not on the allow list.
    RefusedSocket = 6,
    /// Events lost because the ring buffer was full (the counter still counts them).
    EventsLost = 7,
    /// UDP sends (and UDP connects) of jobs refused in the kernel.
    RefusedUdp = 8,
    /// UDP datagrams of jobs redirected to the relay.
    UdpRelayed = 9,
    /// `socket()` calls of jobs refused because [`MAP_JOB_SOCKETS`] was full.
    RefusedSocketMapFull = 10,
    /// Unix connects and sends of jobs refused in the kernel (`unix:connect`).
    RefusedUnix = 11,
    /// Unix connects and sends of jobs allowed.
    UnixAllowed = 12,
    /// TCP connects of jobs refused at `connect()` because the proxy's last connect to
    /// the destination was refused ([`MAP_REFUSED_DST`]).
    RefusedRemembered = 13,
    /// TCP connects that a kernel verdict sent straight to their destination.
    KernelHit = 14,
    /// TCP connects of jobs with no kernel verdict (sent to the proxy).
    KernelMiss = 15,
    /// TCP connects with a verdict sent to the proxy anyway: the ring had no room for
    /// their event (never passed unrecorded).
    KernelFallback = 16,
    /// Kernel-path established or close events lost (ring full).
    KernelEventsLost = 17,
    /// TCP connects with a verdict sent to the proxy anyway: the agent's heartbeat was
    /// stale or its listener gone (a stuck or dead agent's verdicts are not used).
    KernelStale = 18,
}

impl Counter {
    pub const COUNT: u32 = 19;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Redirected,
        Counter::RefusedProxyDirect,
        Counter::RefusedMapFull,
        Counter::RefusedUnconfigured,
        Counter::TupleInsertFailed,
        Counter::TupleReleasedUnaccepted,
        Counter::RefusedSocket,
        Counter::EventsLost,
        Counter::RefusedUdp,
        Counter::UdpRelayed,
        Counter::RefusedSocketMapFull,
        Counter::RefusedUnix,
        Counter::UnixAllowed,
        Counter::RefusedRemembered,
        Counter::KernelHit,
        Counter::KernelMiss,
        Counter::KernelFallback,
        Counter::KernelEventsLost,
        Counter::KernelStale,
    ];

    /// Stable label value for metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Redirected => "redirected",
            Counter::RefusedProxyDirect => "refused_proxy_direct",
            Counter::RefusedMapFull => "refused_map_full",
            Counter::RefusedUnconfigured => "refused_unconfigured",
            Counter::TupleInsertFailed => "tuple_insert_failed",
            Counter::TupleReleasedUnaccepted => "tuple_released_unaccepted",
            Counter::RefusedSocket => "refused_socket",
            Counter::EventsLost => "events_lost",
            Counter::RefusedUdp => "refused_udp",
            Counter::UdpRelayed => "udp_relayed",
            Counter::RefusedSocketMapFull => "refused_socket_map_full",
            Counter::RefusedUnix => "refused_unix",
            Counter::UnixAllowed => "unix_allowed",
            Counter::RefusedRemembered => "refused_remembered",
            Counter::KernelHit => "kernel_hit",
            Counter::KernelMiss => "kernel_miss",
            Counter::KernelFallback => "kernel_fallback",
            Counter::KernelEventsLost => "kernel_events_lost",
            Counter::KernelStale => "kernel_stale",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are #[repr(C)], Copy, contain only integers and have
    // explicit padding fields, so every byte pattern is a valid value.
    unsafe impl aya::Pod for super::ConnInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TupleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingKey {}
    // SAFETY: repr(C), plain data, no padding.
    unsafe impl aya::Pod for super::PendingConn {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockKind {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UdpDenyKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RefusedKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Refusal {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VerdictKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Verdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::JobVerdict {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelConnEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(
            size_of::<ConnInfo>(),
            16 + 2 + 2 + 4 * 4 + 2 + 2 + 8 * 3 + 16
        );
        assert_eq!(align_of::<ConnInfo>(), 8);
        assert_eq!(size_of::<TupleKey>(), 24);
        assert_eq!(size_of::<PendingKey>(), 28);
        assert_eq!(size_of::<PendingConn>(), size_of::<ConnInfo>() + 8);
        assert_eq!(size_of::<Settings>(), 32);
        assert_eq!(size_of::<UdpDenyKey>(), 32);
        assert_eq!(size_of::<SockKind>(), 12);
        assert_eq!(size_of::<Event>(), 6 * 4 + 2 * 8 + 12 + 4 + 16 + 24);
        assert_eq!(align_of::<Event>(), 8);
        assert_eq!(size_of::<UnixKey>(), 8 + 4 + 4 + UNIX_PATH_MAX + 4);
        assert_eq!(size_of::<RefusedKey>(), 32);
        assert_eq!(size_of::<Refusal>(), 32);
        assert_eq!(size_of::<VerdictKey>(), 8 + 4 + 4 + 16 + 24);
        assert_eq!(size_of::<Verdict>(), 16);
        assert_eq!(size_of::<NetKey>(), 20);
        assert_eq!(size_of::<PortSet>(), 8 + 4 * PORT_SET_RANGES);
        assert_eq!(
            size_of::<KernelConnEvent>(),
            16 + size_of::<ConnInfo>() + 24 + 16
        );
        assert_eq!(
            size_of::<UnixEvent>(),
            6 * 4 + 8 + 16 + 8 + size_of::<UnixKey>()
        );
    }
}
