//! cgroup v2: discovery of the cgroup2 mount, the root-owned parent of all job cgroups,
//! and each job's cgroup (create, place, kill, remove).
use std::{
    fs,
    io::{self, ErrorKind},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted (checked /proc/mounts)")]
    NoCgroup2,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: processes are still running after {waited:?}")]
    StillPopulated { path: PathBuf, waited: Duration },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Returns the mount point of the cgroup2 hierarchy, from /proc/mounts.
pub fn find_cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(io_err(Path::new("/proc/mounts")))?;
    parse_cgroup2_mount(&mounts).ok_or(CgroupError::NoCgroup2)
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parent cgroup of all job cgroups, e.g. `/sys/fs/cgroup/unified/tollgate`.
#[derive(Debug, Clone)]
pub struct CgroupTree {
    mount: PathBuf,
    parent: PathBuf,
}

/// The prefix of every job cgroup's directory name.
pub const JOB_DIR_PREFIX: &str = "job-";

impl CgroupTree {
    pub fn new(mount: PathBuf, parent: &str) -> Self {
        let parent_path = mount.join(parent);
        Self {
            mount,
            parent: parent_path,
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// Creates the parent cgroup (root-owned, 0755) if it does not exist yet.
    pub fn ensure_parent(&self) -> Result<(), CgroupError> {
        fs::create_dir_all(&self.parent).map_err(io_err(&self.parent))?;
        fs::set_permissions(&self.parent, fs::Permissions::from_mode(0o755))
            .map_err(io_err(&self.parent))
    }

    pub fn job_path(&self, job_id: &str) -> PathBuf {
        self.parent.join(format!("{JOB_DIR_PREFIX}{job_id}"))
    }

    /// Creates a job's cgroup and returns its cgroup id (the directory's inode).
    pub fn create_job(&self, job_id: &str) -> Result<(PathBuf, u64), CgroupError> {
        let path = self.job_path(job_id);
        fs::create_dir(&path).map_err(io_err(&path))?;
        let id = cgroup_id(&path)?;
        Ok((path, id))
    }

    /// Lists the job cgroups below the parent: (job id, path, cgroup id).
    pub fn list_jobs(&self) -> Result<Vec<(String, PathBuf, u64)>, CgroupError> {
        let entries = match fs::read_dir(&self.parent) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.parent)(e)),
        };
        let mut jobs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.parent))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(job_id) = name.strip_prefix(JOB_DIR_PREFIX)
                && entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
            {
                let path = entry.path();
                let id = cgroup_id(&path)?;
                jobs.push((job_id.to_owned(), path, id));
            }
        }
        Ok(jobs)
    }

    /// Finds the job whose cgroup is, or contains, the cgroup with this id (a job may
    /// create sub-cgroups of its own).
    pub fn find_job_of(&self, id: u64) -> Option<String> {
        let jobs = self.list_jobs().ok()?;
        jobs.into_iter()
            .find(|(_, path, _)| contains_cgroup(path, id, 8))
            .map(|(job_id, _, _)| job_id)
    }

    /// Kills whatever is left in the job cgroups, removes them and then the parent.
    /// Returns every cgroup directory it removed.
    pub fn remove_all(&self, timeout: Duration) -> Result<Vec<PathBuf>, CgroupError> {
        let mut removed = Vec::new();
        for (_, path, _) in self.list_jobs()? {
            kill_and_remove(&path, timeout)?;
            removed.push(path);
        }
        match fs::remove_dir(&self.parent) {
            Ok(()) => removed.push(self.parent.clone()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.parent)(e)),
        }
        Ok(removed)
    }
}

fn contains_cgroup(dir: &Path, id: u64, depth: usize) -> bool {
    if cgroup_id(dir).ok() == Some(id) {
        return true;
    }
    if depth == 0 {
        return false;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
            && contains_cgroup(&entry.path(), id, depth - 1)
    })
}

/// The cgroup id BPF reports for a cgroup equals its directory's inode number.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    Ok(fs::metadata(path).map_err(io_err(path))?.ino())
}

/// Moves a process into the cgroup.
pub fn move_pid(path: &Path, pid: u32) -> Result<(), CgroupError> {
    let procs = path.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).map_err(io_err(&procs))
}

/// Every pid in a cgroup and its sub-cgroups (a snapshot).
pub fn pids(cgroup: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![cgroup.to_owned()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Whether any process is left in the cgroup or below it.
pub fn populated(path: &Path) -> Result<bool, CgroupError> {
    let events_path = path.join("cgroup.events");
    let events = fs::read_to_string(&events_path).map_err(io_err(&events_path))?;
    Ok(events.lines().any(|line| line.trim() == "populated 1"))
}

/// Kills every process in the cgroup and below it (cgroup.kill, kernel 5.14+; SIGKILL
/// to each listed process, sub-cgroups included, on older kernels, where writing the
/// absent cgroup.kill fails with EACCES rather than ENOENT).
pub fn kill(path: &Path) -> Result<(), CgroupError> {
    let kill_file = path.join("cgroup.kill");
    if kill_file.exists() {
        fs::write(&kill_file, "1").map_err(io_err(&kill_file))
    } else {
        kill_each(path)
    }
}

fn kill_each(path: &Path) -> Result<(), CgroupError> {
    let procs_path = path.join("cgroup.procs");
    let procs = fs::read_to_string(&procs_path).map_err(io_err(&procs_path))?;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        crate::proc_info::kill(pid);
    }
    for entry in fs::read_dir(path).map_err(io_err(path))?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            kill_each(&entry.path())?;
        }
    }
    Ok(())
}

/// Kills what is left in a job's cgroup, waits until it is empty and removes it.
pub fn kill_and_remove(path: &Path, timeout: Duration) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    let start = Instant::now();
    loop {
        if !populated(path)? {
            break;
        }
        kill(path)?;
        if start.elapsed() > timeout {
            return Err(CgroupError::StillPopulated {
                path: path.to_owned(),
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    remove_tree(path)
}

/// Removes a cgroup directory and any sub-cgroups a job created inside it.
fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&entry.path())?;
            }
        }
    }
    let mut attempts = 0;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            // A just-killed task can keep the cgroup busy for a moment.
            Err(e)
                if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) && attempts < 200 =>
            {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_err(path)(e)),
        }
    }
}

/// The cgroup v2 path of a process, relative to the cgroup2 mount (e.g. `/user.slice`).
pub fn cgroup_of_pid(pid: u32) -> Result<PathBuf, CgroupError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(PathBuf::from)
        .ok_or_else(|| CgroupError::Io {
            path,
            source: io::Error::new(ErrorKind::InvalidData, "no cgroup v2 entry"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mounts() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_in_unified_mounts_with_escapes() {
        let mounts = "cgroup2 /sys/fs/my\\040cgroup cgroup2 rw 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/my cgroup"))
        );
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
