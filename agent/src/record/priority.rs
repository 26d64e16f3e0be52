//! The writer thread's scheduling priority. Writing records is background work: while
//! its backlog is small the writer runs at a lower priority (nice 10), so that on a
//! host where the data path, the jobs and their servers share the CPUs it takes idle
//! time rather than theirs. Once a backlog builds (an eighth of the queue) it is back at
//! the normal priority until the queue is nearly empty again, so that it never falls
//! behind for long: a full queue drops records.
//!
//! Only a thread that may raise its priority again (CAP_SYS_NICE, which the agent has
//! as root) ever lowers it.

/// The nice value of a writer with a small backlog.
const BACKGROUND: i32 = 10;

/// The writer's priority, following its backlog.
pub(super) struct Priority {
    lowered: bool,
    /// The backlog at which the writer runs at the normal priority again.
    raise_at: usize,
    /// The backlog under which it lowers its priority again.
    lower_under: usize,
    /// It may raise its priority again once lowered.
    enabled: bool,
}

impl Priority {
    /// For a writer whose queue holds `capacity` records; called on the writer's own
    /// thread, which it lowers at once where it may.
    pub(super) fn new(capacity: usize) -> Self {
        let mut priority = Self {
            lowered: false,
            raise_at: (capacity / 8).max(1),
            lower_under: (capacity / 64).max(1),
            enabled: may_raise(),
        };
        priority.follow(0);
        priority
    }

    /// Follows the backlog left after a batch was taken.
    pub(super) fn follow(&mut self, backlog: usize) {
        if !self.enabled {
            return;
        }
        let lower = if self.lowered {
            backlog < self.raise_at
        } else {
            backlog < self.lower_under
        };
        if lower == self.lowered {
            return;
        }
        match set_nice(if lower { BACKGROUND } else { 0 }) {
            Ok(()) => self.lowered = lower,
            Err(error) => {
                // Left as it is; a writer that cannot raise its priority stays at it.
                tracing::warn!(%error, "setting the recorder's priority");
                if self.lowered {
                    self.enabled = false;
                }
            }
        }
    }
}

/// The calling thread has CAP_SYS_NICE, so it can undo a lowered priority.
fn may_raise() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    crate::proc_info::status_field("thread-self", "CapEff")
        .ok()
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// Sets the calling thread's nice value (Linux: `PRIO_PROCESS` with a thread id is that
/// thread only).
fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority reads its three integer arguments only.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: as in set_nice.
        let tid = unsafe { libc::gettid() };
        // SAFETY: getpriority reads its two integer arguments only.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
    }

    #[test]
    fn the_priority_drops_while_the_backlog_is_small_and_returns_when_it_builds() {
        std::thread::spawn(|| {
            if !may_raise() {
                // Without CAP_SYS_NICE the writer never lowers its priority.
                let mut priority = Priority::new(1024);
                priority.follow(0);
                assert_eq!(nice_of_this_thread(), 0);
                return;
            }
            let mut priority = Priority::new(1024);
            assert_eq!(nice_of_this_thread(), BACKGROUND, "lowered at once");
            priority.follow(100);
            assert_eq!(nice_of_this_thread(), BACKGROUND, "a small backlog");
            priority.follow(128);
            assert_eq!(nice_of_this_thread(), 0, "an eighth of the queue");
            priority.follow(20);
            assert_eq!(nice_of_this_thread(), 0, "until nearly empty");
            priority.follow(15);
            assert_eq!(nice_of_this_thread(), BACKGROUND);
        })
        .join()
        .unwrap();
    }
}
