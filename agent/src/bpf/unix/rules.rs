//! The agent's side of the unix verdict map: it holds exactly the rules the agent last
//! computed, host-wide (cgroup id 0) and per job cgroup.
use std::{collections::HashMap, os::fd::AsFd as _};

use aya::maps::Map;
use tollgate_common::{MAP_UNIX_RULES, UNIX_RULES_CAPACITY, UnixKey};

use crate::bpf::{BpfError, syscall};

pub struct UnixRules {
    map: Map,
}

impl UnixRules {
    pub(in crate::bpf) fn new(map: Map) -> Self {
        Self { map }
    }

    /// Makes the map hold `wanted` and nothing else. New and changed verdicts are
    /// written before stale ones go, so no path is between two verdicts unruled.
    pub fn replace(&self, wanted: &HashMap<UnixKey, u32>) -> Result<(), BpfError> {
        if wanted.len() > UNIX_RULES_CAPACITY as usize {
            return Err(BpfError::TooMany {
                name: MAP_UNIX_RULES,
                capacity: UNIX_RULES_CAPACITY,
            });
        }
        let Map::HashMap(data) = &self.map else {
            return Err(BpfError::Missing(MAP_UNIX_RULES));
        };
        let fd = data.fd().as_fd();
        let io = |source| BpfError::MapIo {
            name: MAP_UNIX_RULES,
            source,
        };
        let present: Vec<UnixKey> = syscall::keys(fd).map_err(io)?;
        for (key, verdict) in wanted {
            let current: Option<u32> = syscall::lookup(fd, key).map_err(io)?;
            if current != Some(*verdict) {
                syscall::update(fd, key, verdict).map_err(io)?;
            }
        }
        for key in present {
            if !wanted.contains_key(&key) {
                syscall::delete(fd, &key).map_err(io)?;
            }
        }
        Ok(())
    }
}
