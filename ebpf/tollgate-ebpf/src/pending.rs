//! The connections waiting for the proxy's accept ([`CONN_BY_TUPLE`]), keyed by client
//! tuple and slot. A tuple has more than one entry only when a client reused its port
//! (TIME_WAIT reuse on loopback) while the proxy had yet to accept an earlier
//! connection from it. Then the kernel marks the entries with what tells them apart at
//! accept (`PENDING_*`): which completed its handshake, and which was superseded by a
//! newer one's.
use aya_ebpf::bindings::BPF_NOEXIST;
use tollgate_common::{
    ConnInfo, Counter, PENDING_ACKED, PENDING_ESTABLISHED, PENDING_SHARED, PENDING_SUPERSEDED,
    PendingConn, PendingKey, TUPLE_SLOTS, TupleKey,
};

use crate::maps::{CONN_BY_TUPLE, count};

/// Records a connection from `tuple` (TCP_CONNECT_CB, before its SYN): slot 0 when no
/// other one waits with it, else the first free slot above 0, with every entry of the
/// tuple marked shared. False when every slot is taken or the insert failed.
#[inline(always)]
pub fn insert(tuple: TupleKey, info: ConnInfo) -> bool {
    let mut free = None;
    let mut waiting = false;
    for slot in 0..TUPLE_SLOTS {
        let key = PendingKey { tuple, slot };
        if let Some(other) = CONN_BY_TUPLE.get_ptr_mut(key) {
            waiting = true;
            // SAFETY: the pointer is to a live map value; a plain store, as only this
            // tuple's connects and handshakes write its entries, one at a time.
            unsafe { (*other).flags |= PENDING_SHARED };
        } else if slot > 0 && free.is_none() {
            free = Some(key);
        }
    }
    let (key, flags) = if waiting {
        match free {
            Some(key) => (key, PENDING_SHARED),
            None => return false,
        }
    } else {
        (PendingKey { tuple, slot: 0 }, 0)
    };
    let entry = PendingConn {
        info,
        flags,
        _pad: 0,
    };
    CONN_BY_TUPLE
        .insert(key, entry, u64::from(BPF_NOEXIST))
        .is_ok()
}

/// The client of the connection with `cookie` saw the listener's SYN-ACK
/// (ACTIVE_ESTABLISHED_CB). Its entry is marked established, and the other entries of
/// its tuple superseded: its SYN found the tuple free at the listener, or reset what
/// held it there.
#[inline(always)]
pub fn established(tuple: TupleKey, cookie: u64) {
    let first = PendingKey { tuple, slot: 0 };
    if let Some(entry) = CONN_BY_TUPLE.get_ptr_mut(first) {
        // SAFETY: a live map value, as in `insert`.
        unsafe {
            if (*entry).info.cookie == cookie && (*entry).flags & PENDING_SHARED == 0 {
                (*entry).flags |= PENDING_ESTABLISHED;
                return;
            }
        }
    }
    for slot in 0..TUPLE_SLOTS {
        let key = PendingKey { tuple, slot };
        if let Some(entry) = CONN_BY_TUPLE.get_ptr_mut(key) {
            // SAFETY: a live map value, as in `insert`.
            unsafe {
                if (*entry).info.cookie == cookie {
                    (*entry).flags |= PENDING_ESTABLISHED;
                } else {
                    (*entry).flags |= PENDING_SUPERSEDED;
                }
            }
        }
    }
}

/// The listener acknowledged the FIN of the connection with `cookie` (FIN_WAIT1 to
/// FIN_WAIT2): it made a connection of it, which the proxy will accept.
#[inline(always)]
pub fn acked(tuple: TupleKey, cookie: u64) {
    for slot in 0..TUPLE_SLOTS {
        let key = PendingKey { tuple, slot };
        if let Some(entry) = CONN_BY_TUPLE.get_ptr_mut(key) {
            // SAFETY: a live map value, as in `insert`.
            unsafe {
                if (*entry).info.cookie == cookie {
                    (*entry).flags |= PENDING_ACKED;
                    return;
                }
            }
        }
    }
}

/// The connection with `cookie` failed before its handshake (SYN_SENT to CLOSE): no
/// accept will claim its entry.
#[inline(always)]
pub fn release_unaccepted(tuple: TupleKey, cookie: u64) {
    for slot in 0..TUPLE_SLOTS {
        let key = PendingKey { tuple, slot };
        // SAFETY: the value is read at once, not kept.
        let ours = unsafe { CONN_BY_TUPLE.get(key) }.is_some_and(|e| e.info.cookie == cookie);
        if ours && CONN_BY_TUPLE.remove(key).is_ok() {
            count(Counter::TupleReleasedUnaccepted);
            break;
        }
    }
}
