//! One access-log event and one connection record per connection, emitted by a guard
//! that fires however the connection task ends (finished, denied early, or cancelled).
use std::{net::SocketAddr, sync::Arc, time::Instant};

use tollgate_policy::Decision;

use super::{Shared, attribute::Attributed, handler::Progress};
use crate::{
    jobs::Job,
    metrics::ProxyMetrics,
    postgres::session::StartupKind,
    record::DecisionLabel,
    record::{ConnectionRecord, RecordEvent, now_ms},
};

/// Where a connection's record and counts go.
pub struct Sinks<'a> {
    pub metrics: &'a ProxyMetrics,
    pub policy_metrics: &'a crate::metrics::PolicyMetrics,
    pub recorder: &'a crate::record::Recorder,
}

pub struct AccessLog<'a> {
    sinks: Sinks<'a>,
    record: ConnectionRecord,
    job: Option<Arc<Job>>,
    /// Fed by the connection's handler while it runs; read when the record is written.
    progress: Progress,
}

impl<'a> AccessLog<'a> {
    pub fn new(shared: &'a Shared, peer: SocketAddr) -> Self {
        Self::with(
            Sinks {
                metrics: &shared.metrics,
                policy_metrics: &shared.policy_metrics,
                recorder: &shared.recorder,
            },
            peer,
        )
    }

    pub fn with(sinks: Sinks<'a>, peer: SocketAddr) -> Self {
        sinks.metrics.intercepted.inc();
        sinks.metrics.active.inc();
        Self {
            sinks,
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
            progress: Progress::default(),
        }
    }

    /// The kernel had no record of this connection: it is refused.
    pub fn unattributed(&mut self, reason: String) {
        self.sinks.metrics.unattributed.inc();
        self.record.decision = DecisionLabel::Unattributed;
        self.record.reason = reason;
    }

    pub fn attribute(&mut self, conn: &Attributed) {
        conn.fill(&mut self.record);
        self.job.clone_from(&conn.job);
    }

    pub fn decide(&mut self, decision: &Decision) {
        self.sinks.metrics.decision(self.record.decided(decision));
    }

    /// The name the job resolved the destination from, if it did.
    pub fn hostname(&mut self, hostname: Option<String>) {
        self.record.hostname = hostname;
    }

    /// The name the client's ClientHello asked for.
    pub fn sni(&mut self, sni: Option<String>) {
        self.record.sni = sni;
    }

    /// A policy reload denied this live connection.
    pub fn revoked(&mut self, decision: &Decision) {
        self.sinks.policy_metrics.revoked.inc();
        self.record.decision = DecisionLabel::Revoked;
        self.record.reason = format!("revoked by a policy reload: {}", decision.reason);
        self.record.policy_ids = decision.policy_ids.clone();
    }

    /// Puts the allowed connection on record before relaying it.
    pub fn opened(&self) {
        self.sinks.recorder.opened(&self.record);
    }

    pub fn connected(&mut self, accepted: Instant) {
        let elapsed = accepted.elapsed();
        self.sinks
            .metrics
            .upstream_connect_seconds
            .observe(elapsed.as_secs_f64());
        self.record.connect_us = Some(elapsed.as_micros() as u64);
    }

    /// Where the connection's handler reports what it has relayed.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Takes in what the handler reported.
    fn take_progress(&mut self) {
        let (up, down) = self.progress.bytes();
        let r = &mut self.record;
        r.bytes_up = up;
        r.bytes_down = down;
        // The connection was followed as a PostgreSQL session.
        if let Some(startup) = self.progress.startup() {
            r.protocol = Some("postgres".to_owned());
            r.db_user = startup.user;
            r.db_name = startup.database;
            r.application_name = startup.application_name;
            if startup.kind == StartupKind::Startup {
                r.client_tls = Some(startup.client_tls);
                r.server_tls = Some(startup.server_tls);
            }
        } else if let Some(protocol) = self.progress.protocol() {
            r.protocol = Some(protocol.to_owned());
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
        self.sinks.metrics.active.dec();
        self.take_progress();
        let statements = self
            .record
            .protocol
            .is_some()
            .then(|| self.progress.statements());
        finish(
            &mut self.record,
            self.job.as_deref(),
            self.sinks.metrics,
            self.sinks.recorder,
            statements,
        );
    }
}

/// Ends a connection's record: its one access-log event, its bytes counted, and the
/// record written. Both paths (proxy and kernel) end here. `statements`: for a session
/// followed statement by statement, how many were recorded and how many refused.
pub fn finish(
    r: &mut ConnectionRecord,
    job: Option<&Job>,
    metrics: &ProxyMetrics,
    recorder: &crate::record::Recorder,
    statements: Option<(u64, u64)>,
) {
    let (statements, refused_statements) = statements.unzip();
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
            sni = r.sni.as_deref().unwrap_or("-"),
            decision = r.decision.as_str(),
            reason = %r.reason,
            bytes_up = r.bytes_up,
            bytes_down = r.bytes_down,
            duration_ms = ended_at - r.started_at,
            error = r.error.as_deref().unwrap_or("-"),
            path = r.path.as_deref().unwrap_or("proxy"),
            statements,
            refused_statements,
            "connection"
        );
        let record = std::mem::take(r);
        recorder.record(RecordEvent::Connection(Box::new(record)));
    }
}
