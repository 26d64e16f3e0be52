//! Jobs: each one a labelled cgroup below the parent, owned by the process that asked
//! for it. The data path looks jobs up by cgroup id without taking a lock.
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tollgate_policy::Principal;

mod adopt;
mod labels;
mod sub_cgroups;

pub use labels::parse_label;
use labels::{validate_labels, validate_name};

use crate::{
    cgroup::{self, CgroupError, CgroupTree},
    identity::{Assurance, Identity},
    metrics::{JobEndLabel, JobMetrics},
    proc_info,
    record::{JobExit, JobRecord, RecordEvent, Recorder, now_ms},
};

/// How long creating a job waits for its record to be committed.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long ending a job waits for its processes to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("invalid label `{key}`: {reason}")]
    InvalidLabel { key: String, reason: &'static str },
    #[error("invalid job name: {0}")]
    InvalidName(&'static str),
    #[error("no active job `{0}`")]
    NotFound(String),
    #[error("job `{0}` belongs to another user")]
    NotOwner(String),
    #[error("process {pid} is not a child of the caller (pid {caller})")]
    NotChild { pid: u32, caller: u32 },
    #[error("process {0} is already in a job")]
    AlreadyInJob(u32),
    #[error("process {pid}: {source}")]
    Process {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

/// How a job came to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// `tollgate run`: the job is the command's process tree.
    #[default]
    Run,
    /// A GitHub Actions runner's job hook enrolled its Runner.Worker.
    GithubHook,
    /// GitLab's `pre_build_script` enrolled the job's shell.
    GitlabHook,
}

impl JobKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Run => "run",
            JobKind::GithubHook => "github-hook",
            JobKind::GitlabHook => "gitlab-hook",
        }
    }

    pub fn parse(text: &str) -> Self {
        match text {
            "github-hook" => JobKind::GithubHook,
            "gitlab-hook" => JobKind::GitlabHook,
            _ => JobKind::Run,
        }
    }
}

/// The process a job belongs to: it ends when this process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub start: u64,
    pub uid: u32,
}

/// What a new job is made of.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub labels: BTreeMap<String, String>,
    pub name: Option<String>,
    pub identity: Identity,
    pub kind: JobKind,
    /// Where an enrolled process goes back to when the job ends (hooks only).
    pub origin_cgroup: Option<PathBuf>,
}

/// Called when the set of jobs or a job's identity changes.
pub type ChangeHook = Box<dyn Fn() + Send + Sync>;

/// A running job, as the data path and the CLI see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub cgroup_id: u64,
    pub cgroup_path: PathBuf,
    pub owner_pid: u32,
    pub owner_start: u64,
    pub owner_uid: u32,
    pub started_at: i64,
    #[serde(default)]
    pub kind: JobKind,
    #[serde(default, skip_serializing_if = "Identity::is_empty")]
    pub identity: Identity,
    #[serde(default)]
    pub assurance: Assurance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_cgroup: Option<PathBuf>,
    /// The job as policy sees it, built once per job rather than per connection.
    #[serde(skip)]
    pub principal: Arc<Principal>,
    /// Changes whenever the principal does: the kernel verdicts written for the job
    /// ([`crate::kernel_path`]) hold only for the revision they were decided under.
    #[serde(skip)]
    pub revision: u64,
}

impl Job {
    /// Fills in the derived principal and shares the job.
    fn finish(mut self) -> Arc<Self> {
        static REVISION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        self.principal = Arc::new(Principal {
            job_id: self.id.clone(),
            labels: self.labels.clone(),
            identity: self.identity.to_map(),
            assurance: self.assurance,
        });
        self.revision = REVISION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Arc::new(self)
    }

    fn record(&self) -> JobRecord {
        JobRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            cgroup_id: self.cgroup_id,
            cgroup_path: self.cgroup_path.display().to_string(),
            owner_pid: self.owner_pid,
            owner_start: self.owner_start,
            owner_uid: self.owner_uid,
            started_at: self.started_at,
            ended_at: None,
            exit: None,
            end_reason: None,
            kind: self.kind,
            identity: self.identity.clone(),
            assurance: self.assurance,
            origin_cgroup: self.origin_cgroup.as_ref().map(|p| p.display().to_string()),
        }
    }
}

/// The caller of a control request, as the kernel reported it (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

pub struct JobRegistry {
    by_cgroup: ArcSwap<HashMap<u64, Arc<Job>>>,
    /// Jobs that ended recently. A job's connections can still wait in the proxy's
    /// accept queue after its command exited; they stay attributed to it. Cgroup ids are
    /// never reused, so this cannot misattribute.
    recently_ended: ArcSwap<HashMap<u64, (Instant, Arc<Job>)>>,
    ended_grace: Duration,
    sub_cgroups: sub_cgroups::SubCgroups,
    /// Jobs whose completion hook ran: they end (as completed) when their owner exits.
    completing: Mutex<std::collections::HashSet<String>>,
    /// The processes last seen in each job (and those placed since): pid -> job id, and
    /// when it was placed (None: seen by the watcher).
    members: Mutex<HashMap<u32, (String, Option<Instant>)>>,
    /// The sockets processes brought into their jobs.
    pub brought: crate::sockets::brought::Brought,
    writer: Mutex<()>,
    /// Called when a job starts or its identity changes (the unix verdicts follow).
    changed: std::sync::RwLock<Vec<ChangeHook>>,
    tree: CgroupTree,
    recorder: Recorder,
    metrics: Arc<JobMetrics>,
}

impl JobRegistry {
    /// `ended_grace`: how long an ended job still owns connections queued before it ended.
    pub fn new(
        tree: CgroupTree,
        recorder: Recorder,
        metrics: Arc<JobMetrics>,
        ended_grace: Duration,
    ) -> Self {
        Self {
            by_cgroup: ArcSwap::from_pointee(HashMap::new()),
            recently_ended: ArcSwap::from_pointee(HashMap::new()),
            ended_grace,
            sub_cgroups: sub_cgroups::SubCgroups::default(),
            completing: Mutex::new(std::collections::HashSet::new()),
            members: Mutex::new(HashMap::new()),
            brought: crate::sockets::brought::Brought::default(),
            writer: Mutex::new(()),
            changed: std::sync::RwLock::new(Vec::new()),
            tree,
            recorder,
            metrics,
        }
    }

    /// The job owning a cgroup id: a lock-free lookup, then (for sub-cgroups a job
    /// created itself) the job cgroup it was found in before, else a walk of the job
    /// cgroups (once per sub-cgroup).
    pub fn resolve(&self, cgroup_id: u64) -> Option<Arc<Job>> {
        if let Some(job) = self.by_job_cgroup(cgroup_id) {
            return Some(job);
        }
        if let Some(job_cgroup) = self.sub_cgroups.job_cgroup(cgroup_id) {
            let job = self.by_job_cgroup(job_cgroup);
            if job.is_none() {
                self.sub_cgroups.forget(cgroup_id);
            }
            return job;
        }
        let job = self.get(&self.tree.find_job_of(cgroup_id)?)?;
        self.sub_cgroups.insert(cgroup_id, job.cgroup_id);
        Some(job)
    }

    /// The job of a job cgroup: active, or ended within the grace period.
    fn by_job_cgroup(&self, cgroup_id: u64) -> Option<Arc<Job>> {
        if let Some(job) = self.by_cgroup.load().get(&cgroup_id) {
            return Some(job.clone());
        }
        self.recently_ended
            .load()
            .get(&cgroup_id)
            .map(|(_, job)| job.clone())
    }

    /// Adds what is called, before anything runs in it, when a job starts or its
    /// identity changes, and after a job ended.
    pub fn on_change(&self, hook: ChangeHook) {
        self.changed
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    fn changed(&self) {
        for hook in self
            .changed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            hook();
        }
    }

    pub fn list(&self) -> Vec<Arc<Job>> {
        let mut jobs: Vec<Arc<Job>> = self.by_cgroup.load().values().cloned().collect();
        jobs.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        jobs
    }

    pub fn get(&self, job_id: &str) -> Option<Arc<Job>> {
        self.by_cgroup
            .load()
            .values()
            .find(|job| job.id == job_id)
            .cloned()
    }

    fn update(&self, change: impl FnOnce(&mut HashMap<u64, Arc<Job>>)) {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut jobs = HashMap::clone(&self.by_cgroup.load());
        change(&mut jobs);
        self.metrics.active.set(jobs.len() as i64);
        self.by_cgroup.store(Arc::new(jobs));
    }

    /// Forgets ended jobs past the grace period, and adds `just_ended`.
    fn update_ended(&self, just_ended: Option<Arc<Job>>) {
        let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = HashMap::clone(&self.recently_ended.load());
        ended.retain(|_, (at, _)| at.elapsed() < self.ended_grace);
        if let Some(job) = just_ended {
            ended.insert(job.cgroup_id, (Instant::now(), job));
        }
        self.recently_ended.store(Arc::new(ended));
    }

    /// The owner of a `tollgate run` job: the caller itself.
    pub fn caller_owner(caller: Caller) -> Result<Owner, JobError> {
        let start = proc_info::start_time(caller.pid).map_err(|source| JobError::Process {
            pid: caller.pid,
            source,
        })?;
        Ok(Owner {
            pid: caller.pid,
            start,
            uid: caller.uid,
        })
    }

    /// Creates a job cgroup for `spec`, owned by `owner`.
    pub fn create(&self, spec: NewJob, owner: Owner) -> Result<Arc<Job>, JobError> {
        validate_labels(&spec.labels)?;
        if let Some(name) = &spec.name {
            validate_name(name)?;
        }
        spec.identity.validate()?;
        let id = uuid::Uuid::now_v7().to_string();
        let (cgroup_path, cgroup_id) = self.tree.create_job(&id)?;
        let job = Job {
            id,
            name: spec.name,
            labels: spec.labels,
            cgroup_id,
            cgroup_path,
            owner_pid: owner.pid,
            owner_start: owner.start,
            owner_uid: owner.uid,
            started_at: now_ms(),
            kind: spec.kind,
            identity: spec.identity,
            assurance: Assurance::HostAsserted,
            origin_cgroup: spec.origin_cgroup,
            principal: Arc::default(),
            revision: 0,
        }
        .finish();
        // On disk before anything runs in it: an agent that crashes right after must
        // find and re-adopt the job, not remove an unknown cgroup.
        if !self
            .recorder
            .record_durably(RecordEvent::JobStarted(job.record()), DURABLE_TIMEOUT)
        {
            tracing::error!(job = %job.id, "the job's record is not on disk yet (recording is failing or slow)");
        }
        self.metrics.started.inc();
        let inserted = job.clone();
        self.update(|jobs| {
            jobs.insert(inserted.cgroup_id, inserted);
        });
        self.changed();
        tracing::info!(job = %job.id, labels = ?job.labels, identity = %job.identity.summary(), cgroup = %job.cgroup_path.display(), "job created");
        Ok(job)
    }

    /// The active job whose owner is this process.
    pub fn owned_by(&self, pid: u32, start: u64) -> Option<Arc<Job>> {
        self.by_cgroup
            .load()
            .values()
            .find(|job| job.owner_pid == pid && job.owner_start == start)
            .cloned()
    }

    /// The active job a process is in, from the kernel's view of its cgroup.
    pub fn of_process(&self, pid: u32) -> Result<Option<Arc<Job>>, JobError> {
        let path = self.absolute(&cgroup::cgroup_of_pid(pid)?);
        let id = match cgroup::cgroup_id(&path) {
            Ok(id) => id,
            Err(_) => return Ok(None),
        };
        Ok(self.resolve(id).filter(|job| self.get(&job.id).is_some()))
    }

    /// The cgroup2 mount the jobs live under.
    pub fn mount(&self) -> &std::path::Path {
        self.tree.mount()
    }

    fn absolute(&self, cgroup: &std::path::Path) -> PathBuf {
        self.tree
            .mount()
            .join(cgroup.strip_prefix("/").unwrap_or(cgroup))
    }

    /// Whether a process is in any job cgroup (or below the job parent at all).
    pub fn in_any_job(&self, pid: u32) -> Result<bool, JobError> {
        let current = self.absolute(&cgroup::cgroup_of_pid(pid)?);
        Ok(current.starts_with(self.tree.parent()))
    }

    /// The cgroup a process is in now (absolute path).
    pub fn cgroup_of(&self, pid: u32) -> Result<PathBuf, JobError> {
        Ok(self.absolute(&cgroup::cgroup_of_pid(pid)?))
    }

    /// Moves a process (all its threads) into a job.
    pub fn place(&self, job: &Job, pid: u32) -> Result<(), JobError> {
        // What it holds before and just after the move is its own (a socket it made
        // in between, outside, would not be redirected either way).
        self.brought.note(&job.cgroup_path, pid);
        cgroup::move_pid(&job.cgroup_path, pid)?;
        self.brought.note(&job.cgroup_path, pid);
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, (job.id.clone(), Some(Instant::now())));
        tracing::info!(job = %job.id, pid, "process enrolled");
        Ok(())
    }

    /// The processes in job cgroups as the watcher found them, reading from `since`:
    /// pid -> job id. A process placed since then stays a member even where the
    /// watcher's reading missed it (it read the job's processes before the move); else
    /// a process that left its job at once would not be known as a job's.
    pub fn set_members(&self, seen: HashMap<u32, String>, since: Instant) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let placed: Vec<(u32, (String, Option<Instant>))> = members
            .drain()
            .filter(|(pid, (_, placed))| {
                !seen.contains_key(pid) && placed.is_some_and(|at| at >= since)
            })
            .collect();
        members.extend(seen.into_iter().map(|(pid, job)| (pid, (job, None))));
        members.extend(placed);
    }

    /// The job a process was last seen in (or placed in), if any.
    pub fn member_of(&self, pid: u32) -> Option<String> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .map(|(job, _)| job.clone())
    }

    /// Replaces a job's identity and assurance (after an OIDC verification).
    pub fn set_identity(
        &self,
        job_id: &str,
        identity: Identity,
        assurance: Assurance,
    ) -> Result<Arc<Job>, JobError> {
        let current = self
            .get(job_id)
            .ok_or_else(|| JobError::NotFound(job_id.to_owned()))?;
        let mut job = Job::clone(&current);
        job.identity = identity;
        job.assurance = assurance;
        let job = job.finish();
        let replaced = job.clone();
        self.update(|jobs| {
            jobs.insert(replaced.cgroup_id, replaced);
        });
        self.changed();
        if !self.recorder.record_durably(
            RecordEvent::JobIdentity {
                id: job.id.clone(),
                identity: job.identity.clone(),
                assurance: job.assurance,
            },
            DURABLE_TIMEOUT,
        ) {
            tracing::error!(job = %job.id, "the job's verified identity is not on disk yet");
        }
        tracing::info!(job = %job.id, identity = %job.identity.summary(), assurance = job.assurance.as_str(), "job identity updated");
        Ok(job)
    }

    /// Hook jobs: the job is over. Everything in it is killed except `keep` (the enrolled
    /// process and the hook's own processes), which stay in the job, intercepted, until
    /// they exit; the job ends as completed when its owner does. Nothing is moved out:
    /// a step that runs the completion hook itself cannot end its own interception.
    pub fn complete(&self, job: &Job, keep: &[u32]) -> Result<usize, JobError> {
        self.completing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.id.clone());
        let mut killed = 0;
        for pid in cgroup::pids(&job.cgroup_path) {
            if !keep.contains(&pid) && crate::proc_info::kill(pid) {
                killed += 1;
            }
        }
        Ok(killed)
    }

    fn owned(&self, job_id: &str, caller: Caller) -> Result<Arc<Job>, JobError> {
        let job = self
            .get(job_id)
            .ok_or_else(|| JobError::NotFound(job_id.to_owned()))?;
        if caller.uid != 0 && caller.uid != job.owner_uid {
            return Err(JobError::NotOwner(job_id.to_owned()));
        }
        Ok(job)
    }

    /// Moves `pid`, a direct child of the caller that is not in a job yet, into the job.
    pub fn enroll(&self, job_id: &str, pid: u32, caller: Caller) -> Result<(), JobError> {
        let job = self.owned(job_id, caller)?;
        let parent =
            proc_info::parent_pid(pid).map_err(|source| JobError::Process { pid, source })?;
        if parent != caller.pid {
            return Err(JobError::NotChild {
                pid,
                caller: caller.pid,
            });
        }
        if self.in_any_job(pid)? {
            return Err(JobError::AlreadyInJob(pid));
        }
        self.place(&job, pid)
    }

    /// Ends a job: kills what is left in its cgroup, removes the cgroup, closes the record.
    pub fn end(
        &self,
        job_id: &str,
        exit: Option<JobExit>,
        reason: JobEndLabel,
        caller: Option<Caller>,
    ) -> Result<(), JobError> {
        let job = match caller {
            Some(caller) => self.owned(job_id, caller)?,
            None => self
                .get(job_id)
                .ok_or_else(|| JobError::NotFound(job_id.to_owned()))?,
        };
        self.completing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.id);
        let result = cgroup::kill_and_remove(&job.cgroup_path, KILL_TIMEOUT);
        // Into the ended map before out of the active one: never in neither.
        self.update_ended(Some(job.clone()));
        self.update(|jobs| {
            jobs.remove(&job.cgroup_id);
        });
        self.recorder.record(RecordEvent::JobEnded {
            id: job.id.clone(),
            ended_at: now_ms(),
            exit,
            reason: reason.as_str().to_owned(),
        });
        self.metrics.ended(reason);
        self.changed();
        tracing::info!(job = %job.id, ?exit, reason = reason.as_str(), "job ended");
        result.map_err(JobError::from)
    }

    /// Ends the jobs whose owner process is gone without having reported an exit, and
    /// forgets jobs that ended longer than the grace period ago.
    pub fn reap(&self) {
        if self
            .recently_ended
            .load()
            .values()
            .any(|(at, _)| at.elapsed() >= self.ended_grace)
        {
            self.update_ended(None);
        }
        for job in self.list() {
            if !proc_info::is_alive(job.owner_pid, job.owner_start) {
                let completed = self
                    .completing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&job.id);
                let reason = if completed {
                    tracing::info!(job = %job.id, "completed job's owner exited; ending job");
                    JobEndLabel::Completed
                } else {
                    tracing::warn!(job = %job.id, owner = job.owner_pid, "job owner is gone; ending job");
                    JobEndLabel::OwnerGone
                };
                if let Err(error) = self.end(&job.id, None, reason, None) {
                    tracing::error!(job = %job.id, %error, "ending job");
                }
            }
        }
    }
}
