//! Exact refusals on the proxy path. The proxy accepts a job's connection before it knows
//! whether the destination listens; when the destination refuses, the job has seen a
//! connect succeed and then a reset, where directly it would have seen ECONNREFUSED. So
//! the refusal is remembered per job cgroup and destination (`REFUSED_DST`) and the
//! connect hook refuses the job's next connects there at `connect()`, with the same
//! errno. The memory ends when a probe finds the destination listening (every
//! [`PROBE_INTERVAL`]), or when no connect asked for it for `proxy.refusal_memory`; the
//! connects refused meanwhile are then recorded on the job, as one event.
use nix::errno::Errno;
use std::{io, sync::Arc, time::Duration};

use tollgate_common::{ConnInfo, Refusal, RefusedKey};

use crate::{
    bpf::Refusals,
    jobs::JobRegistry,
    metrics::JobMetrics,
    record::{self, EventRecord, Recorder},
};

/// How often remembered destinations are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Probes per round at most (the oldest memories wait for the next round).
const MAX_PROBES: usize = 64;

pub struct Remembered {
    refusals: Refusals,
    memory: Duration,
    jobs: Arc<JobRegistry>,
    recorder: Recorder,
    metrics: Arc<JobMetrics>,
}

impl Remembered {
    /// None when `memory` is zero (the feature is off).
    pub fn new(
        refusals: Refusals,
        memory: Duration,
        jobs: Arc<JobRegistry>,
        recorder: Recorder,
        metrics: Arc<JobMetrics>,
    ) -> Option<Arc<Self>> {
        (!memory.is_zero()).then(|| {
            Arc::new(Self {
                refusals,
                memory,
                jobs,
                recorder,
                metrics,
            })
        })
    }

    /// Forgets a destination, and records the connects refused at connect() for it.
    fn forget(&self, key: &RefusedKey, value: &Refusal, why: &str) {
        let _ = self.refusals.forget(key);
        if value.refused == 0 {
            return;
        }
        let job = self.jobs.resolve(key.cgroup_id);
        let destination = key.dst.addr();
        crate::events::record_event(
            &self.recorder,
            &self.metrics,
            EventRecord {
                at: record::now_ms(),
                kind: "connect_refused".to_owned(),
                job_id: job.map(|j| j.id.clone()),
                cgroup_id: key.cgroup_id,
                pid: 0,
                tid: 0,
                uid: u32::MAX,
                gid: u32::MAX,
                comm: String::new(),
                exe: None,
                action: "refused".to_owned(),
                detail: format!(
                    "{} connects to {destination} refused at connect() ({}), as the \
                     destination refused the proxy's; {why}",
                    value.refused,
                    std::io::Error::from_raw_os_error(value.errno as i32)
                ),
            },
        );
    }

    /// The proxy's connect for `info` failed with `error`: remembered if it is an error
    /// the destination gives at once (refused, unreachable), not a timeout.
    pub fn upstream_failed(&self, info: &ConnInfo, error: &io::Error) {
        let errno = match error.kind() {
            io::ErrorKind::ConnectionRefused => Errno::ECONNREFUSED as i32,
            io::ErrorKind::HostUnreachable => Errno::EHOSTUNREACH as i32,
            io::ErrorKind::NetworkUnreachable => Errno::ENETUNREACH as i32,
            _ => return,
        };
        if let Err(error) = self.refusals.remember(info, errno) {
            tracing::warn!(%error, "cannot remember a refused destination");
        }
    }

    /// Probes remembered destinations and forgets those that listen now or that no job
    /// asked for lately. Runs until the runtime stops.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let memory = u64::try_from(self.memory.as_nanos()).unwrap_or(u64::MAX);
        loop {
            tick.tick().await;
            let entries = match self.refusals.list() {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the refused destinations");
                    continue;
                }
            };
            let mut probes = tokio::task::JoinSet::new();
            for (key, value, idle_ns) in entries {
                if idle_ns > memory {
                    self.forget(&key, &value, "no connect asked for it since");
                    continue;
                }
                if probes.len() >= MAX_PROBES {
                    continue;
                }
                let destination = key.dst.addr();
                probes.spawn(async move {
                    let listening = matches!(
                        tokio::time::timeout(
                            PROBE_INTERVAL,
                            tokio::net::TcpStream::connect(destination)
                        )
                        .await,
                        Ok(Ok(_))
                    );
                    (key, value, listening)
                });
            }
            while let Some(done) = probes.join_next().await {
                if let Ok((key, value, true)) = done {
                    // Counted again: connects may have been refused since the listing.
                    let value = self
                        .refusals
                        .list()
                        .ok()
                        .and_then(|all| all.into_iter().find(|(k, _, _)| *k == key))
                        .map_or(value, |(_, v, _)| v);
                    self.forget(&key, &value, "it listens now");
                }
            }
        }
    }
}
