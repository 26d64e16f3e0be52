//! Jobs' UDP other than DNS. The kernel sends each datagram to the agent's relay (or,
//! when no policy can permit `udp:send`, refuses it at once). The relay decides each flow
//! (one job socket, one destination) once, carries the allowed ones from a socket of its
//! own, and records every flow with its first and last datagram and the packets and
//! bytes each way. A denied flow is refused in the kernel from its next datagram on.
pub mod relay;

use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};
use serde::{Deserialize, Serialize};

use crate::metrics::{counter_vec, gauge};

/// `[udp]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpConfig {
    /// A flow without a datagram either way for this long ends (and is recorded).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Live flows at most; a new flow beyond them is refused (and recorded).
    pub max_flows: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_flows: 4_096,
        }
    }
}

/// The UDP relay's metrics.
pub struct UdpMetrics {
    flows: IntCounterVec,
    datagrams: IntCounterVec,
    pub active: IntGauge,
    /// The per-datagram series of relayed traffic, resolved once (not per datagram).
    relayed: [(IntCounter, IntCounter); 2],
}

impl UdpMetrics {
    pub fn new(registry: &Registry) -> Self {
        let datagrams = counter_vec(
            registry,
            "tollgate_udp_datagrams_total",
            "Datagrams of jobs' UDP flows, by direction (out, in) and outcome (relayed, \
             denied, dropped, unattributed).",
            &["direction", "outcome"],
        );
        let bytes = counter_vec(
            registry,
            "tollgate_udp_bytes_total",
            "Payload bytes relayed for jobs' UDP flows, by direction.",
            &["direction"],
        );
        let relayed = ["out", "in"].map(|direction| {
            (
                datagrams.with_label_values(&[direction, "relayed"]),
                bytes.with_label_values(&[direction]),
            )
        });
        Self {
            flows: counter_vec(
                registry,
                "tollgate_udp_flows_total",
                "UDP flows of jobs (a socket and a destination), by decision and where it \
                 was enforced (relay or kernel).",
                &["decision", "enforced_by"],
            ),
            datagrams,
            relayed,
            active: gauge(
                registry,
                "tollgate_udp_flows_active",
                "UDP flows the relay carries now.",
            ),
        }
    }

    pub fn flow(&self, decision: &str, enforced_by: &str) {
        self.flows.with_label_values(&[decision, enforced_by]).inc();
    }

    pub fn datagram(&self, direction: &str, outcome: &str, bytes: usize) {
        if outcome == "relayed" {
            let (datagrams, payload) = &self.relayed[usize::from(direction == "in")];
            datagrams.inc();
            payload.inc_by(bytes as u64);
        } else {
            self.datagrams
                .with_label_values(&[direction, outcome])
                .inc();
        }
    }
}
