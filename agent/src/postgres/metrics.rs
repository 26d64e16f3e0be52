//! `tollgate_postgres_*`: statements by kind and decision, and masked rows.
use prometheus::{IntCounter, IntCounterVec, Registry};

use crate::{
    metrics::{counter, counter_vec},
    record::DecisionLabel,
};

/// PostgreSQL sessions followed at L7.
pub struct PostgresMetrics {
    /// One handle per (kind, decision), fetched once: no label lookup per statement.
    statements: Vec<IntCounter>,
    by_label: IntCounterVec,
    pub masked_rows: IntCounter,
}

const STATEMENT_KINDS: [&str; 7] = [
    "read",
    "write",
    "ddl",
    "admin",
    "transaction",
    "procedural",
    "unknown",
];
/// The labels a statement's policy decision can have.
const STATEMENT_DECISIONS: [DecisionLabel; 5] = [
    DecisionLabel::Allow,
    DecisionLabel::Deny,
    DecisionLabel::RequireApproval,
    DecisionLabel::WouldDeny,
    DecisionLabel::WouldRequireApproval,
];

impl PostgresMetrics {
    pub(crate) fn new(registry: &Registry) -> Self {
        let statements = counter_vec(
            registry,
            "tollgate_postgres_statements_total",
            "SQL statements, by kind (read, write, ddl, admin, transaction, procedural, \
             unknown) and decision (allow, deny, require_approval, would_deny, \
             would_require_approval).",
            &["kind", "decision"],
        );
        let vec = &statements;
        Self {
            statements: STATEMENT_KINDS
                .iter()
                .flat_map(|kind| {
                    STATEMENT_DECISIONS
                        .iter()
                        .map(move |decision| vec.with_label_values(&[kind, decision.as_str()]))
                })
                .collect(),
            by_label: statements,
            masked_rows: counter(
                registry,
                "tollgate_postgres_masked_rows_total",
                "Result rows (DataRow or COPY rows) in which at least one value was masked.",
            ),
        }
    }

    /// Counts one statement; `kind` and `decision` come from fixed sets.
    pub fn statement(&self, kind: &str, decision: DecisionLabel) {
        let k = STATEMENT_KINDS.iter().position(|k| *k == kind);
        let d = STATEMENT_DECISIONS.iter().position(|d| *d == decision);
        match (k, d) {
            (Some(k), Some(d)) => self.statements[k * STATEMENT_DECISIONS.len() + d].inc(),
            _ => self
                .by_label
                .with_label_values(&[kind, decision.as_str()])
                .inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_and_decision_counts_in_its_own_series() {
        let registry = Registry::new();
        let metrics = PostgresMetrics::new(&registry);
        metrics.statement("ddl", DecisionLabel::Deny);
        metrics.statement("read", DecisionLabel::Allow);
        metrics.statement("read", DecisionLabel::Allow);
        metrics.statement("read", DecisionLabel::WouldRequireApproval);
        let value = |kind: &str, decision: &str| {
            metrics.by_label.with_label_values(&[kind, decision]).get()
        };
        assert_eq!(value("ddl", "deny"), 1);
        assert_eq!(value("read", "allow"), 2);
        assert_eq!(value("read", "would_require_approval"), 1);
        assert_eq!(value("write", "allow"), 0);
        // Outside the fixed sets: still counted, under its own labels.
        metrics.statement("other", DecisionLabel::Allow);
        assert_eq!(value("other", "allow"), 1);
        let total: u64 = STATEMENT_KINDS
            .iter()
            .flat_map(|k| {
                STATEMENT_DECISIONS
                    .iter()
                    .map(move |d| value(k, d.as_str()))
            })
            .sum();
        assert_eq!(total, 4);
    }
}
