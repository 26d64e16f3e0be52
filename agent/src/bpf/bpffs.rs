//! The bpffs the pins live on: found, or mounted at /sys/fs/bpf.
use std::{fs, io, io::ErrorKind, os::unix::fs::MetadataExt as _, path::Path};

use super::{BpfError, io_err};

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure the pin directory's parent is on a bpffs, mounting one at /sys/fs/bpf if
/// nothing is mounted there yet.
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<(), BpfError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent)? {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if parent == default && same_device_as_parent(default)? {
        let target = c"/sys/fs/bpf";
        // SAFETY: valid NUL-terminated strings; mount(2) has no other preconditions.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(BpfError::Mount {
                path: default.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        if is_bpffs(parent)? {
            return Ok(());
        }
    }
    Err(BpfError::NotBpffs {
        path: parent.to_owned(),
    })
}

fn is_bpffs(path: &Path) -> Result<bool, BpfError> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| BpfError::Io {
        path: path.to_owned(),
        source: io::Error::new(ErrorKind::InvalidInput, "path contains NUL"),
    })?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: c_path is NUL-terminated and stat points to writable memory of the right size.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io_err(path)(io::Error::last_os_error()));
    }
    // SAFETY: statfs succeeded and filled the struct.
    let stat = unsafe { stat.assume_init() };
    #[expect(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 and aarch64 but narrower on other targets"
    )]
    let f_type = i64::from(stat.f_type);
    Ok(f_type == BPF_FS_MAGIC)
}

/// True if nothing is mounted on `path` yet (same device as its parent).
fn same_device_as_parent(path: &Path) -> Result<bool, BpfError> {
    let dev = fs::metadata(path).map_err(io_err(path))?.dev();
    let parent = path.parent().unwrap_or(Path::new("/"));
    let parent_dev = fs::metadata(parent).map_err(io_err(parent))?.dev();
    Ok(dev == parent_dev)
}
