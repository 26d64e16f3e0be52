//! Which process a runner hook enrolls, decided from the kernel's process tree (/proc),
//! never from the request: the GitHub hook enrolls the caller's own `Runner.Worker`
//! ancestor, the GitLab hook the caller's parent (the job's shell).
use crate::proc_info;

/// The GitHub Actions runner's per-job process.
pub const GITHUB_WORKER_COMM: &str = "Runner.Worker";
/// How far up the tree the worker may be (worker → shell → hook script → tollgate).
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AncestryError {
    #[error("no {GITHUB_WORKER_COMM} process among the ancestors of pid {0}")]
    NoWorker(u32),
    #[error("process {pid} runs as uid {uid}, not as the caller's uid {caller_uid}")]
    OtherUser { pid: u32, uid: u32, caller_uid: u32 },
    #[error("process {pid}: {message}")]
    Process { pid: u32, message: String },
}

/// A process chosen for enrolment: identified by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    pub start: u64,
    /// The processes between the caller (included) and the target (excluded).
    pub depth: usize,
}

fn process_error(pid: u32) -> impl Fn(std::io::Error) -> AncestryError {
    move |error| AncestryError::Process {
        pid,
        message: error.to_string(),
    }
}

/// The caller and its ancestors up to (excluding) `stop`, or up to `limit` of them.
pub fn chain(caller: u32, stop: u32, limit: usize) -> Vec<u32> {
    let mut chain = Vec::new();
    let mut pid = caller;
    while pid > 1 && pid != stop && chain.len() < limit {
        chain.push(pid);
        match proc_info::parent_pid(pid) {
            Ok(parent) => pid = parent,
            Err(_) => break,
        }
    }
    chain
}

fn checked(pid: u32, depth: usize, caller_uid: u32) -> Result<Target, AncestryError> {
    let uid = proc_info::uid(pid).map_err(process_error(pid))?;
    if uid != caller_uid {
        return Err(AncestryError::OtherUser {
            pid,
            uid,
            caller_uid,
        });
    }
    let start = proc_info::start_time(pid).map_err(process_error(pid))?;
    Ok(Target { pid, start, depth })
}

/// The nearest `Runner.Worker` ancestor of `caller`, running as the caller's uid.
pub fn github_worker(caller: u32, caller_uid: u32) -> Result<Target, AncestryError> {
    let mut pid = caller;
    for depth in 0..=MAX_DEPTH {
        if depth > 0 && proc_info::comm(pid).map_err(process_error(pid))? == GITHUB_WORKER_COMM {
            return checked(pid, depth, caller_uid);
        }
        pid = proc_info::parent_pid(pid).map_err(process_error(pid))?;
        if pid <= 1 {
            break;
        }
    }
    Err(AncestryError::NoWorker(caller))
}

/// The caller's parent (the shell running GitLab's `pre_build_script`), running as the
/// caller's uid.
pub fn parent_shell(caller: u32, caller_uid: u32) -> Result<Target, AncestryError> {
    let parent = proc_info::parent_pid(caller).map_err(process_error(caller))?;
    if parent <= 1 {
        return Err(AncestryError::Process {
            pid: caller,
            message: "has no parent to enroll".to_owned(),
        });
    }
    checked(parent, 1, caller_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_has_no_worker_but_has_a_parent() {
        let me = std::process::id();
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(github_worker(me, uid), Err(AncestryError::NoWorker(me)));
        let parent = parent_shell(me, uid).unwrap();
        assert_eq!(parent.pid, std::os::unix::process::parent_id());
        assert!(matches!(
            parent_shell(me, uid + 1),
            Err(AncestryError::OtherUser { .. })
        ));
        let chain = chain(me, parent.pid, 8);
        assert_eq!(chain, vec![me]);
    }
}
