//! Prometheus metrics, one struct per subsystem, each registered in its `new()`.
//! Labels take values from fixed sets only; run ids, pids and addresses never become
//! labels.
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tollgate_common::Counter;

pub use crate::postgres::metrics::PostgresMetrics;
use crate::{
    bpf::{ConnMaps, MapOccupancy},
    record::DecisionLabel,
};

/// Every subsystem's metrics, sharing one registry.
pub struct Metrics {
    registry: Registry,
    pub proxy: Arc<ProxyMetrics>,
    pub record: Arc<crate::record::RecordMetrics>,
    pub jobs: Arc<JobMetrics>,
    pub control: Arc<ControlMetrics>,
    pub bpf: Arc<BpfMetrics>,
    pub policy: Arc<PolicyMetrics>,
    pub identity: Arc<IdentityMetrics>,
    pub postgres: Arc<PostgresMetrics>,
    pub http: Arc<crate::http::metrics::HttpMetrics>,
    pub mcp: Arc<crate::mcp::metrics::McpMetrics>,
    pub dns: Arc<DnsMetrics>,
    pub udp: Arc<crate::udp::UdpMetrics>,
    pub unix: Arc<crate::unix::UnixMetrics>,
    pub kernel: Arc<crate::kernel_path::KernelMetrics>,
    pub approvals: Arc<crate::approvals::ApprovalMetrics>,
    pub central: Arc<crate::central::CentralMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    metric
}

pub(crate) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    metric
}

pub(crate) fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    metric
}

pub(crate) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    metric
}

impl Metrics {
    // Metric names and help texts are constants: a failure to build or register them is
    // a programming error caught by the unit tests, hence the panics above.
    pub fn new() -> Self {
        let registry = Registry::new();
        let info = gauge_vec(
            &registry,
            "tollgate_build_info",
            "Build information (always 1).",
            &["version"],
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            proxy: Arc::new(ProxyMetrics::new(&registry)),
            record: Arc::new(crate::record::RecordMetrics::new(&registry)),
            jobs: Arc::new(JobMetrics::new(&registry)),
            identity: Arc::new(IdentityMetrics::new(&registry)),
            postgres: Arc::new(PostgresMetrics::new(&registry)),
            http: Arc::new(crate::http::metrics::HttpMetrics::new(&registry)),
            mcp: Arc::new(crate::mcp::metrics::McpMetrics::new(&registry)),
            dns: Arc::new(DnsMetrics::new(&registry)),
            udp: Arc::new(crate::udp::UdpMetrics::new(&registry)),
            unix: Arc::new(crate::unix::UnixMetrics::new(&registry)),
            kernel: Arc::new(crate::kernel_path::KernelMetrics::new(&registry)),
            approvals: Arc::new(crate::approvals::ApprovalMetrics::new(&registry)),
            central: Arc::new(crate::central::CentralMetrics::new(&registry)),
            control: Arc::new(ControlMetrics::new(&registry)),
            bpf: Arc::new(BpfMetrics::new(&registry)),
            policy: Arc::new(PolicyMetrics::new(&registry)),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Why the upstream connect failed (label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Refused,
    Timeout,
    Unreachable,
    Other,
}

impl UpstreamErrorKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Refused => "refused",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Unreachable => "unreachable",
            UpstreamErrorKind::Other => "other",
        }
    }
}

/// A counter vector's children for a closed set of `N` label sets, each looked up in the
/// vector once, on first use (so a series appears when it first counts, as before), and
/// then counted without hashing its labels.
pub(crate) struct Children<const N: usize> {
    vec: IntCounterVec,
    children: [OnceLock<IntCounter>; N],
}

impl<const N: usize> Children<N> {
    pub(crate) fn new(vec: IntCounterVec) -> Self {
        Self {
            vec,
            children: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The child for label set `index`, whose values are `labels`.
    pub(crate) fn get(&self, index: usize, labels: &[&str]) -> &IntCounter {
        self.children[index].get_or_init(|| self.vec.with_label_values(labels))
    }
}

pub struct ProxyMetrics {
    pub intercepted: IntCounter,
    decisions: Children<{ DecisionLabel::ALL.len() }>,
    pub unattributed: IntCounter,
    reused_ports: Children<{ ReusedPortLabel::ALL.len() }>,
    pub active: IntGauge,
    /// Up (0) and down (1).
    bytes: Children<2>,
    upstream_errors: IntCounterVec,
    pub upstream_connect_seconds: Histogram,
}

impl ProxyMetrics {
    fn new(registry: &Registry) -> Self {
        let upstream_connect_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_proxy_upstream_connect_seconds",
                "Time from accepting an intercepted connection to being connected upstream.",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        registry
            .register(Box::new(upstream_connect_seconds.clone()))
            .unwrap_or_else(|e| panic!("registering histogram: {e}"));
        Self {
            intercepted: counter(
                registry,
                "tollgate_proxy_intercepted_total",
                "Connections accepted by the proxy (redirected by the kernel).",
            ),
            decisions: Children::new(counter_vec(
                registry,
                "tollgate_proxy_decisions_total",
                "Attributed connections by decision: allow, deny, require_approval, \
                 would_deny, would_require_approval (audit mode).",
                &["decision"],
            )),
            unattributed: counter(
                registry,
                "tollgate_proxy_unattributed_total",
                "Connections refused because the kernel had no record of them.",
            ),
            reused_ports: Children::new(counter_vec(
                registry,
                "tollgate_proxy_reused_port_records_total",
                "Accepted connections whose source port had several kernel records (a client \
                 reused it while the proxy lagged): chosen by the kernel's marks, ambiguous \
                 (refused), and orphan records removed.",
                &["outcome"],
            )),
            active: gauge(
                registry,
                "tollgate_proxy_active_connections",
                "Connections currently open through the proxy.",
            ),
            bytes: Children::new(counter_vec(
                registry,
                "tollgate_proxy_bytes_total",
                "Bytes relayed; up is client to server, down is server to client.",
                &["direction"],
            )),
            upstream_errors: counter_vec(
                registry,
                "tollgate_proxy_upstream_connect_errors_total",
                "Failed connects to the original destination, by kind.",
                &["kind"],
            ),
            upstream_connect_seconds,
        }
    }

    pub fn decision(&self, label: DecisionLabel) {
        self.decisions.get(label as usize, &[label.as_str()]).inc();
    }

    pub fn reused_port(&self, label: ReusedPortLabel, n: u64) {
        self.reused_ports
            .get(label as usize, &[label.as_str()])
            .inc_by(n);
    }

    pub fn bytes(&self, up: u64, down: u64) {
        self.bytes.get(0, &["up"]).inc_by(up);
        self.bytes.get(1, &["down"]).inc_by(down);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors
            .with_label_values(&[kind.as_str()])
            .inc();
    }
}

/// Label `outcome` of `tollgate_proxy_reused_port_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReusedPortLabel {
    Chosen,
    Ambiguous,
    OrphanRemoved,
}

impl ReusedPortLabel {
    pub const ALL: [Self; 3] = [Self::Chosen, Self::Ambiguous, Self::OrphanRemoved];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Chosen => "chosen",
            Self::Ambiguous => "ambiguous",
            Self::OrphanRemoved => "orphan_removed",
        }
    }
}

/// Why a job ended (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEndLabel {
    /// Its command exited and `tollgate run` reported it.
    Exited,
    /// The process that owned it went away without reporting.
    OwnerGone,
    /// Its cgroup disappeared while the agent was down.
    Lost,
    /// Removed by `tollgate agent --cleanup`.
    Cleanup,
    /// A runner hook reported that the CI job completed.
    Completed,
}

impl JobEndLabel {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobEndLabel::Exited => "exited",
            JobEndLabel::OwnerGone => "owner_gone",
            JobEndLabel::Lost => "lost",
            JobEndLabel::Cleanup => "cleanup",
            JobEndLabel::Completed => "completed",
        }
    }
}

pub struct JobMetrics {
    pub active: IntGauge,
    pub started: IntCounter,
    ended: IntCounterVec,
    events: IntCounterVec,
}

impl JobMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            active: gauge(registry, "tollgate_jobs_active", "Jobs currently running."),
            started: counter(registry, "tollgate_jobs_started_total", "Jobs created."),
            ended: counter_vec(
                registry,
                "tollgate_jobs_ended_total",
                "Jobs ended, by reason.",
                &["reason"],
            ),
            events: counter_vec(
                registry,
                "tollgate_job_events_total",
                "Events recorded on jobs (refused or detected sockets), by kind and action.",
                &["kind", "action"],
            ),
        }
    }

    pub fn ended(&self, reason: JobEndLabel) {
        self.ended.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn event(&self, kind: &str, action: &str) {
        self.events.with_label_values(&[kind, action]).inc();
    }
}

/// Tollgate's resolver.
pub struct DnsMetrics {
    queries: IntCounterVec,
    pub cache_hits: IntCounter,
    pub upstream_failures: IntCounter,
}

impl DnsMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            queries: counter_vec(
                registry,
                "tollgate_dns_queries_total",
                "DNS queries of jobs, by decision and answer code.",
                &["decision", "rcode"],
            ),
            cache_hits: counter(
                registry,
                "tollgate_dns_cache_hits_total",
                "DNS queries answered from the resolver's cache.",
            ),
            upstream_failures: counter(
                registry,
                "tollgate_dns_upstream_failures_total",
                "Forwarded queries that no upstream resolver answered in time.",
            ),
        }
    }

    /// A query, by its decision and its answer's code (the wire's bounded set of rcode
    /// names).
    pub fn query(&self, decision: crate::record::DecisionLabel, rcode: &str) {
        self.queries
            .with_label_values(&[decision.as_str(), rcode])
            .inc();
    }
}

/// Runner enrolments and OIDC attestations. `action` is one of the audit actions
/// (github_job_started, gitlab_job_started, attest, ...), `result` ok or refused.
pub struct IdentityMetrics {
    events: IntCounterVec,
}

impl IdentityMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            events: counter_vec(
                registry,
                "tollgate_identity_events_total",
                "Runner hook enrolments and OIDC attestations, by action and result.",
                &["action", "result"],
            ),
        }
    }

    pub fn event(&self, action: &'static str, result: &'static str) {
        self.events.with_label_values(&[action, result]).inc();
    }
}

pub struct ControlMetrics {
    requests: IntCounterVec,
}

impl ControlMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            requests: counter_vec(
                registry,
                "tollgate_control_requests_total",
                "Control socket requests by operation and result (ok, error, denied).",
                &["op", "result"],
            ),
        }
    }

    pub fn request(&self, op: &'static str, result: &'static str) {
        self.requests.with_label_values(&[op, result]).inc();
    }
}

pub struct PolicyMetrics {
    /// Policies in force.
    pub loaded: IntGauge,
    reloads: IntCounterVec,
    /// Live connections closed because a reload denied them.
    pub revoked: IntCounter,
}

impl PolicyMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            loaded: gauge(registry, "tollgate_policy_loaded", "Policies in force."),
            reloads: counter_vec(
                registry,
                "tollgate_policy_reloads_total",
                "Policy reloads by result (ok, error); on error the previous set stays.",
                &["result"],
            ),
            revoked: counter(
                registry,
                "tollgate_policy_revoked_total",
                "Live connections closed because a policy reload denied them.",
            ),
        }
    }

    pub fn reload(&self, result: &'static str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    #[cfg(test)]
    pub fn reloads_with(&self, result: &str) -> u64 {
        self.reloads.with_label_values(&[result]).get()
    }
}

pub struct BpfMetrics {
    entries: IntGaugeVec,
    capacity: IntGaugeVec,
    events: IntCounterVec,
    pub expired: IntCounter,
    /// Tollgate's links found detached, replaced or unpinned.
    pub tampering: IntCounter,
    /// Last kernel counter values seen, to turn them into counter increments.
    last: Mutex<[u64; Counter::COUNT as usize]>,
}

impl BpfMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            entries: gauge_vec(
                registry,
                "tollgate_bpf_map_entries",
                "Entries in each connection map.",
                &["map"],
            ),
            capacity: gauge_vec(
                registry,
                "tollgate_bpf_map_capacity",
                "Capacity of each connection map.",
                &["map"],
            ),
            events: counter_vec(
                registry,
                "tollgate_bpf_events_total",
                "Events counted by the eBPF programs.",
                &["event"],
            ),
            expired: counter(
                registry,
                "tollgate_bpf_expired_entries_total",
                "Tuple entries expired because no accept() claimed them.",
            ),
            tampering: counter(
                registry,
                "tollgate_bpf_tampering_total",
                "Times Tollgate's eBPF links were found detached, replaced or unpinned.",
            ),
            last: Mutex::new([0; Counter::COUNT as usize]),
        }
    }

    /// Reads occupancy and counters from the maps (called before each scrape).
    pub fn refresh(&self, maps: &ConnMaps) {
        match maps.occupancy() {
            Ok(MapOccupancy {
                conn_by_cookie,
                conn_by_tuple,
                capacity,
            }) => {
                self.entries
                    .with_label_values(&["conn_by_cookie"])
                    .set(conn_by_cookie as i64);
                self.entries
                    .with_label_values(&["conn_by_tuple"])
                    .set(conn_by_tuple as i64);
                for map in ["conn_by_cookie", "conn_by_tuple"] {
                    self.capacity.with_label_values(&[map]).set(capacity as i64);
                }
            }
            Err(error) => tracing::warn!(%error, "reading map occupancy"),
        }
        match maps.counters() {
            Ok(counters) => {
                let Ok(mut last) = self.last.lock() else {
                    return;
                };
                for (counter, value) in counters {
                    let slot = &mut last[counter as usize];
                    if value > *slot {
                        self.events
                            .with_label_values(&[counter.name()])
                            .inc_by(value - *slot);
                    } else {
                        // Touch the series so that it is exported from the start.
                        self.events.with_label_values(&[counter.name()]);
                    }
                    *slot = value;
                }
            }
            Err(error) => tracing::warn!(%error, "reading eBPF counters"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_register_and_render() {
        let metrics = Metrics::new();
        metrics.proxy.decision(DecisionLabel::Allow);
        metrics.proxy.bytes(3, 4);
        metrics.proxy.upstream_error(UpstreamErrorKind::Refused);
        metrics.jobs.ended(JobEndLabel::Exited);
        metrics.control.request("create_job", "ok");
        let text = metrics.render();
        for needle in [
            "tollgate_proxy_decisions_total{decision=\"allow\"} 1",
            "tollgate_proxy_bytes_total{direction=\"down\"} 4",
            "tollgate_proxy_upstream_connect_errors_total{kind=\"refused\"} 1",
            "tollgate_jobs_ended_total{reason=\"exited\"} 1",
            "tollgate_recording_queue_depth 0",
            "tollgate_proxy_upstream_connect_seconds_bucket",
            "tollgate_build_info",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
