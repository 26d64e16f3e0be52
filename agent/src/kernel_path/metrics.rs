//! `tollgate_kernel_verdicts*`: the kernel path's hits, misses and fallbacks (read from
//! the programs' counters), its map occupancy, and verdicts installed and dropped.
use std::sync::Mutex;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use tollgate_common::{Counter, JOB_VERDICTS_CAPACITY, VERDICTS_CAPACITY};

use crate::metrics::{counter, counter_vec, gauge, gauge_vec};

const OUTCOMES: [(Counter, &str); 5] = [
    (Counter::KernelHit, "hit"),
    (Counter::KernelMiss, "miss"),
    (Counter::KernelFallback, "fallback"),
    (Counter::KernelStale, "stale"),
    (Counter::KernelEventsLost, "events_lost"),
];

pub struct KernelMetrics {
    connects: IntCounterVec,
    entries: IntGaugeVec,
    pub installed: IntCounter,
    dropped: IntCounterVec,
    /// Allowed connections the proxy kept (the decision was not final at connect time).
    pub declined: IntCounter,
    pub live: IntGauge,
    /// 1 while strict recording keeps every connect on the proxy path.
    pub suspended: IntGauge,
    last: Mutex<[u64; OUTCOMES.len()]>,
}

impl KernelMetrics {
    pub fn new(registry: &Registry) -> Self {
        let capacity = gauge_vec(
            registry,
            "tollgate_kernel_verdicts_capacity",
            "Capacity of the kernel-verdict maps, by kind (exact, job).",
            &["kind"],
        );
        capacity
            .with_label_values(&["exact"])
            .set(i64::from(VERDICTS_CAPACITY));
        capacity
            .with_label_values(&["job"])
            .set(i64::from(JOB_VERDICTS_CAPACITY));
        let connects = counter_vec(
            registry,
            "tollgate_kernel_verdicts_connects_total",
            "Jobs' TCP connects by kernel-path outcome: hit (straight to the destination), \
             miss (no verdict: to the proxy), fallback (a verdict, but the event ring was \
             full: to the proxy), stale (a verdict, but the agent's heartbeat was stale or \
             its listener gone: to the proxy), events_lost (an establish or close event of \
             a kernel-path connection lost).",
            &["outcome"],
        );
        for (_, outcome) in OUTCOMES {
            connects.with_label_values(&[outcome]);
        }
        Self {
            connects,
            entries: gauge_vec(
                registry,
                "tollgate_kernel_verdicts",
                "Kernel verdicts installed, by kind: exact (job cgroup, uid, gid, comm, \
                 destination) or job (every connect of a job cgroup).",
                &["kind"],
            ),
            installed: counter(
                registry,
                "tollgate_kernel_verdicts_installed_total",
                "Kernel verdicts installed.",
            ),
            dropped: counter_vec(
                registry,
                "tollgate_kernel_verdicts_dropped_total",
                "Kernel verdicts dropped, by reason (reload, job).",
                &["reason"],
            ),
            declined: counter(
                registry,
                "tollgate_kernel_verdicts_declined_total",
                "Allowed L4 connections kept on the proxy path: their decision depends on \
                 more than the kernel sees at connect time.",
            ),
            live: gauge(
                registry,
                "tollgate_kernel_connections_live",
                "Kernel-path connections open now.",
            ),
            suspended: gauge(
                registry,
                "tollgate_kernel_path_suspended",
                "1 while recording fails and recording.strict is set: every connect goes to \
                 the proxy, which refuses it.",
            ),
            last: Mutex::new([0; OUTCOMES.len()]),
        }
    }

    pub fn occupancy(&self, exact: usize, jobs: usize) {
        self.entries.with_label_values(&["exact"]).set(exact as i64);
        self.entries.with_label_values(&["job"]).set(jobs as i64);
    }

    pub fn dropped(&self, reason: &str, n: usize) {
        self.dropped.with_label_values(&[reason]).inc_by(n as u64);
    }

    /// Turns the programs' cumulative counters into counter increments.
    pub fn counters(&self, counters: &[(Counter, u64)]) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        for (i, (which, outcome)) in OUTCOMES.iter().enumerate() {
            if let Some((_, value)) = counters.iter().find(|(c, _)| c == which) {
                if *value > last[i] {
                    self.connects
                        .with_label_values(&[outcome])
                        .inc_by(value - last[i]);
                }
                last[i] = *value;
            }
        }
    }
}
