//! The one map operation aya does not offer for hash maps: lookup-and-delete, so that an
//! accepted connection claims its entry in a single step.
use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsRawFd as _, BorrowedFd},
};

use tollgate_common::{ConnInfo, TupleKey};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
/// Supported for hash maps since kernel 5.14.
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// The map-element variant of `union bpf_attr`.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut MapElemAttr) -> io::Result<()> {
    // SAFETY: attr is a valid MapElemAttr whose key and value pointers outlive the call;
    // the size passed matches the struct, and the kernel zero-extends the rest.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut MapElemAttr,
            size_of::<MapElemAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn lookup_and_delete(map: BorrowedFd<'_>, key: &TupleKey) -> io::Result<Option<ConnInfo>> {
    let mut value = MaybeUninit::<ConnInfo>::zeroed();
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const TupleKey as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        // SAFETY: the kernel filled the value; ConnInfo is valid for any bytes.
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        // Kernels before 5.14: look up, then delete. Only this entry's own connection
        // claims it, so there is no concurrent taker to race with.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
            ) =>
        {
            match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            }
            attr.value = 0;
            match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            }
            // SAFETY: the lookup filled the value.
            Ok(Some(unsafe { value.assume_init() }))
        }
        Err(e) => Err(e),
    }
}
