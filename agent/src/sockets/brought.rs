//! The sockets processes brought into their job: held when they were enrolled (a
//! runner's own connections), or, after an agent restart, when their job was adopted.
//! They were made outside every job and are the process's own; the scan leaves them
//! (and their copies in the process's children) alone.
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

#[derive(Default)]
pub struct Brought {
    /// Job cgroup -> socket inodes.
    by_job: Mutex<HashMap<PathBuf, HashSet<u64>>>,
}

impl Brought {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<PathBuf, HashSet<u64>>) -> T) -> T {
        f(&mut self.by_job.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Notes the sockets `pid` holds now as brought into the job at `cgroup`.
    pub fn note(&self, cgroup: &Path, pid: u32) {
        let inodes = socket_inodes(pid);
        self.with(|by_job| {
            by_job.entry(cgroup.to_owned()).or_default().extend(inodes);
        });
    }

    /// Notes the sockets of every process in the job at `cgroup`.
    pub fn note_all(&self, cgroup: &Path) {
        for pid in crate::cgroup::pids(cgroup) {
            self.note(cgroup, pid);
        }
    }

    pub fn contains(&self, cgroup: &Path, inode: u64) -> bool {
        self.with(|by_job| {
            by_job
                .get(cgroup)
                .is_some_and(|inodes| inodes.contains(&inode))
        })
    }

    /// Forgets the jobs that are not among `cgroups`.
    pub fn retain(&self, cgroups: &HashSet<PathBuf>) {
        self.with(|by_job| by_job.retain(|cgroup, _| cgroups.contains(cgroup)));
    }
}

/// The inodes of the sockets among `pid`'s open files.
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .filter_map(|target| socket_inode(&target.to_string_lossy()))
        .collect()
}

/// `socket:[12345]` -> 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_are_parsed() {
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_inode("pipe:[4242]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn a_processs_sockets_are_noted_for_its_job() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inodes = socket_inodes(std::process::id());
        assert!(!inodes.is_empty());
        let brought = Brought::default();
        let job = Path::new("/sys/fs/cgroup/job-x");
        brought.note(job, std::process::id());
        assert!(inodes.iter().all(|&i| brought.contains(job, i)));
        assert!(!brought.contains(Path::new("/other"), inodes[0]));
        brought.retain(&HashSet::new());
        assert!(!brought.contains(job, inodes[0]));
        drop(sock);
    }
}
