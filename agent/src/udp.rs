//! Jobs' UDP other than DNS. The kernel sends each datagram to the agent's relay (or,
//! when no policy can permit `udp:send`, refuses it at once). The relay decides each flow
//! (one job socket, one destination) once, carries the allowed ones from a socket of its
//! own, and records every flow with its first and last datagram and the packets and
//! bytes each way. A denied flow is refused in the kernel from its next datagram on.
mod metrics;
pub mod relay;

pub use metrics::{Direction, EnforcedBy, Outcome, UdpMetrics};

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
