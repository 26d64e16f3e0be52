//! BPF_PROG_LOAD and BPF_LINK_CREATE for the unix programs.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use super::elf::INSN_SIZE;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const LOG_SIZE: usize = 1 << 16;

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

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: attr is the variant of `cmd`, its pointers outlive the call, and every byte
    // past the kernel's known fields is zero.
    let rc = unsafe { crate::bpf::syscall::raw_bpf(cmd, attr) }?;
    // SAFETY: on success both commands return a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Loads a program; on error, the verifier's log.
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    name: &str,
    insns: &[u8],
) -> Result<OwnedFd, (io::Error, String)> {
    let license = CString::from(c"GPL");
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
            license: license.as_ptr() as u64,
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
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    match load(None) {
        Ok(fd) => Ok(fd),
        Err(error) => {
            // Again with the log, to say why.
            let mut buf = vec![0u8; LOG_SIZE];
            let _ = load(Some(&mut buf));
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            Err((error, String::from_utf8_lossy(&buf[..end]).into_owned()))
        }
    }
}

/// Attaches `prog` to the cgroup `target` as a bpf_link.
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
    bpf(BPF_LINK_CREATE, &mut attr)
}
