//! Detection where the kernel cannot refuse: without BPF LSM, `socket()` of families
//! other than IPv4 and IPv6 (AF_PACKET, AF_VSOCK, AF_XDP, ...) is not seen at creation.
//! The scanner looks at the open sockets of every job process at a short interval, and
//! kills a process that holds a kind of socket not on the allow list.
use std::{
    collections::{HashMap, HashSet},
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use tollgate_common::{SOCK_ANY, SockKind};

use crate::record::{self, EventRecord};

/// What one process had open at the last scan.
struct Seen {
    start: u64,
    inodes: HashSet<u64>,
}

pub struct Scanner {
    allow: Vec<SockKind>,
    seen: HashMap<u32, Seen>,
}

/// A process found holding a refused socket, and what became of it.
pub struct Finding {
    pub pid: u32,
    pub uid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    pub kind: SockKind,
    pub killed: bool,
}

impl Scanner {
    pub fn new(allow: &[SockKind]) -> Self {
        Self {
            allow: super::expand(allow),
            seen: HashMap::new(),
        }
    }

    #[cfg(test)]
    pub fn allows(&self, kind: SockKind) -> bool {
        allowed(&self.allow, kind)
    }

    /// Scans the processes of one job cgroup (and its sub-cgroups). Sockets seen before
    /// in the same process are not looked at again.
    pub fn scan_cgroup(&mut self, cgroup: &Path, live: &mut HashSet<u32>) -> Vec<Finding> {
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
                let Some(kind) = socket_kind(pidfd, fd) else {
                    continue;
                };
                if !allowed(&self.allow, kind) {
                    // Who it was, read before the kill takes /proc/<pid> away.
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
                    findings.push(Finding {
                        pid,
                        uid,
                        comm,
                        exe,
                        kind,
                        killed,
                    });
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

/// The event a finding is recorded as.
pub fn finding_record(f: &Finding, job_id: &str, cgroup_id: u64) -> EventRecord {
    EventRecord {
        at: record::now_ms(),
        kind: "socket_detected".to_owned(),
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

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a new fd that we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The family, type and protocol of the process's socket `fd` (a duplicate is taken
/// with pidfd_getfd, kernel 5.6+, and closed again).
fn socket_kind(pidfd: &OwnedFd, fd: i32) -> Option<SockKind> {
    // SAFETY: pidfd_getfd takes a pidfd, a target fd and flags; returns a new fd or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return None;
    }
    // SAFETY: a non-negative return is a new fd that we own.
    let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
    let opt = |name| -> Option<u32> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len are valid for writes of an int.
        let rc = unsafe {
            libc::getsockopt(
                dup.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value as u32)
    };
    Some(SockKind {
        family: opt(libc::SO_DOMAIN)?,
        type_: opt(libc::SO_TYPE)?,
        protocol: opt(libc::SO_PROTOCOL)?,
    })
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
    fn a_processs_own_sockets_are_read_back() {
        // This test process's own UDP socket, through its pidfd.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let pidfd = pidfd_open(std::process::id()).expect("pidfd_open");
        let kind = socket_kind(&pidfd, sock.as_raw_fd()).expect("kind");
        assert_eq!((kind.family, kind.type_, kind.protocol), (2, 2, 17));
        let scanner = Scanner::new(&crate::sockets::SocketsConfig::default().kinds());
        assert!(scanner.allows(kind));
        assert!(!scanner.allows(SockKind {
            family: 17,
            type_: 3,
            protocol: 768
        }));
    }
}
