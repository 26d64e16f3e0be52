//! Runner hooks and attestation: which process joins which job, and with what
//! identity. Every decision rests on the kernel's view (SO_PEERCRED, /proc, cgroups),
//! never on what the request claims about processes; every outcome is on the audit trail.
use std::{collections::BTreeMap, sync::Arc};

use crate::{
    identity::{
        Assurance, Identity, IdentityError,
        ancestry::{self, AncestryError},
        oidc::{OidcError, Verifier},
    },
    jobs::{Caller, Job, JobError, JobKind, JobRegistry, NewJob, Owner},
    metrics::{IdentityMetrics, JobEndLabel},
    record::{AuditRecord, RecordEvent, Recorder, now_ms},
};

/// How many of the hook's own processes (between the caller and the worker) are moved
/// back out of a job before it ends.
const MAX_HOOK_CHAIN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("uid {uid} is not a {provider} runner account (identity.{provider}.runner_uids)")]
    NotRunner { uid: u32, provider: &'static str },
    #[error(transparent)]
    Ancestry(#[from] AncestryError),
    #[error("process {pid} is already enrolled in job {job}")]
    AlreadyEnrolled { pid: u32, job: String },
    #[error("process {0} is already in a Tollgate job")]
    AlreadyInJob(u32),
    #[error("Runner.Worker {0} is not enrolled in a job")]
    NotEnrolled(u32),
    #[error("process {0} is not in a Tollgate job: run `tollgate attest` from a job step")]
    NotInJob(u32),
    #[error("job {0} has no CI identity to verify (no provider)")]
    NoIdentity(String),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("OIDC token refused: {0}")]
    Oidc(#[from] OidcError),
    #[error(transparent)]
    Job(#[from] JobError),
}

/// A job a hook enrolled, and why its token (if one came along) was refused.
pub struct Enrolled {
    pub job: Arc<Job>,
    pub attest_error: Option<String>,
}

pub struct Enrollment {
    jobs: Arc<JobRegistry>,
    verifier: Verifier,
    github_uids: Vec<u32>,
    gitlab_uids: Vec<u32>,
    recorder: Recorder,
    metrics: Arc<IdentityMetrics>,
}

impl Enrollment {
    pub fn new(
        jobs: Arc<JobRegistry>,
        verifier: Verifier,
        runner_uids: BTreeMap<&'static str, Vec<u32>>,
        recorder: Recorder,
        metrics: Arc<IdentityMetrics>,
    ) -> Self {
        Self {
            jobs,
            verifier,
            github_uids: runner_uids.get("github").cloned().unwrap_or_default(),
            gitlab_uids: runner_uids.get("gitlab").cloned().unwrap_or_default(),
            recorder,
            metrics,
        }
    }

    /// Puts an outcome on the audit trail and counts it.
    pub fn audit<T>(
        &self,
        action: &'static str,
        caller: Caller,
        result: &Result<T, EnrollError>,
        job_id: Option<&str>,
        detail: String,
    ) {
        let (outcome, detail) = match result {
            Ok(_) => ("ok", detail),
            Err(error) => ("refused", error.to_string()),
        };
        self.metrics.event(action, outcome);
        if outcome == "refused" {
            tracing::warn!(action, caller_pid = caller.pid, caller_uid = caller.uid, %detail, "refused");
        }
        self.recorder.record(RecordEvent::Audit(AuditRecord {
            at: now_ms(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            job_id: job_id.map(str::to_owned),
            caller_pid: caller.pid,
            caller_uid: caller.uid,
            detail,
        }));
    }

    fn check_runner(&self, caller: Caller, provider: &'static str) -> Result<(), EnrollError> {
        let uids = match provider {
            "github" => &self.github_uids,
            _ => &self.gitlab_uids,
        };
        if uids.contains(&caller.uid) {
            Ok(())
        } else {
            Err(EnrollError::NotRunner {
                uid: caller.uid,
                provider,
            })
        }
    }

    /// Creates a hook job for `target` and moves it in.
    fn enroll_process(
        &self,
        target: ancestry::Target,
        caller: Caller,
        identity: Identity,
        kind: JobKind,
    ) -> Result<Arc<Job>, EnrollError> {
        if let Some(job) = self.jobs.owned_by(target.pid, target.start) {
            return Err(EnrollError::AlreadyEnrolled {
                pid: target.pid,
                job: job.id.clone(),
            });
        }
        if self.jobs.in_any_job(target.pid)? {
            return Err(EnrollError::AlreadyInJob(target.pid));
        }
        let origin = self.jobs.cgroup_of(target.pid)?;
        let name = (!identity.job.is_empty()).then(|| identity.job.clone());
        let job = self.jobs.create(
            NewJob {
                labels: BTreeMap::new(),
                name,
                identity,
                kind,
                origin_cgroup: Some(origin),
            },
            Owner {
                pid: target.pid,
                start: target.start,
                uid: caller.uid,
            },
        )?;
        let placed = self.jobs.place(&job, target.pid).and_then(|()| {
            // The pid was checked before the move: make sure it is still the same process.
            if crate::proc_info::is_alive(target.pid, target.start) {
                Ok(())
            } else {
                Err(JobError::Process {
                    pid: target.pid,
                    source: std::io::Error::other("exited during enrolment"),
                })
            }
        });
        if let Err(error) = placed {
            let _ = self.jobs.end(&job.id, None, JobEndLabel::OwnerGone, None);
            return Err(error.into());
        }
        Ok(job)
    }

    /// Verifies a token for a job just enrolled; a refusal leaves it host-asserted.
    fn attest_new(&self, job: Arc<Job>, token: Option<&str>, caller: Caller) -> Enrolled {
        let Some(token) = token else {
            return Enrolled {
                job,
                attest_error: None,
            };
        };
        let result = self.verify(&job, token);
        self.audit(
            "attest",
            caller,
            &result,
            Some(&job.id),
            verified_detail(&result),
        );
        match result {
            Ok(job) => Enrolled {
                job,
                attest_error: None,
            },
            Err(error) => Enrolled {
                job,
                attest_error: Some(error.to_string()),
            },
        }
    }

    fn verify(&self, job: &Job, token: &str) -> Result<Arc<Job>, EnrollError> {
        if job.identity.provider.is_empty() {
            return Err(EnrollError::NoIdentity(job.id.clone()));
        }
        let proven = self.verifier.verify(token, &job.identity)?;
        Ok(self
            .jobs
            .set_identity(&job.id, proven, Assurance::OidcVerified)?)
    }

    /// Puts a hook's outcome for a job on the audit trail.
    fn audit_job(
        &self,
        action: &'static str,
        caller: Caller,
        result: &Result<Arc<Job>, EnrollError>,
    ) {
        let job_id = result.as_ref().ok().map(|j| j.id.as_str());
        self.audit(action, caller, result, job_id, enrolled_detail(result));
    }

    /// The end of a started hook: audit the enrolment, then verify its token, if any.
    fn started(
        &self,
        action: &'static str,
        caller: Caller,
        result: Result<Arc<Job>, EnrollError>,
        token: Option<&str>,
    ) -> Result<Enrolled, EnrollError> {
        self.audit_job(action, caller, &result);
        Ok(self.attest_new(result?, token, caller))
    }

    /// `tollgate hook github job-started`: enrolls the caller's Runner.Worker.
    pub fn github_started(
        &self,
        caller: Caller,
        mut identity: Identity,
        token: Option<String>,
    ) -> Result<Enrolled, EnrollError> {
        let result = (|| {
            self.check_runner(caller, "github")?;
            identity.provider = "github".to_owned();
            require(&identity.repository, "GITHUB_REPOSITORY")?;
            require(&identity.run_id, "GITHUB_RUN_ID")?;
            let worker = ancestry::github_worker(caller.pid, caller.uid)?;
            self.enroll_process(worker, caller, identity, JobKind::GithubHook)
        })();
        self.started("github_job_started", caller, result, token.as_deref())
    }

    /// `tollgate hook github job-completed`: ends the worker's job, sparing the worker
    /// and the hook itself.
    pub fn github_completed(&self, caller: Caller) -> Result<Arc<Job>, EnrollError> {
        let result = (|| {
            self.check_runner(caller, "github")?;
            let worker = ancestry::github_worker(caller.pid, caller.uid)?;
            let job = self
                .jobs
                .owned_by(worker.pid, worker.start)
                .ok_or(EnrollError::NotEnrolled(worker.pid))?;
            let mut keep = vec![worker.pid];
            keep.extend(ancestry::chain(caller.pid, worker.pid, MAX_HOOK_CHAIN));
            self.jobs.complete(&job, &keep)?;
            Ok(job)
        })();
        self.audit_job("github_job_completed", caller, &result);
        result
    }

    /// `tollgate hook gitlab`: enrolls the shell that runs the job's script.
    pub fn gitlab_started(
        &self,
        caller: Caller,
        mut identity: Identity,
        token: Option<String>,
    ) -> Result<Enrolled, EnrollError> {
        let result = (|| {
            self.check_runner(caller, "gitlab")?;
            identity.provider = "gitlab".to_owned();
            require(&identity.repository, "CI_PROJECT_PATH")?;
            require(&identity.run_id, "CI_PIPELINE_ID")?;
            require(&identity.ci_job_id, "CI_JOB_ID")?;
            let shell = ancestry::parent_shell(caller.pid, caller.uid)?;
            self.enroll_process(shell, caller, identity, JobKind::GitlabHook)
        })();
        self.started("gitlab_job_started", caller, result, token.as_deref())
    }

    /// `tollgate attest`: verifies a token for the job the caller is in (as the kernel
    /// sees it).
    pub fn attest(&self, caller: Caller, token: &str) -> Result<Arc<Job>, EnrollError> {
        let job = self.jobs.of_process(caller.pid);
        let job_id = job
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .map(|j| j.id.clone());
        let result = match job {
            Ok(Some(job)) => self.verify(&job, token),
            Ok(None) => Err(EnrollError::NotInJob(caller.pid)),
            Err(error) => Err(error.into()),
        };
        self.audit(
            "attest",
            caller,
            &result,
            job_id.as_deref(),
            verified_detail(&result),
        );
        result
    }
}

fn require(value: &str, name: &'static str) -> Result<(), EnrollError> {
    if value.is_empty() {
        Err(IdentityError::Missing(name).into())
    } else {
        Ok(())
    }
}

fn enrolled_detail(result: &Result<Arc<Job>, EnrollError>) -> String {
    match result {
        Ok(job) => format!("pid {} as {}", job.owner_pid, job.identity.summary()),
        Err(_) => String::new(),
    }
}

fn verified_detail(result: &Result<Arc<Job>, EnrollError>) -> String {
    match result {
        Ok(job) => format!("oidc-verified: {}", job.identity.summary()),
        Err(_) => String::new(),
    }
}
