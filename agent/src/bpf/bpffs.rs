//! The bpffs the pins live on: found, or mounted at /sys/fs/bpf.
use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use super::{BpfError, io_err};

/// Makes sure the pin directory's parent is on a bpffs, mounting one at /sys/fs/bpf if
/// nothing is mounted there yet.
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<(), BpfError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent)? {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if parent == default && same_device_as_parent(default)? {
        nix::mount::mount(
            Some("bpf"),
            default,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| BpfError::Mount {
            path: default.to_owned(),
            source: errno.into(),
        })?;
        if is_bpffs(parent)? {
            return Ok(());
        }
    }
    Err(BpfError::NotBpffs {
        path: parent.to_owned(),
    })
}

fn is_bpffs(path: &Path) -> Result<bool, BpfError> {
    let stat = nix::sys::statfs::statfs(path).map_err(|errno| io_err(path)(errno.into()))?;
    Ok(stat.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// True if nothing is mounted on `path` yet (same device as its parent).
fn same_device_as_parent(path: &Path) -> Result<bool, BpfError> {
    let dev = fs::metadata(path).map_err(io_err(path))?.dev();
    let parent = path.parent().unwrap_or(Path::new("/"));
    let parent_dev = fs::metadata(parent).map_err(io_err(parent))?.dev();
    Ok(dev == parent_dev)
}
