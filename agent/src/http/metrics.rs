//! `tollgate_http_*`: requests by version and decision.
use prometheus::{IntCounter, IntCounterVec, Registry};

use crate::{metrics::counter_vec, record::DecisionLabel};

/// HTTP followed at L7.
pub struct HttpMetrics {
    /// One handle per (version, decision), fetched once: no label lookup per request.
    requests: Vec<IntCounter>,
}

const VERSIONS: [&str; 2] = ["http/1.1", "http/2"];
/// The labels a request's (or an MCP call's) record can have: one series each.
pub(crate) const DECISIONS: [DecisionLabel; 6] = [
    DecisionLabel::Allow,
    DecisionLabel::Deny,
    DecisionLabel::RequireApproval,
    DecisionLabel::WouldDeny,
    DecisionLabel::WouldRequireApproval,
    DecisionLabel::Malformed,
];

/// `decision`'s place in [`DECISIONS`] (any other label counts as the last).
pub(crate) fn decision_index(decision: DecisionLabel) -> usize {
    DECISIONS
        .iter()
        .position(|d| *d == decision)
        .unwrap_or(DECISIONS.len() - 1)
}

impl HttpMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let requests: IntCounterVec = counter_vec(
            registry,
            "tollgate_http_requests_total",
            "HTTP requests of jobs followed at L7, by version (http/1.1, http/2) and \
             decision (allow, deny, require_approval, would_deny, would_require_approval, \
             malformed: a head past [http] max_header_size).",
            &["version", "decision"],
        );
        Self {
            requests: VERSIONS
                .iter()
                .flat_map(|version| {
                    DECISIONS
                        .iter()
                        .map(|decision| requests.with_label_values(&[version, decision.as_str()]))
                        .collect::<Vec<_>>()
                })
                .collect(),
        }
    }

    /// Counts one request: `h2` for HTTP/2, else HTTP/1.x.
    pub fn request(&self, h2: bool, decision: DecisionLabel) {
        let d = decision_index(decision);
        let v = usize::from(h2);
        if let Some(counter) = self.requests.get(v * DECISIONS.len() + d) {
            counter.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_version_and_decision_counts_in_its_own_series() {
        let registry = Registry::new();
        let metrics = HttpMetrics::new(&registry);
        metrics.request(true, DecisionLabel::Deny);
        metrics.request(false, DecisionLabel::Allow);
        metrics.request(false, DecisionLabel::Allow);
        let families = registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == "tollgate_http_requests_total")
            .unwrap();
        let value = |version: &str, decision: &str| {
            family
                .get_metric()
                .iter()
                .find(|m| {
                    let labels = m.get_label();
                    labels.iter().any(|l| l.value() == version)
                        && labels.iter().any(|l| l.value() == decision)
                })
                .map_or(0.0, |m| m.get_counter().get_value())
        };
        assert_eq!(value("http/2", "deny"), 1.0);
        assert_eq!(value("http/1.1", "allow"), 2.0);
        assert_eq!(value("http/1.1", "deny"), 0.0);
    }
}
