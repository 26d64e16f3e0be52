//! The agent's view of the programs' maps.
use std::{io, os::fd::AsFd as _, time::Duration};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use tollgate_common::{
    CONN_MAP_CAPACITY, ConnInfo, Counter, MAP_CONN_BY_COOKIE, MAP_CONN_BY_TUPLE, MAP_COUNTERS,
    MAP_DNS_BY_TUPLE, MAP_SETTINGS, MAP_SOCK_ALLOW, SOCK_ALLOW_CAPACITY, Settings, SockKind,
    TupleKey,
};

use super::{BpfError, syscall};

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
    dns_by_tuple: Map,
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
        dns_by_tuple: Map,
    ) -> Self {
        Self {
            cookie,
            tuple,
            settings,
            counters,
            sock_allow,
            dns_by_tuple,
        }
    }

    /// The job socket a DNS query datagram came from, by its source, if the kernel keyed
    /// it no longer than `max_age` ago.
    pub fn dns_source(
        &self,
        key: &TupleKey,
        max_age: Duration,
    ) -> Result<Option<ConnInfo>, BpfError> {
        let data = data(&self.dns_by_tuple).ok_or(BpfError::Missing(MAP_DNS_BY_TUPLE))?;
        let info =
            syscall::lookup::<TupleKey, ConnInfo>(data.fd().as_fd(), key).map_err(|source| {
                BpfError::MapIo {
                    name: MAP_DNS_BY_TUPLE,
                    source,
                }
            })?;
        let max_age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        Ok(info.filter(|info| monotonic_ns().saturating_sub(info.ktime_ns) <= max_age))
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

    /// Takes (looks up and deletes, atomically where the kernel can) the entry for the
    /// client tuple an accepted connection came from.
    pub fn take(&self, key: &TupleKey) -> io::Result<Option<ConnInfo>> {
        let data =
            data(&self.tuple).ok_or_else(|| io::Error::other("CONN_BY_TUPLE is not a hash map"))?;
        syscall::lookup_and_delete(data.fd().as_fd(), key)
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
        let tuple: HashMap<&MapData, TupleKey, ConnInfo> =
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

    /// Removes tuple entries that no accept() claimed within `max_age` (the client went
    /// away before the proxy could accept). Returns how many were removed.
    pub fn expire_stale(&self, max_age: Duration) -> Result<usize, BpfError> {
        let tuple: HashMap<&MapData, TupleKey, ConnInfo> =
            HashMap::try_from(&self.tuple).map_err(map_err(MAP_CONN_BY_TUPLE))?;
        let now = monotonic_ns();
        let max_age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        let stale: Vec<TupleKey> = tuple
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, info)| now.saturating_sub(info.ktime_ns) > max_age)
            .map(|(key, _)| key)
            .collect();
        let mut removed = 0;
        for key in stale {
            if self.take(&key).ok().flatten().is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns().
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}
