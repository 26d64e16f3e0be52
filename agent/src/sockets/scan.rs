//! Detection where the kernel cannot refuse. The scanner looks at the open sockets of
//! every job process at a short interval and kills a process that holds
//! - without BPF LSM, a kind of socket not on the allow list (`socket()` of families
//!   other than IPv4 and IPv6, such as AF_PACKET, AF_VSOCK or AF_XDP, is not seen at
//!   creation);
//! - an IPv4 or IPv6 socket that was not created (or accepted) in a job: one passed in
//!   over a unix socket or taken from a process outside with pidfd_getfd. The kernel
//!   runs a socket's cgroup hooks for the cgroup it was created in, so such a socket's
//!   traffic would not be redirected. Sockets a process held when it was enrolled (a
//!   runner's own connections) are its own, and so are their copies in its children.
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::Arc,
};

use tollgate_common::{AF_INET, AF_INET6, SOCK_ANY, SockKind};

use super::brought::{Brought, socket_inode};
use crate::{
    bpf::ConnMaps,
    record::{self, EventRecord},
};

/// What one process had open at the last scan.
struct Seen {
    start: u64,
    inodes: HashSet<u64>,
}

pub struct Scanner {
    allow: Vec<SockKind>,
    /// Whether kinds are checked here (the kernel cannot refuse them at `socket()`).
    check_kinds: bool,
    maps: Arc<ConnMaps>,
    seen: HashMap<u32, Seen>,
}

/// Why a process was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A kind of socket not on the allow list.
    Refused,
    /// An IPv4 or IPv6 socket created outside every job.
    FromOutside,
}

/// A process found holding a refused socket, and what became of it.
pub struct Finding {
    pub pid: u32,
    pub uid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    pub kind: SockKind,
    pub found: Found,
    pub killed: bool,
}

impl Scanner {
    pub fn new(allow: &[SockKind], check_kinds: bool, maps: Arc<ConnMaps>) -> Self {
        Self {
            allow: super::expand(allow),
            check_kinds,
            maps,
            seen: HashMap::new(),
        }
    }

    /// Scans the processes of one job cgroup (and its sub-cgroups). Sockets seen before
    /// in the same process are not looked at again.
    pub fn scan_cgroup(
        &mut self,
        cgroup: &Path,
        live: &mut HashSet<u32>,
        brought: &Brought,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
        for pid in crate::cgroup::pids(cgroup) {
            live.insert(pid);
            let Ok(start) = crate::proc_info::start_time(pid) else {
                continue;
            };
            let seen = self.seen.entry(pid).or_insert_with(|| Seen {
                start,
                inodes: HashSet::new(),
            });
            if seen.start != start {
                *seen = Seen {
                    start,
                    inodes: HashSet::new(),
                };
            }
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            let mut pidfd = None;
            for entry in fds.flatten() {
                let Ok(target) = fs::read_link(entry.path()) else {
                    continue;
                };
                let Some(inode) = socket_inode(&target.to_string_lossy()) else {
                    continue;
                };
                if !seen.inodes.insert(inode) {
                    continue;
                }
                let Some(fd) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<i32>().ok())
                else {
                    continue;
                };
                if pidfd.is_none() {
                    pidfd = pidfd_open(pid);
                }
                let Some(pidfd) = pidfd.as_ref() else {
                    break;
                };
                let Some(dup) = take_copy(pidfd, fd) else {
                    continue;
                };
                let Some(kind) = super::options::kind(&dup).ok() else {
                    continue;
                };
                let found = if self.check_kinds && !allowed(&self.allow, kind) {
                    Some(Found::Refused)
                } else if is_inet(kind)
                    && !brought.contains(cgroup, inode)
                    && super::options::cookie(&dup)
                        .ok()
                        .is_some_and(|cookie| matches!(self.maps.is_job_socket(cookie), Ok(false)))
                {
                    Some(Found::FromOutside)
                } else {
                    None
                };
                if let Some(found) = found {
                    findings.push(kill(pid, pidfd, kind, found));
                    break;
                }
            }
        }
        findings
    }

    /// Forgets the processes that were not seen in this round.
    pub fn retain(&mut self, live: &HashSet<u32>) {
        self.seen.retain(|pid, _| live.contains(pid));
    }
}

/// Kills `pid` (reading who it was first: the kill takes /proc/<pid> away).
fn kill(pid: u32, pidfd: &OwnedFd, kind: SockKind, found: Found) -> Finding {
    let uid = crate::proc_info::uid(pid).ok();
    let comm = crate::proc_info::comm(pid).unwrap_or_default();
    let exe = crate::proc_info::exe(pid).map(|p| p.display().to_string());
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    let killed = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0;
    Finding {
        pid,
        uid,
        comm,
        exe,
        kind,
        found,
        killed,
    }
}

fn is_inet(kind: SockKind) -> bool {
    kind.family == u32::from(AF_INET) || kind.family == u32::from(AF_INET6)
}

/// The event a finding is recorded as.
pub fn finding_record(f: &Finding, job_id: &str, cgroup_id: u64) -> EventRecord {
    EventRecord {
        at: record::now_ms(),
        kind: match f.found {
            Found::Refused => "socket_detected",
            Found::FromOutside => "socket_from_outside",
        }
        .to_owned(),
        job_id: Some(job_id.to_owned()),
        cgroup_id,
        pid: f.pid,
        tid: f.pid,
        uid: f.uid.unwrap_or(u32::MAX),
        gid: u32::MAX,
        comm: f.comm.clone(),
        exe: f.exe.clone(),
        action: if f.killed { "killed" } else { "kill_failed" }.to_owned(),
        detail: super::describe(f.kind),
    }
}

fn allowed(allow: &[SockKind], kind: SockKind) -> bool {
    allow.contains(&kind)
        || allow.contains(&SockKind {
            protocol: SOCK_ANY,
            ..kind
        })
        || allow.contains(&SockKind {
            type_: SOCK_ANY,
            protocol: SOCK_ANY,
            ..kind
        })
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a new fd that we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A copy of the process's descriptor `fd` (pidfd_getfd, kernel 5.6+), closed on drop.
fn take_copy(pidfd: &OwnedFd, fd: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_getfd takes a pidfd, a target fd and flags; returns a new fd or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    // SAFETY: a non-negative return is a new fd that we own.
    (dup >= 0).then(|| unsafe { OwnedFd::from_raw_fd(dup as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_processs_own_sockets_are_read_back() {
        // This test process's own UDP socket, through its pidfd.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let pidfd = pidfd_open(std::process::id()).expect("pidfd_open");
        let copy = take_copy(&pidfd, sock.as_raw_fd()).expect("pidfd_getfd");
        let kind = crate::sockets::options::kind(&copy).expect("kind");
        assert_eq!((kind.family, kind.type_, kind.protocol), (2, 2, 17));
        assert!(is_inet(kind));
        assert!(crate::sockets::options::cookie(&copy).is_ok_and(|c| c > 0));
        let allow = super::super::expand(&crate::sockets::SocketsConfig::default().kinds());
        assert!(allowed(&allow, kind));
        assert!(!allowed(
            &allow,
            SockKind {
                family: 17,
                type_: 3,
                protocol: 768
            }
        ));
    }
}
