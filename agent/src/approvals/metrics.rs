//! `tollgate_approvals_*`: requests pending, decisions by outcome, grants in force, and
//! how long requests waited.
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Registry};

use crate::metrics::{counter_vec, gauge};

/// Decision outcomes, all present from the start.
const OUTCOMES: [&str; 5] = ["approved", "denied", "timed_out", "abandoned", "granted"];

pub struct ApprovalMetrics {
    pub pending: IntGauge,
    pub grants: IntGauge,
    decisions: IntCounterVec,
    wait: Histogram,
    webhooks: IntCounterVec,
}

impl ApprovalMetrics {
    pub fn new(registry: &Registry) -> Self {
        let decisions = counter_vec(
            registry,
            "tollgate_approvals_decisions_total",
            "Approval requests by outcome: approved, denied, timed_out, abandoned (the \
             connection ended first), granted (a grant let it pass without a request).",
            &["outcome"],
        );
        for outcome in OUTCOMES {
            decisions.with_label_values(&[outcome]);
        }
        let wait = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_approvals_wait_seconds",
                "How long a request waited for its decision.",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ]),
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        registry
            .register(Box::new(wait.clone()))
            .unwrap_or_else(|e| panic!("registering histogram: {e}"));
        Self {
            pending: gauge(
                registry,
                "tollgate_approvals_pending",
                "Approval requests waiting for a decision.",
            ),
            grants: gauge(
                registry,
                "tollgate_approvals_grants",
                "Grants in force (approvals with scope job or a duration).",
            ),
            decisions,
            wait,
            webhooks: {
                let webhooks = counter_vec(
                    registry,
                    "tollgate_approvals_webhooks_total",
                    "Webhook notices of requests and decisions: sent, failed (after retries), \
                     dropped (the queue was full).",
                    &["outcome"],
                );
                for outcome in ["sent", "failed", "dropped"] {
                    webhooks.with_label_values(&[outcome]);
                }
                webhooks
            },
        }
    }

    pub(super) fn webhook(&self, outcome: &str) {
        self.webhooks.with_label_values(&[outcome]).inc();
    }

    pub(super) fn decided(&self, outcome: &str, waited: Option<Duration>) {
        self.decisions.with_label_values(&[outcome]).inc();
        if let Some(waited) = waited {
            self.wait.observe(waited.as_secs_f64());
        }
    }
}
