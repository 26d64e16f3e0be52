//! The agent's view of the programs' maps.
use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd},
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use tollgate_common::{
    CONN_MAP_CAPACITY, ConnInfo, Counter, MAP_CONN_BY_COOKIE, MAP_CONN_BY_TUPLE, MAP_COUNTERS,
    MAP_JOB_SOCKETS, MAP_SETTINGS, MAP_SOCK_ALLOW, MAP_UDP_BY_TUPLE, MAP_UDP_DENIED,
    MAP_UDP_RELAY_PEER, MAP_UDP_RELAY_PORT, PENDING_SHARED, PendingConn, PendingKey,
    SOCK_ALLOW_CAPACITY, Settings, SockKind, TUPLE_SLOTS, TupleKey, UdpDenyKey,
};

use super::{
    BpfError,
    pending::{self, Taken},
    syscall,
};

/// Entries in each connection map, for the occupancy metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapOccupancy {
    pub conn_by_cookie: usize,
    pub conn_by_tuple: usize,
    pub capacity: usize,
}

pub struct ConnMaps {
    cookie: Map,
    tuple: Map,
    settings: Map,
    counters: Map,
    sock_allow: Map,
    job_sockets: Map,
    udp: UdpMaps,
    /// Serializes read-modify-writes of the settings (UDP relay, kernel log).
    settings_writer: std::sync::Mutex<()>,
}

/// The maps of the UDP path.
pub(super) struct UdpMaps {
    pub by_tuple: Map,
    pub relay_port: Map,
    pub relay_peer: Map,
    pub denied: Map,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

fn data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(data) | Map::LruHashMap(data) | Map::Array(data) | Map::PerCpuArray(data) => {
            Some(data)
        }
        _ => None,
    }
}

impl ConnMaps {
    pub(super) fn from_maps(
        cookie: Map,
        tuple: Map,
        settings: Map,
        counters: Map,
        sock_allow: Map,
        job_sockets: Map,
        udp: UdpMaps,
    ) -> Self {
        Self {
            cookie,
            tuple,
            settings,
            counters,
            sock_allow,
            job_sockets,
            udp,
            settings_writer: std::sync::Mutex::new(()),
        }
    }

    /// Whether the socket with this cookie was created (or accepted) in a job.
    pub fn is_job_socket(&self, cookie: u64) -> Result<bool, BpfError> {
        let data = data(&self.job_sockets).ok_or(BpfError::Missing(MAP_JOB_SOCKETS))?;
        syscall::lookup::<u64, u64>(data.fd().as_fd(), &cookie)
            .map(|found| found.is_some())
            .map_err(|source| BpfError::MapIo {
                name: MAP_JOB_SOCKETS,
                source,
            })
    }

    /// The job socket a redirected datagram (DNS or relayed UDP) came from, by its
    /// source, if the kernel keyed it no longer than `max_age` ago.
    pub fn udp_source(
        &self,
        key: &TupleKey,
        max_age: Duration,
    ) -> Result<Option<ConnInfo>, BpfError> {
        let data = data(&self.udp.by_tuple).ok_or(BpfError::Missing(MAP_UDP_BY_TUPLE))?;
        let info =
            syscall::lookup::<TupleKey, ConnInfo>(data.fd().as_fd(), key).map_err(|source| {
                BpfError::MapIo {
                    name: MAP_UDP_BY_TUPLE,
                    source,
                }
            })?;
        let max_age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        Ok(info.filter(|info| monotonic_ns().saturating_sub(info.ktime_ns) <= max_age))
    }

    /// Whether the kernel sends jobs' UDP (other than DNS) to the relay (`true`) or
    /// refuses it at once (`false`: no policy can permit `udp:send`).
    pub fn set_udp_relay(&self, relay: bool) -> Result<(), BpfError> {
        self.update_settings(|settings| settings.udp_relay = u32::from(relay))
            .map(|_| ())
    }

    /// Switches the programs' rare-event log; returns the previous setting.
    pub fn set_kernel_log(&self, log: super::KernelLog) -> Result<super::KernelLog, BpfError> {
        let previous = self.update_settings(|settings| settings.log_level = log.level())?;
        Ok(super::KernelLog::from_level(previous.log_level))
    }

    /// The programs' rare-event log setting, as the kernel has it.
    pub fn kernel_log(&self) -> Result<super::KernelLog, BpfError> {
        Ok(super::KernelLog::from_level(
            self.read_settings()?.log_level,
        ))
    }

    /// The settings as the programs read them.
    fn read_settings(&self) -> Result<Settings, BpfError> {
        let data = data(&self.settings).ok_or(BpfError::Missing(MAP_SETTINGS))?;
        syscall::lookup(data.fd().as_fd(), &0_u32)
            .map_err(|source| BpfError::MapIo {
                name: MAP_SETTINGS,
                source,
            })?
            .ok_or(BpfError::Missing(MAP_SETTINGS))
    }

    /// Read, change and write the settings, one writer at a time; returns the settings
    /// as they were.
    fn update_settings(&self, change: impl FnOnce(&mut Settings)) -> Result<Settings, BpfError> {
        let _one_writer = self
            .settings_writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = self.read_settings()?;
        let mut settings = previous;
        change(&mut settings);
        let data = data(&self.settings).ok_or(BpfError::Missing(MAP_SETTINGS))?;
        syscall::update(data.fd().as_fd(), &0_u32, &settings).map_err(|source| {
            BpfError::MapIo {
                name: MAP_SETTINGS,
                source,
            }
        })?;
        Ok(previous)
    }

    /// Sends jobs' datagrams to `dst` to the relay socket on `port` (and shows what that
    /// socket sends them as coming from `dst`).
    pub fn add_relay_port(&self, dst: &TupleKey, port: u16) -> Result<(), BpfError> {
        // The peer first: a datagram sent to the new port is keyed from the start.
        self.udp_update(
            &self.udp.relay_peer,
            MAP_UDP_RELAY_PEER,
            &u32::from(port),
            dst,
        )?;
        self.udp_update(
            &self.udp.relay_port,
            MAP_UDP_RELAY_PORT,
            dst,
            &u32::from(port),
        )
    }

    /// Undoes [`Self::add_relay_port`]: new datagrams to `dst` go to the proxy's port.
    pub fn remove_relay_port(&self, dst: &TupleKey, port: u16) -> Result<(), BpfError> {
        self.udp_delete(&self.udp.relay_port, MAP_UDP_RELAY_PORT, dst)?;
        self.udp_delete(&self.udp.relay_peer, MAP_UDP_RELAY_PEER, &u32::from(port))
    }

    /// From now on, `key`'s socket cannot send to its destination (EPERM).
    pub fn deny_udp(&self, key: &UdpDenyKey) -> Result<(), BpfError> {
        self.udp_update(&self.udp.denied, MAP_UDP_DENIED, key, &1_u32)
    }

    /// Forgets every denial (a new policy decides again).
    pub fn clear_udp_denied(&self) -> Result<usize, BpfError> {
        let data = data(&self.udp.denied).ok_or(BpfError::Missing(MAP_UDP_DENIED))?;
        let fd = data.fd().as_fd();
        let io = |source| BpfError::MapIo {
            name: MAP_UDP_DENIED,
            source,
        };
        let keys = syscall::keys::<UdpDenyKey>(fd).map_err(io)?;
        for key in &keys {
            syscall::delete(fd, key).map_err(io)?;
        }
        Ok(keys.len())
    }

    /// The relay ports the kernel knows (to remove those of an earlier agent).
    pub fn relay_ports(&self) -> Result<Vec<(TupleKey, u16)>, BpfError> {
        let data = data(&self.udp.relay_port).ok_or(BpfError::Missing(MAP_UDP_RELAY_PORT))?;
        let fd = data.fd().as_fd();
        let io = |source| BpfError::MapIo {
            name: MAP_UDP_RELAY_PORT,
            source,
        };
        let mut ports = Vec::new();
        for key in syscall::keys::<TupleKey>(fd).map_err(io)? {
            if let Some(port) = syscall::lookup::<TupleKey, u32>(fd, &key).map_err(io)? {
                ports.push((key, port as u16));
            }
        }
        Ok(ports)
    }

    fn udp_update<K: syscall::Plain, V: syscall::Plain>(
        &self,
        map: &Map,
        name: &'static str,
        key: &K,
        value: &V,
    ) -> Result<(), BpfError> {
        let data = data(map).ok_or(BpfError::Missing(name))?;
        syscall::update(data.fd().as_fd(), key, value)
            .map_err(|source| BpfError::MapIo { name, source })
    }

    fn udp_delete<K: syscall::Plain>(
        &self,
        map: &Map,
        name: &'static str,
        key: &K,
    ) -> Result<(), BpfError> {
        let data = data(map).ok_or(BpfError::Missing(name))?;
        syscall::delete(data.fd().as_fd(), key)
            .map(|_| ())
            .map_err(|source| BpfError::MapIo { name, source })
    }

    /// Makes the kernel's socket allow list exactly `kinds`: new entries first, then the
    /// stale ones go, so a kind allowed before and after is never refused in between.
    pub fn write_sock_allow(&self, kinds: &[SockKind]) -> Result<(), BpfError> {
        let kinds = crate::sockets::expand(kinds);
        if kinds.len() > SOCK_ALLOW_CAPACITY as usize {
            return Err(BpfError::TooMany {
                name: MAP_SOCK_ALLOW,
                capacity: SOCK_ALLOW_CAPACITY,
            });
        }
        let data = data(&self.sock_allow).ok_or(BpfError::Missing(MAP_SOCK_ALLOW))?;
        let fd = data.fd().as_fd();
        let io = |source| BpfError::MapIo {
            name: MAP_SOCK_ALLOW,
            source,
        };
        for kind in &kinds {
            syscall::update(fd, kind, &1_u32).map_err(io)?;
        }
        for old in syscall::keys::<SockKind>(fd).map_err(io)? {
            if !kinds.contains(&old) {
                syscall::delete(fd, &old).map_err(io)?;
            }
        }
        Ok(())
    }

    /// Takes (looks up and deletes, atomically where the kernel can) the entry of the
    /// connection the proxy accepted from `tuple`. An unshared entry in slot 0 is the
    /// only one: taken in one step. Otherwise the entries are chosen among
    /// ([`pending::choose`]) by the kernel's marks and by whether the accepted socket is
    /// `alive` (asked only then); orphans found on the way are removed.
    pub fn take(&self, tuple: &TupleKey, alive: impl FnOnce() -> bool) -> io::Result<Taken> {
        let data =
            data(&self.tuple).ok_or_else(|| io::Error::other("CONN_BY_TUPLE is not a hash map"))?;
        let fd = data.fd().as_fd();
        let first = PendingKey {
            tuple: *tuple,
            slot: 0,
        };
        let held: Option<PendingConn> = syscall::lookup_and_delete(fd, &first)?;
        if let Some(entry) = held
            && entry.flags & PENDING_SHARED == 0
        {
            return Ok(Taken::Found(entry.info));
        }
        let mut entries: Vec<(PendingKey, PendingConn)> =
            held.map(|e| (first, e)).into_iter().collect();
        for slot in 1..TUPLE_SLOTS {
            let key = PendingKey {
                tuple: *tuple,
                slot,
            };
            if let Some(entry) = syscall::lookup::<PendingKey, PendingConn>(fd, &key)? {
                entries.push((key, entry));
            }
        }
        let choice = pending::choose(&entries, entries.len() < 2 || alive());
        for orphan in &choice.orphans {
            if *orphan != first {
                syscall::delete(fd, orphan)?;
            }
        }
        let taken = match choice.take {
            Ok(key) if key == first => held.map(|e| e.info),
            Ok(key) => {
                syscall::lookup_and_delete::<PendingKey, PendingConn>(fd, &key)?.map(|e| e.info)
            }
            Err(_) => None,
        };
        // Slot 0's entry was taken out to look at; it goes back unless it was chosen or
        // an orphan.
        if let Some(entry) = held
            && choice.take != Ok(first)
            && !choice.orphans.contains(&first)
        {
            self.put_back(fd, tuple, &entry)?;
        }
        Ok(match (taken, choice.take) {
            (Some(info), _) if entries.len() == 1 => Taken::Found(info),
            (Some(info), _) => Taken::Chosen {
                info,
                orphans: choice.orphans.len(),
            },
            (None, Err(entries)) => Taken::Ambiguous { entries },
            (None, Ok(_)) => Taken::None,
        })
    }

    /// Puts a shared entry taken out of slot 0 back into a free slot (slot 0 first).
    fn put_back(
        &self,
        fd: BorrowedFd<'_>,
        tuple: &TupleKey,
        entry: &PendingConn,
    ) -> io::Result<()> {
        for slot in 0..TUPLE_SLOTS {
            let key = PendingKey {
                tuple: *tuple,
                slot,
            };
            if syscall::insert_new(fd, &key, entry)? {
                return Ok(());
            }
        }
        Err(io::Error::other(
            "no free slot to put a waiting connection's entry back: it will be refused",
        ))
    }

    pub(super) fn write_settings(&mut self, settings: Settings) -> Result<(), BpfError> {
        let mut array: Array<&mut MapData, Settings> =
            Array::try_from(&mut self.settings).map_err(map_err(MAP_SETTINGS))?;
        array.set(0, settings, 0).map_err(map_err(MAP_SETTINGS))
    }

    /// Counts the entries of both connection maps.
    pub fn occupancy(&self) -> Result<MapOccupancy, BpfError> {
        let cookie: HashMap<&MapData, u64, ConnInfo> =
            HashMap::try_from(&self.cookie).map_err(map_err(MAP_CONN_BY_COOKIE))?;
        let tuple: HashMap<&MapData, PendingKey, PendingConn> =
            HashMap::try_from(&self.tuple).map_err(map_err(MAP_CONN_BY_TUPLE))?;
        Ok(MapOccupancy {
            conn_by_cookie: cookie.keys().filter(Result::is_ok).count(),
            conn_by_tuple: tuple.keys().filter(Result::is_ok).count(),
            capacity: CONN_MAP_CAPACITY as usize,
        })
    }

    /// The kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, BpfError> {
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(&self.counters).map_err(map_err(MAP_COUNTERS))?;
        Counter::ALL
            .iter()
            .map(|&counter| {
                let values = array
                    .get(&(counter as u32), 0)
                    .map_err(map_err(MAP_COUNTERS))?;
                Ok((counter, values.iter().sum()))
            })
            .collect()
    }

    /// Removes tuple entries that no accept() claimed within `max_age` and whose
    /// connection is gone: no TCP socket has the entry's tuple as an end (the client's
    /// own socket, or the connection waiting in the proxy's accept queue, which stays
    /// there after its client closed). An old entry of a live connection is still queued
    /// for the proxy (a slow host, a long accept queue) and is kept. `live` lists the
    /// ends of the host's TCP sockets; it is asked only when some entry is old, and when
    /// it fails the old entries are removed as before. Returns (removed, kept).
    pub fn expire_stale(
        &self,
        max_age: Duration,
        live: impl FnOnce() -> io::Result<std::collections::HashSet<TupleKey>>,
    ) -> Result<(usize, usize), BpfError> {
        let tuple: HashMap<&MapData, PendingKey, PendingConn> =
            HashMap::try_from(&self.tuple).map_err(map_err(MAP_CONN_BY_TUPLE))?;
        let now = monotonic_ns();
        let max_age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        let mut stale: Vec<PendingKey> = tuple
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, entry)| now.saturating_sub(entry.info.ktime_ns) > max_age)
            .map(|(key, _)| key)
            .collect();
        if stale.is_empty() {
            return Ok((0, 0));
        }
        let before = stale.len();
        match live() {
            Ok(live) => stale.retain(|key| !live.contains(&key.tuple)),
            Err(error) => {
                tracing::warn!(%error, "listing TCP sockets: expiring old entries unchecked");
            }
        }
        let kept = before - stale.len();
        let data = data(&self.tuple).ok_or_else(|| BpfError::Missing(MAP_CONN_BY_TUPLE))?;
        let fd = data.fd().as_fd();
        let mut removed = 0;
        for key in stale {
            if syscall::lookup_and_delete::<PendingKey, PendingConn>(fd, &key)
                .ok()
                .flatten()
                .is_some()
            {
                removed += 1;
            }
        }
        Ok((removed, kept))
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC always exists on Linux; a failure would read as time zero.
    let Ok(ts) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return 0;
    };
    u64::try_from(ts.tv_sec())
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec()).unwrap_or(0))
}
