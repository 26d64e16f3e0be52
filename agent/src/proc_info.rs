//! Facts about processes from /proc, used to check control-socket callers and job owners.
use std::{fs, io, path::PathBuf};

/// Fields of /proc/PID/stat after the `(comm)` field, which may itself contain spaces.
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    Ok(after.split_whitespace().map(str::to_owned).collect())
}

/// Sends SIGKILL to `pid`; true if the signal was delivered (the process existed and
/// could be signalled).
pub fn kill(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGKILL,
    )
    .is_ok()
}

/// The parent pid (field 4).
pub fn parent_pid(pid: u32) -> io::Result<u32> {
    stat_fields(pid)?
        .get(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ppid in stat"))
}

/// The start time in clock ticks since boot (field 22): with the pid, it names one
/// process even after the pid is reused.
pub fn start_time(pid: u32) -> io::Result<u64> {
    stat_fields(pid)?
        .get(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no starttime in stat"))
}

/// Whether the process that had `start` as its start time still runs (and is no zombie).
pub fn is_alive(pid: u32, start: u64) -> bool {
    match stat_fields(pid) {
        Ok(fields) => {
            fields.first().map(String::as_str) != Some("Z")
                && fields.get(19).and_then(|f| f.parse::<u64>().ok()) == Some(start)
        }
        Err(_) => false,
    }
}

/// The value of the `key:` line of /proc/`task`/status (`task`: a pid, `self` or
/// `thread-self`).
pub fn status_field(task: &str, key: &str) -> io::Result<String> {
    let status = fs::read_to_string(format!("/proc/{task}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(|value| value.trim().to_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no {key} in status")))
}

/// The real uid (first field of `Uid:` in /proc/PID/status).
pub fn uid(pid: u32) -> io::Result<u32> {
    status_field(&pid.to_string(), "Uid")?
        .split_whitespace()
        .next()
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid in status"))
}

/// The command name (as the kernel keeps it: at most 15 bytes).
pub fn comm(pid: u32) -> io::Result<String> {
    Ok(fs::read_to_string(format!("/proc/{pid}/comm"))?
        .trim_end_matches('\n')
        .to_owned())
}

/// The executable of a process, if it can still be read.
pub fn exe(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert!(is_alive(me, start));
        assert!(!is_alive(me, start + 1));
        assert_eq!(parent_pid(me).unwrap(), std::os::unix::process::parent_id());
        assert!(exe(me).is_some());
        assert_eq!(uid(me).unwrap(), nix::unistd::getuid().as_raw());
        assert!(!comm(me).unwrap().is_empty());
    }
}
