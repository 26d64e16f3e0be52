//! The agent's side of `REFUSED_DST`: destinations whose upstream refused the proxy's
//! connect for a job cgroup, so that the job's next connects to them are refused at
//! `connect()`, as they would be directly, instead of being accepted by the proxy first.
use std::os::fd::AsFd as _;

use aya::maps::{Map, MapData};
use tollgate_common::{ConnInfo, MAP_REFUSED_DST, Refusal, RefusedKey, TupleKey};

use super::{BpfError, maps::monotonic_ns, syscall};

pub struct Refusals {
    map: Map,
}

fn io(source: std::io::Error) -> BpfError {
    BpfError::MapIo {
        name: MAP_REFUSED_DST,
        source,
    }
}

impl Refusals {
    pub(super) fn new(map: Map) -> Self {
        Self { map }
    }

    fn data(&self) -> Result<&MapData, BpfError> {
        match &self.map {
            Map::LruHashMap(data) | Map::HashMap(data) => Ok(data),
            _ => Err(BpfError::Missing(MAP_REFUSED_DST)),
        }
    }

    /// The upstream refused the proxy's connect for this connection with `errno`.
    pub fn remember(&self, info: &ConnInfo, errno: i32) -> Result<(), BpfError> {
        let key = RefusedKey {
            cgroup_id: info.cgroup_id,
            dst: TupleKey {
                family: u32::from(info.orig_family),
                port: u32::from(info.orig_port),
                ip: info.orig_ip,
            },
        };
        let now = monotonic_ns();
        let value = Refusal {
            errno: errno.unsigned_abs(),
            _pad: 0,
            since_ns: now,
            last_attempt_ns: now,
            refused: 0,
        };
        syscall::update(self.data()?.fd().as_fd(), &key, &value).map_err(io)
    }

    /// Every remembered destination, with the age in ns of its last refused attempt.
    pub fn list(&self) -> Result<Vec<(RefusedKey, Refusal, u64)>, BpfError> {
        let fd = self.data()?.fd().as_fd();
        let now = monotonic_ns();
        let mut out = Vec::new();
        for key in syscall::keys::<RefusedKey>(fd).map_err(io)? {
            if let Some(value) = syscall::lookup::<RefusedKey, Refusal>(fd, &key).map_err(io)? {
                out.push((key, value, now.saturating_sub(value.last_attempt_ns)));
            }
        }
        Ok(out)
    }

    pub fn forget(&self, key: &RefusedKey) -> Result<(), BpfError> {
        syscall::delete(self.data()?.fd().as_fd(), key)
            .map(|_| ())
            .map_err(io)
    }
}
