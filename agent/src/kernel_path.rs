//! The kernel path (`proxy.kernel_verdicts`): the proxy decides a job's first connect
//! with a key (job cgroup, uid, gid, comm, destination); when that decision is final at
//! connect time, the verdict goes into a pinned map, and the kernel lets the next connect
//! with the key go straight to its destination. Without a policy directory every job's
//! connects go straight from the first (but those to L7, audit and opted-out targets).
//!
//! Such connections are recorded from kernel events (connect, establish, close with the
//! bytes each way), with the same fields and access-log event as proxied ones, plus
//! `path = "kernel"`. Verdicts are dropped on a reload, an attest and at a job's end; a
//! reload that denies a live kernel-path connection destroys its socket. The kernel uses
//! verdicts only while the agent's heartbeat is fresh (2 s): a dead or stuck agent's
//! jobs are refused as before.
mod conns;
pub mod destroy;
mod metrics;
mod nets;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tollgate_common::{ConnInfo, KernelConnEvent, VerdictKey};
use tollgate_policy::Decision;

pub use metrics::KernelMetrics;

use crate::{
    bpf::VerdictMaps,
    enforce::{Enforcer, KernelPlan, Snapshot},
    jobs::{Job, JobRegistry},
    metrics::{PolicyMetrics, ProxyMetrics},
    record::Recorder,
};

/// How often the heartbeat is refreshed (the kernel ignores verdicts after 2 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// An installed exact verdict: what decided it, for the records of its connections.
struct Installed {
    decision: Decision,
    job_id: String,
    revision: u64,
}

#[derive(Default)]
struct State {
    /// The plan in force (its generation is the policy's).
    plan: KernelPlan,
    installed: HashMap<VerdictKey, Installed>,
    /// Job cgroups marked final for everything: cgroup id -> (job id, revision).
    everything: HashMap<u64, (String, u64)>,
    /// Whether recording currently forbids the kernel path.
    suspended: bool,
}

pub struct KernelPath {
    enabled: bool,
    maps: VerdictMaps,
    jobs: Arc<JobRegistry>,
    enforcer: Arc<Enforcer>,
    recorder: Recorder,
    gate: crate::record::Gate,
    metrics: Arc<KernelMetrics>,
    proxy_metrics: Arc<ProxyMetrics>,
    policy_metrics: Arc<PolicyMetrics>,
    state: Mutex<State>,
    live: conns::Live,
}

/// What `tollgate status` shows of the kernel path.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelStatus {
    pub enabled: bool,
    /// Every job's connects go straight to their destination (no policy directory).
    pub everything: bool,
    /// Why no connect decision is final in the kernel, if none is.
    pub blind: Option<String>,
    /// Why targets that declare no protocol stay on the proxy path, if they do.
    #[serde(default)]
    pub partial: Option<String>,
    /// Networks that stay on the proxy path, with why.
    pub proxied: Vec<String>,
    /// Exact verdicts in the kernel's map.
    pub exact_verdicts: usize,
    /// Job cgroups whose every connect the kernel takes.
    pub job_verdicts: usize,
    /// Connects the verdicts in the maps let through.
    pub hits: u64,
    pub live_connections: usize,
}

/// Everything the kernel path is built from.
pub struct Parts<'a> {
    pub enabled: bool,
    /// One of the proxy's listeners: verdicts count while it is open.
    pub liveness: Option<std::os::fd::BorrowedFd<'a>>,
    pub maps: VerdictMaps,
    pub jobs: Arc<JobRegistry>,
    pub enforcer: Arc<Enforcer>,
    pub recorder: Recorder,
    pub gate: crate::record::Gate,
    pub metrics: Arc<KernelMetrics>,
    pub proxy_metrics: Arc<ProxyMetrics>,
    pub policy_metrics: Arc<PolicyMetrics>,
}

impl KernelPath {
    /// Starts with no verdicts (an earlier agent's are dropped: its decisions are not
    /// known here) and the heartbeat beating.
    pub fn new(parts: Parts<'_>) -> Arc<Self> {
        // Without the liveness socket the kernel ignores every verdict (fail closed):
        // a kernel without sockmap support for listeners (5.10+) keeps the proxy path.
        let alive = parts.enabled
            && match parts.liveness.map(|fd| parts.maps.set_alive(fd)) {
                Some(Ok(())) => true,
                Some(Err(error)) => {
                    crate::features::missing(
                        "kernel_path",
                        "a sockmap holding the agent's listener (Linux 5.10+)",
                        "kernel verdicts are off: every connection takes the proxy path \
                         (proxy.kernel_verdicts)",
                        error,
                    );
                    false
                }
                None => false,
            }
            // A reload must be able to end a live kernel-path connection.
            && match destroy::probe() {
                Ok(()) => true,
                Err(error) => {
                    crate::features::missing(
                        "kernel_path",
                        "SOCK_DESTROY through inet_diag (CONFIG_INET_DIAG_DESTROY, tcp_diag), \
                         so that a reload can end a live kernel-path connection",
                        "kernel verdicts are off: every connection takes the proxy path \
                         (proxy.kernel_verdicts)",
                        error,
                    );
                    false
                }
            };
        let this = Arc::new(Self {
            enabled: alive,
            maps: parts.maps,
            jobs: parts.jobs,
            enforcer: parts.enforcer,
            recorder: parts.recorder,
            gate: parts.gate,
            metrics: parts.metrics,
            proxy_metrics: parts.proxy_metrics,
            policy_metrics: parts.policy_metrics,
            state: Mutex::new(State::default()),
            live: conns::Live::default(),
        });
        if let Err(error) = this.maps.clear() {
            tracing::warn!(%error, "dropping an earlier agent's kernel verdicts");
        }
        this.replan();
        this.beat();
        this
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refreshes the heartbeat, unless recording refuses new connections (strict
    /// recording failing, or the central backlog past `central.max_lag`; then the kernel
    /// path stops until it recovers). Also ends the records of connections whose close was
    /// lost. Called every [`HEARTBEAT_INTERVAL`].
    pub fn beat(&self) {
        if !self.enabled {
            return;
        }
        let refusal = self.gate.refusal();
        let suspend = refusal.is_some();
        let was = std::mem::replace(&mut self.state().suspended, suspend);
        self.metrics.suspended.set(i64::from(suspend));
        let result = if suspend {
            if !was {
                tracing::warn!(
                    why = refusal.unwrap_or_default(),
                    "the kernel path is suspended (every connect goes to the proxy, which \
                     refuses it)"
                );
            }
            self.maps.stop_beating()
        } else {
            if was {
                tracing::info!("recording lets connections through again: the kernel path resumes");
            }
            self.maps.beat()
        };
        if let Err(error) = result {
            tracing::error!(%error, "refreshing the kernel-path heartbeat");
        }
        self.live.sweep_lost(self);
        self.metrics.live.set(self.live.len() as i64);
    }

    /// The heartbeat stops (a clean stop): verdicts stop counting at once.
    pub fn stop(&self) {
        if let Err(error) = self.maps.stop_beating() {
            tracing::warn!(%error, "stopping the kernel-path heartbeat");
        }
    }

    /// After a policy reload: every verdict is dropped, the plan made again, and live
    /// kernel-path connections that the new policy denies are destroyed.
    pub fn reloaded(&self) {
        self.drop_all("reload");
        self.replan();
        let revoked = self.live.revoke_denied(self);
        if revoked > 0 {
            tracing::warn!(
                revoked,
                "policy reload revoked live kernel-path connections"
            );
        }
    }

    /// After a job started, ended or changed identity: its verdicts are dropped where
    /// its principal changed or it is gone, and the plan applied to new jobs.
    pub fn jobs_changed(&self) {
        let mut state = self.state();
        let current = |cgroup_id: u64, job_id: &str, revision: u64| {
            self.jobs
                .resolve(cgroup_id)
                .is_some_and(|job| job.id == job_id && job.revision == revision)
                && self.jobs.get(job_id).is_some()
        };
        let stale: Vec<VerdictKey> = state
            .installed
            .iter()
            .filter(|(key, v)| !current(key.cgroup_id, &v.job_id, v.revision))
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            state.installed.remove(&key);
            if let Err(error) = self.maps.remove(&key) {
                tracing::warn!(%error, "dropping a kernel verdict");
            }
            self.metrics.dropped("job", 1);
        }
        let gone: Vec<u64> = state
            .everything
            .iter()
            .filter(|(cgroup, (job_id, revision))| !current(**cgroup, job_id, *revision))
            .map(|(cgroup, _)| *cgroup)
            .collect();
        for cgroup in gone {
            state.everything.remove(&cgroup);
            if let Err(error) = self.maps.set_job(cgroup, None) {
                tracing::warn!(%error, "dropping a job's kernel verdict");
            }
            self.metrics.dropped("job", 1);
        }
        self.apply_everything(&mut state);
        self.metrics
            .occupancy(state.installed.len(), state.everything.len());
    }

    /// Drops every verdict.
    fn drop_all(&self, reason: &'static str) {
        let mut state = self.state();
        let n = state.installed.len() + state.everything.len();
        state.installed.clear();
        state.everything.clear();
        if let Err(error) = self.maps.clear() {
            tracing::error!(%error, "dropping kernel verdicts");
        }
        self.metrics.dropped(reason, n);
        self.metrics.occupancy(0, 0);
    }

    /// Makes the plan from the policy in force and applies it.
    fn replan(&self) {
        let plan = self.enforcer.snapshot().kernel_plan();
        if let Err(error) = self.maps.replace_nets(&nets::entries(&plan)) {
            tracing::error!(%error, "writing the networks that stay on the proxy path");
        }
        let mut state = self.state();
        state.plan = plan;
        self.apply_everything(&mut state);
        self.metrics
            .occupancy(state.installed.len(), state.everything.len());
    }

    /// Marks every job final for everything where the plan says so.
    fn apply_everything(&self, state: &mut State) {
        if !self.enabled || !state.plan.everything {
            return;
        }
        for job in self.jobs.list() {
            if state.everything.contains_key(&job.cgroup_id) {
                continue;
            }
            match self
                .maps
                .set_job(job.cgroup_id, Some(state.plan.generation))
            {
                Ok(()) => {
                    state
                        .everything
                        .insert(job.cgroup_id, (job.id.clone(), job.revision));
                    self.metrics.installed.inc();
                }
                Err(error) => {
                    tracing::warn!(%error, job = %job.id, "writing a job's kernel verdict")
                }
            }
        }
    }

    /// The proxy decided and connected a connection that it relays at L4: where the
    /// decision is final at connect time, the kernel takes the next connect with its key.
    pub fn offer(
        &self,
        info: &ConnInfo,
        job: &Job,
        destination: SocketAddr,
        hostname: Option<&str>,
        decision: &Decision,
        policy: &Snapshot,
    ) {
        if !self.enabled {
            return;
        }
        if let Err(why) = policy.kernel_final(destination, hostname, decision) {
            self.metrics.declined.inc();
            tracing::debug!(%destination, %why, "connection stays on the proxy path");
            return;
        }
        let key = conns::verdict_key(info);
        let mut state = self.state();
        if state.suspended
            || state.plan.generation != policy.generation()
            || state.plan.blind.is_some()
            || state.installed.contains_key(&key)
        {
            return;
        }
        match self.maps.install(&key, state.plan.generation) {
            Ok(()) => {
                state.installed.insert(
                    key,
                    Installed {
                        decision: decision.clone(),
                        job_id: job.id.clone(),
                        revision: job.revision,
                    },
                );
                self.metrics.installed.inc();
                self.metrics
                    .occupancy(state.installed.len(), state.everything.len());
            }
            // A full map leaves the key on the proxy path.
            Err(error) => tracing::debug!(%error, "installing a kernel verdict"),
        }
    }

    /// The decision recorded for a kernel-path connect with this key, if a verdict
    /// (exact, or its job's) is installed.
    fn decision_for(&self, key: &VerdictKey) -> Option<Decision> {
        let state = self.state();
        if let Some(installed) = state.installed.get(key) {
            return Some(installed.decision.clone());
        }
        state
            .everything
            .contains_key(&key.cgroup_id)
            .then(|| Decision::allow(tollgate_policy::NO_POLICY_REASON))
    }

    /// A kernel-path event from the ring.
    pub fn event(&self, event: &KernelConnEvent) {
        self.live.event(self, event);
    }

    pub fn status(&self) -> KernelStatus {
        // What the kernel holds, not what the agent thinks it wrote.
        let exact = self.maps.verdicts().unwrap_or_default();
        let jobs = self.maps.jobs().unwrap_or_default();
        let state = self.state();
        KernelStatus {
            enabled: self.enabled,
            everything: self.enabled && state.plan.everything,
            blind: state.plan.blind.clone(),
            partial: state.plan.partial.clone(),
            proxied: state
                .plan
                .proxied
                .iter()
                .map(|(net, ports, why)| {
                    let ports = if ports.is_empty() {
                        "any port".to_owned()
                    } else {
                        ports
                            .iter()
                            .map(|r| {
                                if r.first == r.last {
                                    r.first.to_string()
                                } else {
                                    format!("{}-{}", r.first, r.last)
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    format!("{net} ({ports}): {why}")
                })
                .collect(),
            exact_verdicts: exact.len(),
            job_verdicts: jobs.len(),
            hits: exact.iter().map(|(_, v)| v.hits).sum::<u64>()
                + jobs.iter().map(|(_, v)| v.hits).sum::<u64>(),
            live_connections: self.live.len(),
        }
    }
}
