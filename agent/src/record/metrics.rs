//! `tollgate_recording_*`: the writer's queue, writes, failures, retention and
//! checkpoints.
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use crate::metrics::{counter, counter_vec, gauge};

pub struct RecordMetrics {
    pub queue_depth: IntGauge,
    pub written: IntCounter,
    pub failures: IntCounter,
    pub dropped: IntCounter,
    /// Rows deleted by retention, by `kind` (statement, connection, job, audit).
    pub pruned: IntCounterVec,
    pub prune_failures: IntCounter,
    pub store_bytes: IntGauge,
    /// Checkpoints of the record chain signed.
    pub checkpoints: IntCounter,
}

impl RecordMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            queue_depth: gauge(
                registry,
                "tollgate_recording_queue_depth",
                "Records waiting for the writer.",
            ),
            written: counter(
                registry,
                "tollgate_recording_written_total",
                "Records written to the store.",
            ),
            failures: counter(
                registry,
                "tollgate_recording_failures_total",
                "Failed batch writes (each is retried).",
            ),
            dropped: counter(
                registry,
                "tollgate_recording_dropped_total",
                "Records lost because the queue was full or the writer gave up.",
            ),
            pruned: counter_vec(
                registry,
                "tollgate_recording_pruned_total",
                "Rows deleted because they ended longer ago than recording.retention.",
                &["kind"],
            ),
            prune_failures: counter(
                registry,
                "tollgate_recording_prune_failures_total",
                "Failed attempts to delete expired records (retried).",
            ),
            store_bytes: gauge(
                registry,
                "tollgate_recording_store_bytes",
                "Size of the recording database (without its WAL).",
            ),
            checkpoints: counter(
                registry,
                "tollgate_recording_checkpoints_total",
                "Signed checkpoints of the record chain (every central.checkpoint_interval \
                 while records are written, and at shutdown).",
            ),
        }
    }
}
