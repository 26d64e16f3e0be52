//! `tollgate_mcp_*`: tool calls by decision, tools hidden from listings, and tools that
//! changed within a session.
use prometheus::{IntCounter, IntCounterVec, Registry};

use crate::{
    http::metrics::{DECISIONS, decision_index},
    metrics::{counter, counter_vec},
    record::DecisionLabel,
};

pub struct McpMetrics {
    /// One handle per decision, fetched once.
    calls: Vec<IntCounter>,
    pub hidden: IntCounter,
    pub changed: IntCounter,
    pub malformed: IntCounter,
}

impl McpMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let calls: IntCounterVec = counter_vec(
            registry,
            "tollgate_mcp_calls_total",
            "MCP tool calls of jobs, by decision (allow, deny, require_approval, would_deny, \
             would_require_approval, malformed).",
            &["decision"],
        );
        let single = |name: &str, help: &str| counter(registry, name, help);
        Self {
            calls: DECISIONS
                .iter()
                .map(|d| calls.with_label_values(&[d.as_str()]))
                .collect(),
            hidden: single(
                "tollgate_mcp_tools_hidden_total",
                "Tools left out of a tools/list answer because no call of them is permitted.",
            ),
            changed: single(
                "tollgate_mcp_tools_changed_total",
                "Tools whose description or input schema changed within an MCP session, or \
                 that appeared after its first listing (the rug-pull case).",
            ),
            malformed: single(
                "tollgate_mcp_malformed_total",
                "MCP bodies and streams that were not JSON-RPC, or too large.",
            ),
        }
    }

    pub fn call(&self, decision: DecisionLabel) {
        if let Some(counter) = self.calls.get(decision_index(decision)) {
            counter.inc();
        }
    }
}
