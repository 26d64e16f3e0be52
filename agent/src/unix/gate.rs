//! The gate: computes the kernel's unix verdicts from policy, and records what the
//! kernel reports.
//!
//! The kernel cannot wait for the agent, so every verdict is in place before a job
//! asks: host-wide (cgroup id 0) for container-engine sockets, and per job cgroup where
//! the job's decision differs from that default. The paths ruled are the well-known
//! engine sockets, the configured ones, every unix socket bound on the host (read again
//! every `refresh_interval`, and when a job starts) and every path a job has used. A
//! path in no rule is allowed; its first report has it decided at once, so later
//! connects follow the policy.
//!
//! The kernel sees the path as the job spelled it. A job that reaches a denied socket by
//! another path (a symlink, a hard link, a relative or bind-mounted path) is found from
//! the report, which names the file the path reaches, and killed.
use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use tollgate_common::{UNIX_ALLOW, UNIX_AUDIT, UNIX_DENY, UnixEvent, UnixKey};
use tollgate_policy::{Decision, Effect, Mode, unix::UnixSocket};

use super::{UnixConfig, UnixMetrics, paths};
use crate::{
    bpf::UnixRules,
    enforce::{Enforcer, Snapshot},
    jobs::JobRegistry,
    record::DecisionLabel,
    record::{self, EventRecord, RecordEvent, Recorder, UnixRecord},
};

/// Paths remembered from reports, at most.
const MAX_SEEN: usize = 4_096;

pub struct Gate {
    config: UnixConfig,
    rules: UnixRules,
    jobs: Arc<JobRegistry>,
    enforcer: Arc<Enforcer>,
    recorder: Recorder,
    metrics: Arc<UnixMetrics>,
    job_metrics: Arc<crate::metrics::JobMetrics>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The policy generation the cached decisions are of.
    generation: u64,
    /// (job id, its principal, path) -> the kernel verdict of the job's decision. The
    /// principal (by address) changes when the job's identity does.
    decided: HashMap<(String, usize, String), u32>,
    /// Paths jobs used that are in no other source.
    seen: BTreeSet<String>,
    /// Sub-cgroups of jobs seen in reports: job id -> cgroup ids.
    sub_cgroups: HashMap<String, BTreeSet<u64>>,
    /// The files of denied paths, per cgroup id (0: host-wide): (dev, ino) -> path.
    denied_files: HashMap<u64, HashMap<(u64, u64), String>>,
}

/// The kernel verdict of a decision.
fn verdict(decision: &Decision) -> u32 {
    if decision.blocks() {
        UNIX_DENY
    } else if decision.effect != Effect::Allow {
        UNIX_AUDIT
    } else {
        UNIX_ALLOW
    }
}

impl Gate {
    pub fn new(
        config: UnixConfig,
        rules: UnixRules,
        jobs: Arc<JobRegistry>,
        enforcer: Arc<Enforcer>,
        recorder: Recorder,
        metrics: Arc<UnixMetrics>,
        job_metrics: Arc<crate::metrics::JobMetrics>,
    ) -> Self {
        Self {
            config,
            rules,
            jobs,
            enforcer,
            recorder,
            metrics,
            job_metrics,
            state: Mutex::new(State::default()),
        }
    }

    pub fn refresh_interval(&self) -> std::time::Duration {
        self.config.refresh_interval
    }

    fn engine_of(&self, path: &str) -> Option<String> {
        paths::engine_of(path, &self.config.engine_sockets).map(str::to_owned)
    }

    /// The verdict of a path for a cgroup in no job rule.
    fn host_verdict(&self, policy: &Snapshot, path: &str) -> u32 {
        match self.engine_of(path) {
            Some(_) if policy.mode() == Mode::Audit => UNIX_AUDIT,
            Some(_) => UNIX_DENY,
            None => UNIX_ALLOW,
        }
    }

    fn decide(
        &self,
        policy: &Snapshot,
        principal: &tollgate_policy::Principal,
        path: &str,
    ) -> Decision {
        let engine = self.engine_of(path);
        let socket = UnixSocket {
            path,
            engine: engine.as_deref(),
        };
        policy.decide_unix(principal, socket)
    }

    /// Computes every verdict again (decisions are cached per policy generation) and
    /// makes the kernel's map hold them.
    pub fn refresh(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let policy = self.enforcer.snapshot();
        let generation = policy.generation();
        if state.generation != generation {
            state.decided.clear();
            state.generation = generation;
        }
        let mut candidates: BTreeSet<String> = paths::WELL_KNOWN
            .iter()
            .map(|(p, _)| (*p).to_owned())
            .chain(self.config.engine_sockets.iter().map(|e| e.path.clone()))
            .chain(paths::bound())
            .collect();
        candidates.extend(state.seen.iter().cloned());
        let jobs = self.jobs.list();
        let live: BTreeSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        state
            .decided
            .retain(|(job, _, _), _| live.contains(job.as_str()));
        state
            .sub_cgroups
            .retain(|job, _| live.contains(job.as_str()));
        let mut wanted: HashMap<UnixKey, u32> = HashMap::new();
        let mut denied_files: HashMap<u64, HashMap<(u64, u64), String>> = HashMap::new();
        for path in &candidates {
            // The file behind a denied path, stat'ed at most once per refresh.
            let file = std::cell::OnceCell::new();
            let file = || *file.get_or_init(|| paths::identity(std::path::Path::new(path)));
            let host = self.host_verdict(&policy, path);
            if host != UNIX_ALLOW
                && let Some(key) = paths::key(0, path)
            {
                wanted.insert(key, host);
                if host == UNIX_DENY
                    && let Some(file) = file()
                {
                    denied_files
                        .entry(0)
                        .or_default()
                        .insert(file, path.clone());
                }
            }
            for job in &jobs {
                let principal = Arc::as_ptr(&job.principal) as usize;
                let cache_key = (job.id.clone(), principal, path.clone());
                let v = match state.decided.get(&cache_key) {
                    Some(v) => *v,
                    None => {
                        let v = verdict(&self.decide(&policy, &job.principal, path));
                        state.decided.insert(cache_key, v);
                        v
                    }
                };
                let cgroups = std::iter::once(job.cgroup_id).chain(
                    state
                        .sub_cgroups
                        .get(&job.id)
                        .into_iter()
                        .flatten()
                        .copied(),
                );
                for cgroup in cgroups {
                    if v != host
                        && let Some(key) = paths::key(cgroup, path)
                    {
                        wanted.insert(key, v);
                    }
                    if v == UNIX_DENY
                        && let Some(file) = file()
                    {
                        denied_files
                            .entry(cgroup)
                            .or_default()
                            .insert(file, path.clone());
                    }
                }
            }
        }
        state.denied_files = denied_files;
        if let Err(error) = self.rules.replace(&wanted) {
            tracing::error!(%error, "cannot write the unix socket verdicts to the kernel");
        }
    }

    /// One report of the kernel: recorded on its job, and acted on where the kernel's
    /// verdict was not the policy's (a path in no rule yet) or the path reached a denied
    /// socket by another name.
    pub fn reported(&self, event: &UnixEvent) {
        let path = paths::display(&event.addr);
        let cgroup_id = event.addr.cgroup_id;
        let job = self.jobs.resolve(cgroup_id);
        let engine = self.engine_of(&path);
        let policy = self.enforcer.snapshot();
        let decision = match &job {
            Some(job) => self.decide(&policy, &job.principal, &path),
            None => tollgate_policy::unix::without_policy(UnixSocket {
                path: &path,
                engine: engine.as_deref(),
            }),
        };
        let applied = event.verdict;
        let wanted = verdict(&decision);
        let mut reason = decision.reason.clone();
        if applied != wanted {
            reason = format!(
                "{reason}; the kernel {} this one because the path had no verdict for the \
                 job yet; later ones follow this decision",
                if applied == UNIX_DENY {
                    "refused"
                } else {
                    "allowed"
                }
            );
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.seen.len() < MAX_SEEN {
                state.seen.insert(path.clone());
            }
            if let Some(job) = &job
                && job.cgroup_id != cgroup_id
            {
                state
                    .sub_cgroups
                    .entry(job.id.clone())
                    .or_default()
                    .insert(cgroup_id);
            }
            drop(state);
            self.refresh();
        }
        let label = match applied {
            UNIX_DENY => DecisionLabel::Deny,
            UNIX_AUDIT => DecisionLabel::WouldDeny,
            _ => DecisionLabel::Allow,
        };
        self.metrics.connect(label, engine.is_some());
        let comm = tollgate_common::convert::comm(&event.comm);
        let exe = crate::proc_info::exe(event.tgid).map(|p| p.display().to_string());
        let at = record::now_ms() - age_ms(event.ktime_ns);
        if applied == UNIX_DENY {
            tracing::warn!(
                job = job.as_ref().map(|j| j.id.as_str()),
                pid = event.tgid,
                comm,
                path,
                reason,
                "unix connect refused"
            );
        }
        if applied != UNIX_DENY && job.is_some() {
            self.check_alias(event, &path, job.as_ref().map(|j| j.id.as_str()));
        }
        self.recorder.record(RecordEvent::Unix(Box::new(UnixRecord {
            job_id: job.as_ref().map(|j| j.id.clone()),
            cgroup_id,
            path,
            engine,
            send: event.send != 0,
            decision: label,
            policy_ids: decision.policy_ids,
            reason,
            first_at: at,
            last_at: at,
            connects: 1,
            pid: event.tgid,
            uid: event.uid,
            comm,
            exe,
        })));
    }

    /// A path the kernel allowed that reaches the file of a denied one: its process is
    /// killed and recorded.
    fn check_alias(&self, event: &UnixEvent, path: &str, job_id: Option<&str>) {
        let Some(file) = paths::reached_by(event.tgid, path) else {
            return;
        };
        let denied = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let job = job_id.and_then(|id| self.jobs.get(id));
            let job_cgroup = job.as_ref().map_or(event.addr.cgroup_id, |j| j.cgroup_id);
            let principal = job
                .as_ref()
                .map_or(0, |j| Arc::as_ptr(&j.principal) as usize);
            // A job rule overrides the host-wide one: a permitted engine socket is not
            // an alias of a denied one.
            match state
                .denied_files
                .get(&job_cgroup)
                .and_then(|m| m.get(&file))
            {
                Some(p) => Some(p.clone()),
                None => {
                    let host = state.denied_files.get(&0).and_then(|m| m.get(&file));
                    host.filter(|p| {
                        let key = (job_id.unwrap_or("").to_owned(), principal, (*p).clone());
                        state.decided.get(&key).is_none_or(|v| *v == UNIX_DENY)
                    })
                    .cloned()
                }
            }
        };
        let Some(denied) = denied else {
            return;
        };
        if denied == path {
            return;
        }
        let killed = crate::proc_info::kill(event.tgid);
        self.metrics.aliases.inc();
        crate::events::record_event(
            &self.recorder,
            &self.job_metrics,
            EventRecord {
                at: record::now_ms(),
                kind: "unix_alias".to_owned(),
                job_id: job_id.map(str::to_owned),
                cgroup_id: event.addr.cgroup_id,
                pid: event.tgid,
                tid: event.tid,
                uid: event.uid,
                gid: event.gid,
                comm: tollgate_common::convert::comm(&event.comm),
                exe: crate::proc_info::exe(event.tgid).map(|p| p.display().to_string()),
                action: if killed { "killed" } else { "kill_failed" }.to_owned(),
                detail: format!("reached {denied}, which is denied, by way of {path}"),
            },
        );
    }
}

/// How long ago a kernel timestamp (CLOCK_MONOTONIC) was, in ms.
fn age_ms(ktime_ns: u64) -> i64 {
    let now_ns = crate::bpf::monotonic_ns();
    i64::try_from(now_ns.saturating_sub(ktime_ns) / 1_000_000).unwrap_or(0)
}
