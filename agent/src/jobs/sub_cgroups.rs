//! Sub-cgroups that jobs created, by the job cgroup they are in: found by a walk of the
//! cgroup tree once, then looked up. Cgroup ids are never reused, and a cgroup never
//! moves, so an entry stays true for as long as its job is known.
use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

/// Entries remembered, at most this many before the cache starts over.
const CAPACITY: usize = 4096;

#[derive(Default)]
pub struct SubCgroups(Mutex<HashMap<u64, u64>>);

impl SubCgroups {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job cgroup a sub-cgroup was found in.
    pub fn job_cgroup(&self, cgroup_id: u64) -> Option<u64> {
        self.map().get(&cgroup_id).copied()
    }

    pub fn insert(&self, cgroup_id: u64, job_cgroup: u64) {
        let mut map = self.map();
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(cgroup_id, job_cgroup);
    }

    /// Its job is gone for good.
    pub fn forget(&self, cgroup_id: u64) {
        self.map().remove(&cgroup_id);
    }
}
