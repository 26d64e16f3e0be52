//! Loads Tollgate's eBPF programs, attaches them once to the parent of all job cgroups,
//! pins links and maps under the pin directory, re-adopts those pins after a restart, and
//! removes them on cleanup. Pinned links keep the programs attached while the agent is
//! down, so job connects are refused rather than bypassed (fail closed).
mod bpffs;
mod kernel_log;
mod lsm;
mod maps;
mod moves;
mod pending;
mod refusals;
mod required;
mod syscall;
mod tamper;
mod unix;
mod verdicts;

use std::{
    fs,
    io::{self, ErrorKind},
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, Map, MapData},
    programs::{CgroupAttachMode, links::PinnedLink},
};
use tollgate_common::{
    ABI_VERSION, GLOBAL_SET_RETVAL, MAP_AGENT_ALIVE, MAP_CONN_BY_COOKIE, MAP_CONN_BY_TUPLE,
    MAP_COUNTERS, MAP_EVENTS, MAP_HEARTBEAT, MAP_JOB_SOCKETS, MAP_JOB_VERDICTS, MAP_KERNEL_CONNS,
    MAP_PROXIED_NETS, MAP_REFUSED_DST, MAP_SETTINGS, MAP_SOCK_ALLOW, MAP_UDP_BY_TUPLE,
    MAP_UDP_DENIED, MAP_UDP_RELAY_PEER, MAP_UDP_RELAY_PORT, MAP_UNIX_RULES, MAP_VERDICTS, Settings,
    SockKind,
};

use bpffs::ensure_bpffs;
pub use kernel_log::{KernelLog, Logger as KernelLogger, forward as forward_kernel_log};
use lsm::OPTIONAL_PROGRAMS;
pub use maps::{ConnMaps, MapOccupancy, monotonic_ns};
pub use moves::watch_moves;
pub use pending::Taken;
pub use refusals::Refusals;
pub use tamper::Guard;
pub use unix::{UNIX_PROGRAMS, UnixRules};
pub use verdicts::{LpmKey, VerdictMaps};

/// The eBPF object built by agent/build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate"));

/// Flags 0: the kernel attaches cgroup bpf_links as multi-programs anyway, and rejects
/// explicit attach flags on LINK_CREATE.
const ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// The programs, by function name, and the name of each one's link pin.
const PROGRAMS: [(&str, &str); 12] = [
    ("connect4", "link_connect4"),
    ("connect6", "link_connect6"),
    ("sendmsg4", "link_sendmsg4"),
    ("sendmsg6", "link_sendmsg6"),
    ("recvmsg4", "link_recvmsg4"),
    ("recvmsg6", "link_recvmsg6"),
    ("udp_egress", "link_udp_egress"),
    ("getpeername4", "link_getpeername4"),
    ("getpeername6", "link_getpeername6"),
    ("sock_release", "link_sock_release"),
    ("tollgate_sockops", "link_sockops"),
    ("sock_create", "link_sock_create"),
];
const MAPS: [&str; 19] = [
    MAP_AGENT_ALIVE,
    MAP_KERNEL_CONNS,
    MAP_VERDICTS,
    MAP_JOB_VERDICTS,
    MAP_PROXIED_NETS,
    MAP_HEARTBEAT,
    MAP_REFUSED_DST,
    MAP_UNIX_RULES,
    MAP_CONN_BY_COOKIE,
    MAP_JOB_SOCKETS,
    MAP_UDP_BY_TUPLE,
    MAP_UDP_RELAY_PORT,
    MAP_UDP_RELAY_PEER,
    MAP_UDP_DENIED,
    MAP_CONN_BY_TUPLE,
    MAP_SETTINGS,
    MAP_COUNTERS,
    MAP_SOCK_ALLOW,
    MAP_EVENTS,
];

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting bpffs at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not on a bpffs")]
    NotBpffs { path: PathBuf },
    #[error(
        "loading the eBPF object (Tollgate needs Linux 5.8+ with BTF: the BPF ring buffer \
         and cgroup bpf_links): {0}"
    )]
    Load(#[from] aya::EbpfError),
    /// A program that the fail-closed guarantee needs: the agent does not start without.
    #[error(
        "this kernel ({release}) cannot run eBPF program {name}, which needs {needs}; \
         Tollgate does not start without it, since without it a job's sockets would not \
         all go through Tollgate: {source}"
    )]
    Required {
        name: &'static str,
        needs: &'static str,
        release: String,
        #[source]
        source: Box<BpfError>,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning the link of {name}: {source}")]
    Pin {
        name: &'static str,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("eBPF link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF map {name}: {source}")]
    MapIo {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("eBPF map {name} holds at most {capacity} entries")]
    TooMany { name: &'static str, capacity: u32 },
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    #[error(
        "{path} holds {found} bytes where `bpf.events_ring_bytes` asks for {configured}: \
         run `tollgate agent --cleanup` to install the new size"
    )]
    RingSize {
        path: PathBuf,
        found: u32,
        configured: u32,
    },
    #[error(
        "the pins in {path} come from an incompatible Tollgate build (ABI {found}, this build \
         {ABI_VERSION}); run `tollgate agent --cleanup` with the old build first"
    )]
    AbiMismatch { path: PathBuf, found: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BpfError + '_ {
    move |source| BpfError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the proxy listens; written into the programs' settings.
#[derive(Debug, Clone, Copy)]
pub struct ProxyTarget {
    pub port: u16,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// What the programs cover on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Coverage {
    /// `socket()` of families other than IPv4 and IPv6 (AF_PACKET, AF_VSOCK, ...) is
    /// decided: needs BPF LSM cgroup programs (kernel 6.0+, `bpf` in `lsm=`).
    pub socket_families: bool,
    /// Moves of tasks between cgroups are seen as they happen (the cgroup_attach_task
    /// tracepoint), so a job's process that leaves its job is killed at once. Without
    /// it, the job watcher finds leavers at its next scan.
    #[serde(default)]
    pub cgroup_moves: bool,
    /// What becomes of a job's IPv4 or IPv6 socket that was created outside every job
    /// (passed in over a unix socket, taken with pidfd_getfd): its traffic would not be
    /// redirected, so its holder is found by the scan and killed.
    #[serde(default)]
    pub outside_sockets: OutsideSockets,
    /// Whether a job's connects (and addressed sends) to unix sockets, docker.sock among
    /// them, are decided (`unix:connect`): needs cgroup/connect_unix and sendmsg_unix
    /// programs (kernel 6.7+).
    #[serde(default)]
    pub unix_sockets: bool,
}

/// How sockets from outside a job are stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutsideSockets {
    /// The scan finds the process holding one within `[sockets] scan_interval`, kills it
    /// and records it. (Refusing its connect or send in the kernel needs BPF LSM
    /// `socket_connect`/`socket_sendmsg` programs, which Tollgate does not load.)
    #[default]
    DetectedAndKilled,
}

/// What [`install`] set up.
pub struct Installed {
    pub maps: ConnMaps,
    /// The events ring buffer, for the agent's event reader.
    pub events: Map,
    /// The unix socket verdicts (written even where the kernel cannot run the unix
    /// programs: then nothing reads them).
    pub unix_rules: UnixRules,
    /// Destinations that refused the proxy, refused at connect() for a while.
    pub refusals: Refusals,
    /// Kernel verdicts and the heartbeat.
    pub verdicts: VerdictMaps,
    pub attachment: Attachment,
    pub coverage: Coverage,
    /// The reader of the programs' rare-event log (None where it is unavailable).
    pub kernel_log: Option<KernelLogger>,
}

/// How the programs came to be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// Loaded and attached by this agent.
    Fresh,
    /// Left attached by an earlier agent and adopted from the pins.
    Adopted,
}

/// Installs the programs on `cgroup_parent` (or adopts them), and returns the maps.
pub fn install(
    pin_dir: &Path,
    cgroup_parent: &Path,
    target: ProxyTarget,
    sock_allow: &[SockKind],
    events_ring_bytes: u32,
    kernel_log: KernelLog,
) -> Result<Installed, BpfError> {
    ensure_bpffs(pin_dir)?;
    fs::create_dir_all(pin_dir).map_err(io_err(pin_dir))?;
    let link_pins: Vec<PathBuf> = PROGRAMS.iter().map(|(_, pin)| pin_dir.join(pin)).collect();
    let settings = Settings {
        abi_version: ABI_VERSION,
        proxy_port: target.port,
        log_level: kernel_log.level(),
        proxy_ip4: tollgate_common::convert::ipv4_word(target.ipv4),
        proxy_ip6: tollgate_common::convert::ipv6_words(target.ipv6),
        // Refused until the agent has read the policy and says otherwise.
        udp_relay: 0,
    };

    if link_pins.iter().all(|pin| pin.exists()) {
        for pin in &link_pins {
            // Opening each link proves the pin is a live link, not a stale file.
            PinnedLink::from_pin(pin).map_err(|source| BpfError::Link {
                path: pin.clone(),
                source,
            })?;
        }
        let found = pinned_abi(pin_dir)?;
        if found != ABI_VERSION {
            return Err(BpfError::AbiMismatch {
                path: pin_dir.to_owned(),
                found,
            });
        }
        check_ring_size(pin_dir, events_ring_bytes)?;
        let (mut maps, events, unix_rules, refusals, verdicts) = open_pinned_maps(pin_dir)?;
        maps.write_settings(settings)?;
        maps.write_sock_allow(sock_allow)?;
        let coverage = Coverage {
            socket_families: lsm::pinned(pin_dir),
            cgroup_moves: false,
            outside_sockets: OutsideSockets::DetectedAndKilled,
            // An earlier agent that could not attach them: this one tries again.
            unix_sockets: unix::pinned(pin_dir)
                || attach_unix(pin_dir, cgroup_parent, unix::load(pin_dir))?,
        };
        return Ok(Installed {
            maps,
            events,
            unix_rules,
            refusals,
            verdicts,
            attachment: Attachment::Adopted,
            coverage,
            kernel_log: kernel_log::of_pinned(&link_pins[0]),
        });
    }

    // Pins of another layout stay in force (and attached) until that build's cleanup.
    if let Ok(found) = pinned_abi(pin_dir)
        && found != ABI_VERSION
    {
        return Err(BpfError::AbiMismatch {
            path: pin_dir.to_owned(),
            found,
        });
    }
    // A partial set of link pins is left over from an interrupted install: start over.
    for pin in link_pins.iter().cloned().chain(
        OPTIONAL_PROGRAMS
            .iter()
            .map(|(_, pin, _)| pin_dir.join(pin))
            .chain(UNIX_PROGRAMS.iter().map(|p| pin_dir.join(p.pin))),
    ) {
        remove_if_exists(&pin)?;
    }
    // bpf_set_retval (5.19+): where it is missing, the verifier prunes the call.
    let set_retval = u8::from(
        aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 19, 0)),
    );
    if set_retval == 0 {
        crate::features::missing(
            "connect_errno",
            "the bpf_set_retval helper in cgroup programs: Linux 5.19+",
            "a connect refused at connect() (a denial, or a destination remembered as \
             refusing) fails with EPERM instead of the destination's own errno",
            format!("kernel {}", crate::features::release()),
        );
    }
    // The loader reuses a pinned map as it is, whatever size the object asks for.
    check_ring_size(pin_dir, events_ring_bytes)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .override_global(GLOBAL_SET_RETVAL, &set_retval, true)
        .map_max_entries(MAP_EVENTS, events_ring_bytes)
        .load(EBPF_OBJECT)?;
    // Settings first: an attached program without settings refuses every connect.
    {
        let map = ebpf
            .map_mut(MAP_SETTINGS)
            .ok_or(BpfError::Missing(MAP_SETTINGS))?;
        let mut array: Array<&mut MapData, Settings> =
            Array::try_from(map).map_err(|source| BpfError::Map {
                name: MAP_SETTINGS,
                source,
            })?;
        array.set(0, settings, 0).map_err(|source| BpfError::Map {
            name: MAP_SETTINGS,
            source,
        })?;
    }
    let maps = ConnMaps::from_maps(
        take(&mut ebpf, MAP_CONN_BY_COOKIE)?,
        take(&mut ebpf, MAP_CONN_BY_TUPLE)?,
        take(&mut ebpf, MAP_SETTINGS)?,
        take(&mut ebpf, MAP_COUNTERS)?,
        take(&mut ebpf, MAP_SOCK_ALLOW)?,
        take(&mut ebpf, MAP_JOB_SOCKETS)?,
        maps::UdpMaps {
            by_tuple: take(&mut ebpf, MAP_UDP_BY_TUPLE)?,
            relay_port: take(&mut ebpf, MAP_UDP_RELAY_PORT)?,
            relay_peer: take(&mut ebpf, MAP_UDP_RELAY_PEER)?,
            denied: take(&mut ebpf, MAP_UDP_DENIED)?,
        },
    );
    // The allow list is in place before sock_create starts deciding.
    maps.write_sock_allow(sock_allow)?;
    let cgroup = fs::File::open(cgroup_parent).map_err(io_err(cgroup_parent))?;
    let required = |e| match e {
        BpfError::Program { name, .. } => BpfError::Required {
            name,
            needs: required::needs(name),
            release: crate::features::release(),
            source: Box::new(e),
        },
        e => e,
    };
    // The verifier's work, on every CPU: the required programs, and beside them the unix
    // programs (their maps are pinned by now).
    let (loaded, unix_loaded) = std::thread::scope(|scope| {
        let unix = scope.spawn(|| unix::load(pin_dir));
        let loaded = required::load_all(&mut ebpf, &PROGRAMS.map(|(name, _)| name));
        let unix = unix
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (loaded, unix)
    });
    loaded.map_err(required)?;
    // Attached one at a time, in PROGRAMS' order.
    for (name, pin) in PROGRAMS {
        let program = ebpf.program_mut(name).ok_or(BpfError::Missing(name))?;
        let link = required::attach(program, name, &cgroup).map_err(required)?;
        link.pin(pin_dir.join(pin))
            .map_err(|source| BpfError::Pin { name, source })?;
    }
    let mut coverage = Coverage {
        socket_families: false,
        cgroup_moves: false,
        outside_sockets: OutsideSockets::DetectedAndKilled,
        unix_sockets: false,
    };
    coverage.socket_families = lsm::attach(&mut ebpf, &cgroup, pin_dir)?;
    let events = take(&mut ebpf, MAP_EVENTS)?;
    let unix_rules = UnixRules::new(take(&mut ebpf, MAP_UNIX_RULES)?);
    let refusals = Refusals::new(take(&mut ebpf, MAP_REFUSED_DST)?);
    let verdicts = VerdictMaps::new(
        take(&mut ebpf, MAP_AGENT_ALIVE)?,
        take(&mut ebpf, MAP_KERNEL_CONNS)?,
        take(&mut ebpf, MAP_VERDICTS)?,
        take(&mut ebpf, MAP_JOB_VERDICTS)?,
        take(&mut ebpf, MAP_PROXIED_NETS)?,
        take(&mut ebpf, MAP_HEARTBEAT)?,
    );
    coverage.unix_sockets = attach_unix(pin_dir, cgroup_parent, unix_loaded)?;
    Ok(Installed {
        maps,
        events,
        unix_rules,
        refusals,
        verdicts,
        attachment: Attachment::Fresh,
        coverage,
        kernel_log: kernel_log::of_loaded(&mut ebpf),
    })
}

/// Attaches the unix programs, `loaded` by [`unix::load`]; false (and a warning) where
/// this kernel cannot run them.
fn attach_unix(
    pin_dir: &Path,
    cgroup_parent: &Path,
    loaded: Result<unix::Loaded, unix::UnixError>,
) -> Result<bool, BpfError> {
    let cgroup = fs::File::open(cgroup_parent).map_err(io_err(cgroup_parent))?;
    match loaded.and_then(|loaded| unix::attach(loaded, pin_dir, &cgroup)) {
        Ok(()) => Ok(true),
        Err(error) => {
            crate::features::missing(
                "unix_sockets",
                "cgroup/connect_unix and cgroup/sendmsg_unix programs: Linux 6.7+",
                "a job's connects to unix sockets (docker.sock among them) are neither \
                 decided nor recorded (unix:connect)",
                error,
            );
            Ok(false)
        }
    }
}

/// The ABI version in the pinned settings map.
fn pinned_abi(pin_dir: &Path) -> Result<u32, BpfError> {
    let data = MapData::from_pin(pin_dir.join(MAP_SETTINGS)).map_err(|source| BpfError::Map {
        name: MAP_SETTINGS,
        source,
    })?;
    let map = Map::from_map_data(data).map_err(|source| BpfError::Map {
        name: MAP_SETTINGS,
        source,
    })?;
    let array: Array<&MapData, Settings> =
        Array::try_from(&map).map_err(|source| BpfError::Map {
            name: MAP_SETTINGS,
            source,
        })?;
    Ok(array
        .get(&0, 0)
        .map_err(|source| BpfError::Map {
            name: MAP_SETTINGS,
            source,
        })?
        .abi_version)
}

fn take(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<Map, BpfError> {
    ebpf.take_map(name).ok_or(BpfError::Missing(name))
}

/// A pinned event ring of another size than configured is refused, not silently used.
fn check_ring_size(pin_dir: &Path, configured: u32) -> Result<(), BpfError> {
    let path = pin_dir.join(MAP_EVENTS);
    if !path.exists() {
        return Ok(());
    }
    let found = aya::maps::MapInfo::from_pin(&path)
        .map_err(|source| BpfError::Map {
            name: MAP_EVENTS,
            source,
        })?
        .max_entries();
    if found == configured {
        Ok(())
    } else {
        Err(BpfError::RingSize {
            path,
            found,
            configured,
        })
    }
}

type PinnedMaps = (ConnMaps, Map, UnixRules, Refusals, VerdictMaps);

fn open_pinned_maps(pin_dir: &Path) -> Result<PinnedMaps, BpfError> {
    let open = |name: &'static str| -> Result<Map, BpfError> {
        let data = MapData::from_pin(pin_dir.join(name))
            .map_err(|source| BpfError::Map { name, source })?;
        Map::from_map_data(data).map_err(|source| BpfError::Map { name, source })
    };
    Ok((
        ConnMaps::from_maps(
            open(MAP_CONN_BY_COOKIE)?,
            open(MAP_CONN_BY_TUPLE)?,
            open(MAP_SETTINGS)?,
            open(MAP_COUNTERS)?,
            open(MAP_SOCK_ALLOW)?,
            open(MAP_JOB_SOCKETS)?,
            maps::UdpMaps {
                by_tuple: open(MAP_UDP_BY_TUPLE)?,
                relay_port: open(MAP_UDP_RELAY_PORT)?,
                relay_peer: open(MAP_UDP_RELAY_PEER)?,
                denied: open(MAP_UDP_DENIED)?,
            },
        ),
        open(MAP_EVENTS)?,
        UnixRules::new(open(MAP_UNIX_RULES)?),
        Refusals::new(open(MAP_REFUSED_DST)?),
        VerdictMaps::new(
            open(MAP_AGENT_ALIVE)?,
            open(MAP_KERNEL_CONNS)?,
            open(MAP_VERDICTS)?,
            open(MAP_JOB_VERDICTS)?,
            open(MAP_PROXIED_NETS)?,
            open(MAP_HEARTBEAT)?,
        ),
    ))
}

/// Detaches every program (by removing the link pins) and removes the map pins and the
/// pin directory. Returns what was removed.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, BpfError> {
    let mut removed = Vec::new();
    let pins = PROGRAMS
        .iter()
        .map(|(_, pin)| *pin)
        .chain(OPTIONAL_PROGRAMS.iter().map(|(_, pin, _)| *pin))
        .chain(UNIX_PROGRAMS.iter().map(|p| p.pin));
    for pin in pins {
        let path = pin_dir.join(pin);
        if remove_if_exists(&path)? {
            removed.push(path);
        }
    }
    for name in MAPS {
        let path = pin_dir.join(name);
        if remove_if_exists(&path)? {
            removed.push(path);
        }
    }
    match fs::remove_dir(pin_dir) {
        Ok(()) => removed.push(pin_dir.to_owned()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(pin_dir)(e)),
    }
    Ok(removed)
}

fn remove_if_exists(path: &Path) -> Result<bool, BpfError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}
