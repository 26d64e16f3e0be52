//! Whether recording lets new job connections through: not while writes fail and
//! `recording.strict` is set, and not while the central store's backlog is older than
//! `central.max_lag`. The proxy refuses, the kernel path suspends and `/readyz` reports
//! for the same reason.
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

#[derive(Clone)]
pub struct Gate {
    strict: bool,
    healthy: Arc<AtomicBool>,
    lagging: Arc<AtomicBool>,
}

impl Gate {
    pub(super) fn new(strict: bool, healthy: Arc<AtomicBool>) -> Self {
        Self {
            strict,
            healthy,
            lagging: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Why new connections are refused now, if they are.
    pub fn refusal(&self) -> Option<&'static str> {
        if self.strict && !self.healthy.load(Ordering::Relaxed) {
            return Some("recording is failing and recording.strict is set");
        }
        if self.lagging.load(Ordering::Relaxed) {
            return Some("the central store's unshipped backlog is older than central.max_lag");
        }
        None
    }

    /// Set by the shipper while the backlog is older than `central.max_lag`.
    pub fn set_lagging(&self, lagging: bool) {
        self.lagging.store(lagging, Ordering::Relaxed);
    }
}
