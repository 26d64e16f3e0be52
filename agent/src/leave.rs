//! Processes that leave their job. A non-root job cannot move itself to another cgroup;
//! a root job can (it writes `cgroup.procs` elsewhere). Every watch interval the job
//! cgroups' processes are listed; one that was in a job, still runs and is no longer in
//! any job cgroup has left: it is killed and recorded as tampering. (A process that
//! leaves within one interval of its creation is not seen: docs/threat-model.md.)
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::record::{self, EventRecord};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    job_id: String,
    cgroup_id: u64,
    cgroup_path: PathBuf,
    start: u64,
}

/// A process in a job cgroup: its job's id, cgroup id and cgroup path.
pub type Membership = (String, u64, PathBuf);

#[derive(Default)]
pub struct Members {
    last: HashMap<u32, Member>,
}

impl Members {
    /// `now`: every pid in a job cgroup. `mount`: the cgroup2 mount. Returns the events
    /// for the processes that left since the last call (each killed).
    pub fn update(&mut self, now: HashMap<u32, Membership>, mount: &Path) -> Vec<EventRecord> {
        let mut left = Vec::new();
        for (pid, member) in &self.last {
            if now.contains_key(pid) || !crate::proc_info::is_alive(*pid, member.start) {
                continue;
            }
            let Ok(relative) = crate::cgroup::cgroup_of_pid(*pid) else {
                continue;
            };
            let to = mount.join(relative.strip_prefix("/").unwrap_or(&relative));
            // Still under its job's cgroup (the job is ending, or listing raced a fork).
            if to.starts_with(&member.cgroup_path) {
                continue;
            }
            let to = to.display().to_string();
            let uid = crate::proc_info::uid(*pid).unwrap_or(u32::MAX);
            let comm = crate::proc_info::comm(*pid).unwrap_or_default();
            let exe = crate::proc_info::exe(*pid).map(|p| p.display().to_string());
            // The start time was checked just above (a reused pid would have another).
            let killed = crate::proc_info::kill(*pid);
            left.push(EventRecord {
                at: record::now_ms(),
                kind: "left_job".to_owned(),
                job_id: Some(member.job_id.clone()),
                cgroup_id: member.cgroup_id,
                pid: *pid,
                tid: *pid,
                uid,
                gid: u32::MAX,
                comm,
                exe,
                action: if killed { "killed" } else { "kill_failed" }.to_owned(),
                detail: format!("moved to cgroup {to}"),
            });
        }
        self.last = now
            .into_iter()
            .filter_map(|(pid, (job_id, cgroup_id, cgroup_path))| {
                let start = crate::proc_info::start_time(pid).ok()?;
                Some((
                    pid,
                    Member {
                        job_id,
                        cgroup_id,
                        cgroup_path,
                        start,
                    },
                ))
            })
            .collect();
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_gone_from_its_job_but_alive_has_left_and_an_exited_one_has_not() {
        let mut members = Members::default();
        let me = std::process::id();
        // An exited process (pid 0 has no /proc entry and no start time): not kept.
        let mount = Path::new("/sys/fs/cgroup");
        let job = |path: &str| ("j1".to_owned(), 7, PathBuf::from(path));
        let first = members.update(
            HashMap::from([(me, job("/x")), (u32::MAX - 1, job("/x"))]),
            mount,
        );
        assert!(first.is_empty());
        assert_eq!(members.last.len(), 1, "only live processes are tracked");
        // Still there: nothing.
        assert!(
            members
                .update(HashMap::from([(me, job("/x"))]), mount)
                .is_empty()
        );
        // Gone from the listing but still under its job's cgroup (this process's own
        // cgroup stands in for the job's): not a leaver, not killed.
        let own = crate::cgroup::cgroup_of_pid(me).unwrap();
        let own = mount.join(own.strip_prefix("/").unwrap_or(&own));
        members.last.get_mut(&me).unwrap().cgroup_path = own;
        assert!(members.update(HashMap::new(), mount).is_empty());
        // (Leaving is not simulated here: it kills the process. The e2e test does it.)
    }
}
