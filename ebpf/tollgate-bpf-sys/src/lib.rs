//! The bpf(2) commands Tollgate makes itself, beside aya: the raw call with one variant
//! of `union bpf_attr`, BPF_PROG_LOAD of a program from its instructions (aya loads only
//! from an object it relocates itself), and BPF_LINK_CREATE of a cgroup link of any
//! attach type (aya does not know connect_unix and sendmsg_unix). The agent loads its
//! unix programs and pins its links with them; the VM init holds the kernel's static keys with them, and
//! stays a static binary of libc alone.
use std::{
    ffi::{CStr, CString},
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// The size of one eBPF instruction.
pub const INSN_SIZE: usize = 8;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
/// The verifier's log, read when a load fails.
const LOG_SIZE: usize = 1 << 16;

/// bpf(2) with one variant of `union bpf_attr`: its return value.
///
/// # Safety
/// `attr` must be the variant `cmd` reads, with every pointer in it valid for the call
/// and every byte past the fields the kernel knows zero.
pub unsafe fn raw_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: as the caller promises; the size passed is the variant's own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A command that returns a new file descriptor.
///
/// # Safety
/// As [`raw_bpf`], and `cmd` must be one that returns a new descriptor on success.
unsafe fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: as the caller promises.
    let rc = unsafe { raw_bpf(cmd, attr) }?;
    let fd = i32::try_from(rc).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The BPF_PROG_LOAD variant of `union bpf_attr`, up to `expected_attach_type`, then
/// zeros (fields of newer kernels, unused here).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 10],
}

/// The BPF_LINK_CREATE variant: program, target, attach type, flags.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// A load the kernel refused: its error, and the verifier's log (empty when it wrote
/// none, as for a program type or attach type the kernel does not know).
#[derive(Debug)]
pub struct LoadError {
    pub error: io::Error,
    pub log: String,
}

const LICENSE: &CStr = c"GPL";

/// Loads a GPL program of `prog_type` for `expected_attach_type` from its instructions
/// (`INSN_SIZE` bytes each), named `name` (up to 15 bytes of it). On error, the load is
/// made again with the verifier's log, which the error carries.
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    name: &str,
    insns: &[u8],
) -> Result<OwnedFd, LoadError> {
    let mut prog_name = [0u8; 16];
    for (slot, byte) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    let load = |log: Option<&mut Vec<u8>>| {
        let (log_level, log_size, log_buf) = match log {
            Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
            None => (0, 0, 0),
        };
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: (insns.len() / INSN_SIZE) as u32,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            log_level,
            log_size,
            log_buf,
            kern_version: 0,
            prog_flags: 0,
            prog_name,
            prog_ifindex: 0,
            expected_attach_type,
            _rest: [0; 10],
        };
        // SAFETY: the BPF_PROG_LOAD variant, whose instruction, license and log pointers
        // outlive the call; it returns a new program descriptor.
        unsafe { bpf_fd(BPF_PROG_LOAD, &mut attr) }
    };
    match load(None) {
        Ok(fd) => Ok(fd),
        Err(error) => {
            let mut buf = vec![0u8; LOG_SIZE];
            let _ = load(Some(&mut buf));
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            Err(LoadError {
                error,
                log: String::from_utf8_lossy(&buf[..end]).into_owned(),
            })
        }
    }
}

/// Attaches `prog` to the cgroup `target` as a bpf_link of `attach_type`.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        _rest: [0; 4],
    };
    // SAFETY: the BPF_LINK_CREATE variant, of descriptors that outlive the call; it
    // returns a new link descriptor.
    unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }
}

/// The BPF_OBJ_PIN and BPF_OBJ_GET variant.
#[repr(C)]
struct PinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Opens the object pinned at `path` (in a bpffs).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let name = c_path(path)?;
    let mut attr = PinAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the BPF_OBJ_GET variant, whose path outlives the call; it returns a new
    // descriptor.
    unsafe { bpf_fd(BPF_OBJ_GET, &mut attr) }
}

/// Pins the object `fd` at `path` (in a bpffs).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let name = c_path(path)?;
    let mut attr = PinAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: the BPF_OBJ_PIN variant, whose path outlives the call.
    unsafe { raw_bpf(BPF_OBJ_PIN, &mut attr) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attrs_have_the_kernels_layout() {
        // expected_attach_type sits at offset 68 of union bpf_attr for BPF_PROG_LOAD.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, attach_type), 8);
    }

    #[test]
    fn a_refused_load_says_so() {
        // Program type 0 is BPF_PROG_TYPE_UNSPEC, which no kernel loads.
        let refused = prog_load(0, 0, "nothing", &[0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert!(refused.is_err());
    }
}
