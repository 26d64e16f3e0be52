//! The agent's side of the kernel-verdict maps: exact verdicts (`VERDICTS`), jobs whose
//! every connect is final in the kernel (`JOB_VERDICTS`), the networks that stay on the
//! proxy path for them (`PROXIED_NETS`), and the heartbeat without which none of them
//! counts.
use std::os::fd::{AsFd as _, BorrowedFd};

use aya::maps::Map;
use tollgate_common::{
    ConnInfo, JobVerdict, MAP_AGENT_ALIVE, MAP_HEARTBEAT, MAP_JOB_VERDICTS, MAP_KERNEL_CONNS,
    MAP_PROXIED_NETS, MAP_VERDICTS, NetKey, PortSet, Verdict, VerdictKey,
};

use super::{BpfError, maps::monotonic_ns, syscall};

/// The key of an LPM trie entry, as the kernel lays it out: the prefix length in bits,
/// then the data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LpmKey {
    pub prefix_len: u32,
    pub net: NetKey,
}

// SAFETY: #[repr(C)], Copy, integers only, no implicit padding (4 + 20 bytes).
unsafe impl aya::Pod for LpmKey {}

pub struct VerdictMaps {
    alive: Map,
    conns: Map,
    verdicts: Map,
    jobs: Map,
    nets: Map,
    heartbeat: Map,
}

fn fd<'a>(map: &'a Map, name: &'static str) -> Result<BorrowedFd<'a>, BpfError> {
    match map {
        Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::Array(data)
        | Map::LpmTrie(data)
        | Map::SockMap(data) => Ok(data.fd().as_fd()),
        _ => Err(BpfError::Missing(name)),
    }
}

/// Every entry of a hash map.
fn entries<K: syscall::Plain, V: syscall::Plain>(
    map: &Map,
    name: &'static str,
) -> Result<Vec<(K, V)>, BpfError> {
    let fd = fd(map, name)?;
    let mut out = Vec::new();
    for key in syscall::keys::<K>(fd).map_err(io(name))? {
        if let Some(value) = syscall::lookup(fd, &key).map_err(io(name))? {
            out.push((key, value));
        }
    }
    Ok(out)
}

fn io(name: &'static str) -> impl Fn(std::io::Error) -> BpfError {
    move |source| BpfError::MapIo { name, source }
}

impl VerdictMaps {
    pub(super) fn new(
        alive: Map,
        conns: Map,
        verdicts: Map,
        jobs: Map,
        nets: Map,
        heartbeat: Map,
    ) -> Self {
        Self {
            alive,
            conns,
            verdicts,
            jobs,
            nets,
            heartbeat,
        }
    }

    /// Puts one of this agent's listening sockets in the liveness map: verdicts count
    /// while it is open, that is while this process lives.
    pub fn set_alive(&self, listener: BorrowedFd<'_>) -> Result<(), BpfError> {
        let fd = fd(&self.alive, MAP_AGENT_ALIVE)?;
        let socket = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&listener)).unwrap_or(u32::MAX);
        syscall::update(fd, &0_u32, &socket).map_err(io(MAP_AGENT_ALIVE))
    }

    /// Whether a kernel-path connection is still on its way (its close not yet seen).
    pub fn connecting(&self, cookie: u64) -> Result<bool, BpfError> {
        let fd = fd(&self.conns, MAP_KERNEL_CONNS)?;
        syscall::lookup::<u64, ConnInfo>(fd, &cookie)
            .map(|found| found.is_some())
            .map_err(io(MAP_KERNEL_CONNS))
    }

    /// Refreshes the heartbeat: verdicts count for the next 2 s.
    pub fn beat(&self) -> Result<(), BpfError> {
        let fd = fd(&self.heartbeat, MAP_HEARTBEAT)?;
        syscall::update(fd, &0_u32, &monotonic_ns()).map_err(io(MAP_HEARTBEAT))
    }

    /// Stops the heartbeat: verdicts stop counting at once.
    pub fn stop_beating(&self) -> Result<(), BpfError> {
        let fd = fd(&self.heartbeat, MAP_HEARTBEAT)?;
        syscall::update(fd, &0_u32, &0_u64).map_err(io(MAP_HEARTBEAT))
    }

    pub fn install(&self, key: &VerdictKey, generation: u64) -> Result<(), BpfError> {
        let fd = fd(&self.verdicts, MAP_VERDICTS)?;
        let value = Verdict {
            generation,
            hits: 0,
        };
        syscall::update(fd, key, &value).map_err(io(MAP_VERDICTS))
    }

    pub fn remove(&self, key: &VerdictKey) -> Result<bool, BpfError> {
        let fd = fd(&self.verdicts, MAP_VERDICTS)?;
        syscall::delete(fd, key).map_err(io(MAP_VERDICTS))
    }

    /// Every exact verdict, with its hits.
    pub fn verdicts(&self) -> Result<Vec<(VerdictKey, Verdict)>, BpfError> {
        entries(&self.verdicts, MAP_VERDICTS)
    }

    /// Marks a job cgroup's every connect final in the kernel (or not).
    pub fn set_job(&self, cgroup_id: u64, generation: Option<u64>) -> Result<(), BpfError> {
        let fd = fd(&self.jobs, MAP_JOB_VERDICTS)?;
        match generation {
            Some(generation) => {
                let value = JobVerdict {
                    generation,
                    hits: 0,
                };
                syscall::update(fd, &cgroup_id, &value).map_err(io(MAP_JOB_VERDICTS))
            }
            None => syscall::delete(fd, &cgroup_id)
                .map(|_| ())
                .map_err(io(MAP_JOB_VERDICTS)),
        }
    }

    /// Every job cgroup marked final, with its hits.
    pub fn jobs(&self) -> Result<Vec<(u64, JobVerdict)>, BpfError> {
        entries(&self.jobs, MAP_JOB_VERDICTS)
    }

    /// Replaces the networks that stay on the proxy path.
    pub fn replace_nets(&self, nets: &[(LpmKey, PortSet)]) -> Result<(), BpfError> {
        let fd = fd(&self.nets, MAP_PROXIED_NETS)?;
        // New entries first, so no network is unprotected in between.
        for (key, ports) in nets {
            syscall::update(fd, key, ports).map_err(io(MAP_PROXIED_NETS))?;
        }
        for key in syscall::keys::<LpmKey>(fd).map_err(io(MAP_PROXIED_NETS))? {
            if !nets.iter().any(|(k, _)| *k == key) {
                syscall::delete(fd, &key).map_err(io(MAP_PROXIED_NETS))?;
            }
        }
        Ok(())
    }

    /// Drops every verdict (exact and per job).
    pub fn clear(&self) -> Result<usize, BpfError> {
        let mut dropped = 0;
        let fd_v = fd(&self.verdicts, MAP_VERDICTS)?;
        for key in syscall::keys::<VerdictKey>(fd_v).map_err(io(MAP_VERDICTS))? {
            dropped += usize::from(syscall::delete(fd_v, &key).map_err(io(MAP_VERDICTS))?);
        }
        let fd_j = fd(&self.jobs, MAP_JOB_VERDICTS)?;
        for key in syscall::keys::<u64>(fd_j).map_err(io(MAP_JOB_VERDICTS))? {
            dropped += usize::from(syscall::delete(fd_j, &key).map_err(io(MAP_JOB_VERDICTS))?);
        }
        Ok(dropped)
    }
}
