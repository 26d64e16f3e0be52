//! One access-log event and one connection record per connection, emitted by a guard
//! that fires however the connection task ends (finished, denied early, or cancelled).
use std::{net::SocketAddr, sync::Arc, time::Instant};

use tollgate_common::ConnInfo;
use tollgate_policy::Decision;

use super::{Shared, comm, original_destination};
use crate::{
    jobs::Job,
    metrics::ProxyMetrics,
    record::DecisionLabel,
    record::{ConnectionRecord, RecordEvent, now_ms},
};

pub struct AccessLog<'a> {
    shared: &'a Shared,
    record: ConnectionRecord,
    job: Option<Arc<Job>>,
}

impl<'a> AccessLog<'a> {
    pub fn new(shared: &'a Shared, peer: SocketAddr) -> Self {
        shared.metrics.intercepted.inc();
        shared.metrics.active.inc();
        Self {
            shared,
            record: ConnectionRecord {
                id: uuid::Uuid::now_v7().to_string(),
                source: peer.to_string(),
                decision: DecisionLabel::Unattributed,
                reason: "connection ended before it was attributed".to_owned(),
                started_at: now_ms(),
                ended_at: None,
                path: Some("proxy".to_owned()),
                ..Default::default()
            },
            job: None,
        }
    }

    /// The kernel had no record of this connection: it is refused.
    pub fn unattributed(&mut self, reason: String) {
        self.shared.metrics.unattributed.inc();
        self.record.decision = DecisionLabel::Unattributed;
        self.record.reason = reason;
    }

    pub fn attribute(&mut self, info: &ConnInfo, job: Option<Arc<Job>>, exe: Option<String>) {
        let r = &mut self.record;
        r.attributed = true;
        r.pid = Some(info.tgid);
        r.tid = Some(info.tid);
        r.uid = Some(info.uid);
        r.gid = Some(info.gid);
        r.comm = Some(comm(info));
        r.exe = exe;
        r.cgroup_id = Some(info.cgroup_id);
        r.destination = Some(original_destination(info).to_string());
        r.job_id = job.as_ref().map(|job| job.id.clone());
        r.assurance = job.as_ref().map(|job| job.assurance);
        self.job = job;
    }

    pub fn decide(&mut self, decision: &Decision) {
        let label = DecisionLabel::from(decision);
        self.shared.metrics.decision(label.as_str());
        self.record.decision = label;
        self.record.reason = decision.reason.clone();
        self.record.policy_ids = decision.policy_ids.clone();
        if !decision.target.is_empty() {
            self.record.target = Some(decision.target.clone());
        }
    }

    /// A policy reload denied this live connection.
    /// The name the job resolved the destination from, if it did.
    pub fn hostname(&mut self, hostname: Option<String>) {
        self.record.hostname = hostname;
    }

    pub fn revoked(&mut self, decision: &Decision) {
        self.shared.policy_metrics.revoked.inc();
        self.record.decision = DecisionLabel::Revoked;
        self.record.reason = format!("revoked by a policy reload: {}", decision.reason);
        self.record.policy_ids = decision.policy_ids.clone();
    }

    /// Puts the allowed connection on record before relaying it.
    pub fn opened(&self) {
        self.shared.recorder.opened(&self.record);
    }

    pub fn connected(&mut self, accepted: Instant) {
        let elapsed = accepted.elapsed();
        self.shared
            .metrics
            .upstream_connect_seconds
            .observe(elapsed.as_secs_f64());
        self.record.connect_us = Some(elapsed.as_micros() as u64);
    }

    pub fn bytes(&mut self, up: u64, down: u64) {
        self.record.bytes_up = up;
        self.record.bytes_down = down;
    }

    /// The connection was followed as a PostgreSQL session.
    pub fn postgres(&mut self, startup: &crate::postgres::session::Startup) {
        let r = &mut self.record;
        r.protocol = Some("postgres".to_owned());
        r.db_user = startup.user.clone();
        r.db_name = startup.database.clone();
        r.application_name = startup.application_name.clone();
        if startup.kind == "startup" {
            r.client_tls = Some(startup.client_tls);
            r.server_tls = Some(startup.server_tls);
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    pub fn error(&mut self, error: String) {
        self.record.error = Some(error);
    }
}

impl Drop for AccessLog<'_> {
    fn drop(&mut self) {
        self.shared.metrics.active.dec();
        finish(
            &mut self.record,
            self.job.as_deref(),
            &self.shared.metrics,
            &self.shared.recorder,
        );
    }
}

/// Ends a connection's record: its one access-log event, its bytes counted, and the
/// record written. Both paths (proxy and kernel) end here.
pub fn finish(
    r: &mut ConnectionRecord,
    job: Option<&Job>,
    metrics: &ProxyMetrics,
    recorder: &crate::record::Recorder,
) {
    {
        let ended_at = now_ms();
        r.ended_at = Some(ended_at);
        metrics.bytes(r.bytes_up, r.bytes_down);
        tracing::info!(
            target: "access",
            id = %r.id,
            job = r.job_id.as_deref().unwrap_or("-"),
            labels = ?job.map(|job| &job.labels),
            pid = r.pid,
            uid = r.uid,
            comm = r.comm.as_deref().unwrap_or("-"),
            src = %r.source,
            dst = r.destination.as_deref().unwrap_or("-"),
            decision = r.decision.as_str(),
            reason = %r.reason,
            bytes_up = r.bytes_up,
            bytes_down = r.bytes_down,
            duration_ms = ended_at - r.started_at,
            error = r.error.as_deref().unwrap_or("-"),
            path = r.path.as_deref().unwrap_or("proxy"),
            "connection"
        );
        let record = std::mem::take(r);
        recorder.record(RecordEvent::Connection(Box::new(record)));
    }
}
