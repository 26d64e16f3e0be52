//! `tollgate_central_*`: how far behind the central store is (the lag and the backlog),
//! what was shipped, what failed, and whether `central.max_lag` is refusing.
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};

use crate::metrics::{counter_vec, gauge};

pub struct CentralMetrics {
    pub lag_seconds: Gauge,
    pub backlog_records: IntGauge,
    pub backlog_bytes: IntGauge,
    pub up: IntGauge,
    pub refusing: IntGauge,
    shipped: IntCounterVec,
    errors: IntCounterVec,
}

impl CentralMetrics {
    pub fn new(registry: &Registry) -> Self {
        let lag_seconds = Gauge::with_opts(Opts::new(
            "tollgate_central_lag_seconds",
            "Age of the oldest record not yet in the central store (0 when caught up).",
        ))
        .unwrap_or_else(|e| panic!("tollgate_central_lag_seconds: {e}"));
        registry
            .register(Box::new(lag_seconds.clone()))
            .unwrap_or_else(|e| panic!("registering tollgate_central_lag_seconds: {e}"));
        let shipped = counter_vec(
            registry,
            "tollgate_central_shipped_total",
            "Records and checkpoints shipped to the central store, by `what`.",
            &["what"],
        );
        let errors = counter_vec(
            registry,
            "tollgate_central_errors_total",
            "Failed attempts to ship, by `stage`: connect, schema, ship, local.",
            &["stage"],
        );
        for what in ["records", "checkpoints"] {
            shipped.with_label_values(&[what]);
        }
        for stage in ["connect", "schema", "ship", "local"] {
            errors.with_label_values(&[stage]);
        }
        Self {
            lag_seconds,
            backlog_records: gauge(
                registry,
                "tollgate_central_backlog_records",
                "Records on local disk not yet in the central store.",
            ),
            backlog_bytes: gauge(
                registry,
                "tollgate_central_backlog_bytes",
                "Bytes of record content on local disk not yet in the central store.",
            ),
            up: gauge(
                registry,
                "tollgate_central_up",
                "1 while the shipper is connected to the central store.",
            ),
            refusing: gauge(
                registry,
                "tollgate_central_refusing",
                "1 while the backlog is older than central.max_lag and new job connections are \
                 refused.",
            ),
            shipped,
            errors,
        }
    }

    pub fn shipped(&self, what: &str, n: usize) {
        self.shipped.with_label_values(&[what]).inc_by(n as u64);
    }

    pub fn error(&self, stage: &str) {
        self.errors.with_label_values(&[stage]).inc();
    }
}
