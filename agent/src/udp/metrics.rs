//! The UDP relay's metrics, with typed labels; every series a datagram or a flow counts
//! in is fetched once, on first use ([`Children`]), not looked up per event. Each enum's
//! `ALL` lists its variants in declaration order, so a variant's discriminant is its
//! index.
use prometheus::{IntGauge, Registry};

use crate::{
    metrics::{Children, counter_vec, gauge},
    record::DecisionLabel,
};

/// Which way a datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the job to its destination.
    Out,
    /// From the destination back to the job.
    In,
}

impl Direction {
    const ALL: [Direction; 2] = [Direction::Out, Direction::In];

    const fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// What became of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Relayed,
    Denied,
    /// The send failed (the socket's buffer was full, the destination unreachable).
    Dropped,
    /// No kernel record said which job sent it.
    Unattributed,
    /// The destination answered with an ICMP error.
    RefusedByPeer,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Relayed,
        Outcome::Denied,
        Outcome::Dropped,
        Outcome::Unattributed,
        Outcome::RefusedByPeer,
    ];

    const fn as_str(self) -> &'static str {
        match self {
            Outcome::Relayed => "relayed",
            Outcome::Denied => "denied",
            Outcome::Dropped => "dropped",
            Outcome::Unattributed => "unattributed",
            Outcome::RefusedByPeer => "refused_by_peer",
        }
    }
}

/// Where a flow's decision was enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforcedBy {
    /// The relay decided its first datagram.
    Relay,
    /// The kernel refused it (a flow already denied, or no policy permits UDP).
    Kernel,
}

impl EnforcedBy {
    const ALL: [EnforcedBy; 2] = [EnforcedBy::Relay, EnforcedBy::Kernel];

    pub const fn as_str(self) -> &'static str {
        match self {
            EnforcedBy::Relay => "relay",
            EnforcedBy::Kernel => "kernel",
        }
    }
}

/// The UDP relay's metrics.
pub struct UdpMetrics {
    /// `tollgate_udp_flows_total`, by decision then where it was enforced.
    flows: Children<{ DecisionLabel::ALL.len() * EnforcedBy::ALL.len() }>,
    /// `tollgate_udp_datagrams_total`, by direction then outcome.
    datagrams: Children<{ Direction::ALL.len() * Outcome::ALL.len() }>,
    /// `tollgate_udp_bytes_total`, by direction.
    bytes: Children<{ Direction::ALL.len() }>,
    pub active: IntGauge,
}

impl UdpMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            flows: Children::new(counter_vec(
                registry,
                "tollgate_udp_flows_total",
                "UDP flows of jobs (a socket and a destination), by decision and where it \
                 was enforced (relay or kernel).",
                &["decision", "enforced_by"],
            )),
            datagrams: Children::new(counter_vec(
                registry,
                "tollgate_udp_datagrams_total",
                "Datagrams of jobs' UDP flows, by direction (out, in) and outcome (relayed, \
                 denied, dropped, unattributed, refused_by_peer).",
                &["direction", "outcome"],
            )),
            bytes: Children::new(counter_vec(
                registry,
                "tollgate_udp_bytes_total",
                "Payload bytes relayed for jobs' UDP flows, by direction.",
                &["direction"],
            )),
            active: gauge(
                registry,
                "tollgate_udp_flows_active",
                "UDP flows the relay carries now.",
            ),
        }
    }

    pub fn flow(&self, decision: DecisionLabel, enforced_by: EnforcedBy) {
        let index = decision as usize * EnforcedBy::ALL.len() + enforced_by as usize;
        self.flows
            .get(index, &[decision.as_str(), enforced_by.as_str()])
            .inc();
    }

    /// A datagram; the bytes of a relayed one count too.
    pub fn datagram(&self, direction: Direction, outcome: Outcome, bytes: usize) {
        let index = direction as usize * Outcome::ALL.len() + outcome as usize;
        self.datagrams
            .get(index, &[direction.as_str(), outcome.as_str()])
            .inc();
        if outcome == Outcome::Relayed {
            self.bytes
                .get(direction as usize, &[direction.as_str()])
                .inc_by(bytes as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_counts_in_its_own_series() {
        let registry = Registry::new();
        let metrics = UdpMetrics::new(&registry);
        metrics.flow(DecisionLabel::WouldDeny, EnforcedBy::Kernel);
        metrics.datagram(Direction::In, Outcome::Relayed, 7);
        metrics.datagram(Direction::Out, Outcome::Denied, 9);
        let mut buffer = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut buffer)
            .unwrap();
        let text = buffer;
        for series in [
            "tollgate_udp_flows_total{decision=\"would_deny\",enforced_by=\"kernel\"} 1",
            "tollgate_udp_datagrams_total{direction=\"in\",outcome=\"relayed\"} 1",
            "tollgate_udp_datagrams_total{direction=\"out\",outcome=\"denied\"} 1",
            "tollgate_udp_bytes_total{direction=\"in\"} 7",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
        // A series appears when it first counts.
        for absent in [
            "tollgate_udp_flows_total{decision=\"would_deny\",enforced_by=\"relay\"}",
            "tollgate_udp_bytes_total{direction=\"out\"}",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        // A variant's discriminant is its index in ALL.
        let in_order = |d: &[usize]| d.iter().copied().eq(0..d.len());
        assert!(in_order(&Direction::ALL.map(|d| d as usize)));
        assert!(in_order(&Outcome::ALL.map(|o| o as usize)));
        assert!(in_order(&EnforcedBy::ALL.map(|e| e as usize)));
        assert!(in_order(&DecisionLabel::ALL.map(|d| d as usize)));
    }
}
