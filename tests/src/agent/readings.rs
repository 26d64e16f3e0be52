//! What an agent under test says: its records, status and listings, read from the CLI's
//! `--json` through the agent's own types.
use std::time::Duration;

use tollgate::{
    control::{Job, Status},
    record::{
        AuditRecord, ConnectionRecord, DnsRecord, EventRecord, StatementRecord, UdpFlowRecord,
        UnixRecord,
    },
};

use super::Agent;
use crate::{output, stderr, stdout, wait_for};

impl Agent {
    /// `tollgate ARGS --json`, read as the agent's own type `T`.
    pub fn typed<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let out = output(self.tollgate().args(args));
        assert!(
            out.status.success(),
            "tollgate {args:?} failed ({}): {}",
            out.status,
            stderr(&out)
        );
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
            panic!(
                "tollgate {args:?}: not a {}: {e}: {}",
                std::any::type_name::<T>(),
                stdout(&out)
            )
        })
    }

    /// Recorded connections, newest first (optionally of one job).
    pub fn sessions(&self, job: Option<&str>) -> Vec<ConnectionRecord> {
        let mut args = vec!["sessions", "list", "--json", "--limit", "1000000"];
        if let Some(job) = job {
            args.extend(["--job", job]);
        }
        self.typed(&args)
    }

    /// Waits until `n` connections have ended and been recorded (for the job, if
    /// given), and returns all of that job's records.
    pub fn wait_sessions(&self, job: Option<&str>, n: usize) -> Vec<ConnectionRecord> {
        self.wait_until_recorded(job, n, true)
    }

    /// Waits until `n` connections are on record, open or ended.
    pub fn wait_recorded(&self, job: Option<&str>, n: usize) -> Vec<ConnectionRecord> {
        self.wait_until_recorded(job, n, false)
    }

    fn wait_until_recorded(
        &self,
        job: Option<&str>,
        n: usize,
        ended: bool,
    ) -> Vec<ConnectionRecord> {
        let count = |sessions: &[ConnectionRecord]| {
            sessions
                .iter()
                .filter(|s| !ended || s.ended_at.is_some())
                .count()
        };
        let last = std::cell::Cell::new((0, 0));
        crate::wait_for_or(
            &format!("{n} recorded sessions (job {job:?}, ended: {ended})"),
            // Longer for more, and for a vm-test guest under TCG, which records
            // thousands of sessions several times slower than a host.
            crate::scaled(Duration::from_secs(20) + Duration::from_millis(10) * n as u32),
            || {
                let sessions = self.sessions(job);
                last.set((count(&sessions), sessions.len()));
                (last.get().0 >= n).then_some(sessions)
            },
            // How far it got: slow and lost are different findings.
            || {
                let (counted, all) = last.get();
                let metrics = self.metrics();
                // Where records could have gone: dropped by a full queue, ended as lost,
                // still live on the kernel path, or events the ring could not take.
                let telling: Vec<&str> = metrics
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter(|l| {
                        [
                            "tollgate_proxy_intercepted_total",
                            "tollgate_proxy_unattributed_total",
                            "tollgate_kernel_verdicts_connects_total",
                            "tollgate_kernel_connections_live",
                            "tollgate_recording_",
                            "tollgate_bpf_events_total",
                        ]
                        .iter()
                        .any(|name| l.starts_with(name))
                    })
                    .collect();
                format!(
                    ": {counted} of {all} on record; {}; {}",
                    unattributed(&self.sessions(None)),
                    telling.join("; "),
                )
            },
        )
    }

    /// One recorded connection with its statements (`tollgate sessions show`).
    pub fn session(&self, id: &str) -> ConnectionRecord {
        self.typed(&["sessions", "show", id, "--json"])
    }

    /// The recorded statements of a session.
    pub fn statements(&self, session: &ConnectionRecord) -> Vec<StatementRecord> {
        self.session(&session.id).statements
    }

    /// The statements of `sessions` once at least `n` are on record (written
    /// asynchronously).
    pub fn wait_statements(&self, sessions: &[ConnectionRecord], n: usize) -> Vec<StatementRecord> {
        wait_for(
            &format!("{n} statements on record"),
            Duration::from_secs(10),
            || {
                let s: Vec<StatementRecord> =
                    sessions.iter().flat_map(|s| self.statements(s)).collect();
                (s.len() >= n).then_some(s)
            },
        )
    }

    /// A connection's recorded statements, once at least `n` are on record.
    pub fn wait_statement_records(
        &self,
        connection: &ConnectionRecord,
        n: usize,
    ) -> Vec<StatementRecord> {
        self.wait_statements(std::slice::from_ref(connection), n)
    }

    /// Active jobs (`tollgate jobs`).
    pub fn jobs(&self) -> Vec<Job> {
        self.typed(&["jobs", "--json"])
    }

    /// The agent's status (`tollgate status`).
    pub fn status(&self) -> Status {
        self.typed(&["status", "--json"])
    }

    /// Kernel events on record (`tollgate events`), newest first; `extra` adds options.
    pub fn events(&self, extra: &[&str]) -> Vec<EventRecord> {
        self.listing("events", extra)
    }

    /// Jobs' DNS queries on record (`tollgate dns`), newest first.
    pub fn dns_queries(&self, extra: &[&str]) -> Vec<DnsRecord> {
        self.listing("dns", extra)
    }

    /// Jobs' UDP flows on record (`tollgate udp`), newest first.
    pub fn udp_flows(&self, extra: &[&str]) -> Vec<UdpFlowRecord> {
        self.listing("udp", extra)
    }

    /// Jobs' unix socket connects on record (`tollgate unix`).
    pub fn unix_connects(&self, extra: &[&str]) -> Vec<UnixRecord> {
        self.listing("unix", extra)
    }

    /// The audit trail (`tollgate audit`), newest first.
    pub fn audit(&self, extra: &[&str]) -> Vec<AuditRecord> {
        self.listing("audit", extra)
    }

    fn listing<T: serde::de::DeserializeOwned>(&self, command: &str, extra: &[&str]) -> T {
        let mut args = vec![command, "--json"];
        args.extend(extra);
        self.typed(&args)
    }

    /// What the agent reports this kernel lacks for `feature` (`kernel.gaps` of its
    /// status), as one line: what it needs, what is not covered, what the probe saw.
    pub fn gap(&self, feature: &str) -> Option<String> {
        let status = self.status();
        status
            .kernel
            .gaps
            .iter()
            .find(|g| g.feature == feature)
            .map(|g| {
                format!(
                    "kernel {}: {feature} needs {}; {} ({})",
                    status.kernel.release, g.needs, g.effect, g.error,
                )
            })
    }

    /// True when the test may go on; false, with the agent's own reason printed, when
    /// the agent reports that this kernel lacks `feature`. A skip is allowed only
    /// where the agent reports the gap itself, in CI too.
    pub fn covers(&self, feature: &str) -> bool {
        match self.gap(feature) {
            None => true,
            Some(reason) => {
                eprintln!("SKIPPED: the agent reports that {reason}");
                false
            }
        }
    }
}

/// What became of connections missing from a job's records: the unattributed records,
/// and how many share their source with an attributed record (a source port reused
/// while the proxy had yet to accept the connection that used it before).
fn unattributed(all: &[ConnectionRecord]) -> String {
    let (lost, attributed): (Vec<&ConnectionRecord>, Vec<&ConnectionRecord>) =
        all.iter().partition(|s| !s.attributed);
    let shared: Vec<(&ConnectionRecord, Vec<&ConnectionRecord>)> = lost
        .iter()
        .map(|u| {
            let same: Vec<_> = attributed
                .iter()
                .filter(|a| a.source == u.source)
                .copied()
                .collect();
            (*u, same)
        })
        .filter(|(_, same)| !same.is_empty())
        .collect();
    let example = shared.first().map(|(u, same)| {
        let first = |r: &ConnectionRecord| {
            format!(
                "{} started {} ended {:?} up {} down {} error {:?}",
                r.source, r.started_at, r.ended_at, r.bytes_up, r.bytes_down, r.error
            )
        };
        format!(
            "unattributed {} ({}); attributed {}",
            first(u),
            u.reason,
            same.iter()
                .map(|r| first(r))
                .collect::<Vec<_>>()
                .join(" | ")
        )
    });
    format!(
        "{} sessions of every job, {} unattributed, {} of these from a source an attributed \
         one has too (e.g. {})",
        all.len(),
        lost.len(),
        shared.len(),
        example.unwrap_or_default()
    )
}
