//! Map operations on a shared map fd: lookup-and-delete (which aya does not offer for
//! hash maps), so that an accepted connection claims its entry in a single step, and
//! update and delete, which aya offers only through an exclusive borrow.
use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use tollgate_bpf_sys::raw_bpf;

/// The kernel's internal ENOTSUPP, which some bpf commands leak to userspace.
const ENOTSUPP: i32 = 524;

/// Map keys and values: plain `#[repr(C)]` data.
pub trait Plain: Copy + aya::Pod {}
impl<T: Copy + aya::Pod> Plain for T {}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
/// Supported for hash maps since kernel 5.14.
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
/// The update flag that inserts only a new key.
const BPF_NOEXIST: u64 = 1;

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
    // SAFETY: attr is a valid MapElemAttr whose key and value pointers outlive the call.
    unsafe { raw_bpf(cmd, attr) }.map(|_| ())
}

pub fn lookup_and_delete<K: Plain, V: Plain>(
    map: BorrowedFd<'_>,
    key: &K,
) -> io::Result<Option<V>> {
    let mut value = MaybeUninit::<V>::zeroed();
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        // SAFETY: the kernel filled the value; a Plain value is valid for any bytes.
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        // Kernels before 5.14: look up, then delete. Only this entry's own connection
        // claims it, so there is no concurrent taker to race with.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
            ) =>
        {
            let Some(info) = lookup::<K, V>(map, key)? else {
                return Ok(None);
            };
            Ok(delete(map, key)?.then_some(info))
        }
        Err(e) => Err(e),
    }
}

/// Inserts or replaces `key`'s value.
pub fn update<K: Plain, V: Plain>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// Inserts `key`'s value if `key` has none (BPF_NOEXIST); false if it had one.
pub fn insert_new<K: Plain, V: Plain>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: BPF_NOEXIST,
    };
    match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `key`; true if it was there.
pub fn delete<K: Plain>(map: BorrowedFd<'_>, key: &K) -> io::Result<bool> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: 0,
        flags: 0,
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every key of a hash map (a snapshot; concurrent changes may be missed).
pub fn keys<K: Plain>(map: BorrowedFd<'_>) -> io::Result<Vec<K>> {
    let mut keys = Vec::new();
    let mut next = MaybeUninit::<K>::zeroed();
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: 0,
        value: next.as_mut_ptr() as u64,
        flags: 0,
    };
    loop {
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {
                // SAFETY: the kernel wrote a whole key; K is valid for any bytes.
                keys.push(unsafe { next.assume_init() });
                let last = keys.last().map_or(0, |k| k as *const K as u64);
                attr.key = last;
                if keys.len() > 1 << 20 {
                    return Err(io::Error::other("map iteration does not end"));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
            Err(e) => return Err(e),
        }
    }
}

/// Looks `key` up; None if absent.
pub fn lookup<K: Plain, V: Plain>(map: BorrowedFd<'_>, key: &K) -> io::Result<Option<V>> {
    let mut value = MaybeUninit::<V>::zeroed();
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        // SAFETY: the kernel filled the value; V is valid for any bytes.
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}
