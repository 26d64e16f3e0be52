//! Answers control requests: jobs, enrolment hooks, attestation, sessions, events, DNS
//! queries, the audit trail and status.
use std::sync::{Arc, Mutex};

use crate::{
    bpf::{self, ConnMaps},
    control::{Handler, PolicyStatus, Request, Response, Status},
    enforce::Enforcer,
    enroll::{Enrolled, Enrollment},
    jobs::{Caller, Job, JobRegistry, NewJob},
    metrics::JobEndLabel,
    record::{self, Recorder, Store},
};

pub(super) struct StatusBase {
    pub(super) proxy_port: u16,
    pub(super) attachment: &'static str,
    pub(super) cgroup_parent: String,
    pub(super) pin_dir: String,
    pub(super) coverage: bpf::Coverage,
}

/// Answers control requests.
pub(super) struct AgentControl {
    pub(super) enrollment: Enrollment,
    pub(super) jobs: Arc<JobRegistry>,
    pub(super) enforcer: Arc<Enforcer>,
    pub(super) store: Mutex<Store>,
    pub(super) maps: Arc<ConnMaps>,
    pub(super) recorder: Recorder,
    pub(super) status: StatusBase,
    pub(super) kernel: Arc<crate::kernel_path::KernelPath>,
    pub(super) approvals: Arc<crate::approvals::Approvals>,
    /// Decisions on other hosts' requests, through the central store.
    pub(super) fleet: Option<crate::central::fleet::FleetHandle>,
}

fn error(message: impl std::fmt::Display) -> Response {
    Response::Error {
        message: message.to_string(),
    }
}

impl AgentControl {
    fn answer(&self, caller: Caller, request: Request) -> Response {
        match request {
            Request::CreateJob {
                labels,
                name,
                identity,
            } => {
                let spec = NewJob {
                    labels,
                    name,
                    identity: identity.unwrap_or_default(),
                    ..NewJob::default()
                };
                match JobRegistry::caller_owner(caller).and_then(|o| self.jobs.create(spec, o)) {
                    Ok(job) => Response::Job(Job::clone(&job)),
                    Err(e) => error(e),
                }
            }
            Request::EnrollPid { job_id, pid } => {
                let result = self
                    .jobs
                    .enroll(&job_id, pid, caller)
                    .map_err(crate::enroll::EnrollError::from);
                self.enrollment.audit(
                    "enroll",
                    caller,
                    &result,
                    Some(&job_id),
                    format!("pid {pid}"),
                );
                match result {
                    Ok(()) => Response::Done,
                    Err(e) => error(e),
                }
            }
            Request::GithubJobStarted { identity, token } => {
                enrolled(self.enrollment.github_started(caller, identity, token))
            }
            Request::GitlabJobStarted { identity, token } => {
                enrolled(self.enrollment.gitlab_started(caller, identity, token))
            }
            Request::GithubJobCompleted {} => match self.enrollment.github_completed(caller) {
                Ok(job) => Response::Job(Job::clone(&job)),
                Err(e) => error(e),
            },
            Request::Attest { token } => match self.enrollment.attest(caller, &token) {
                Ok(job) => Response::Job(Job::clone(&job)),
                Err(e) => error(e),
            },
            Request::ListAudit { limit } => {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                match store.audit(limit) {
                    Ok(entries) => Response::Audit { entries },
                    Err(e) => error(e),
                }
            }
            Request::EndJob { job_id, exit } => {
                match self
                    .jobs
                    .end(&job_id, exit, JobEndLabel::Exited, Some(caller))
                {
                    Ok(()) => Response::Done,
                    Err(e) => error(e),
                }
            }
            Request::ListJobs {} => Response::Jobs {
                jobs: self.jobs.list().iter().map(|j| Job::clone(j)).collect(),
            },
            Request::ListSessions { job_id, limit } => {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                match store.list_connections(job_id.as_deref(), limit) {
                    Ok(sessions) => Response::Sessions { sessions },
                    Err(e) => error(e),
                }
            }
            Request::ShowSession { id } => {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                match store.connection(&id) {
                    Ok(session) => Response::Session(Box::new(session)),
                    Err(e) => error(e),
                }
            }
            Request::Status {} => Response::Status(Status {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                proxy_port: self.status.proxy_port,
                attachment: self.status.attachment.to_owned(),
                cgroup_parent: self.status.cgroup_parent.clone(),
                pin_dir: self.status.pin_dir.clone(),
                active_jobs: self.jobs.list().len(),
                maps: self.maps.occupancy().ok(),
                recording_healthy: self.recorder.is_healthy(),
                policy: PolicyStatus {
                    configured: self.enforcer.configured(),
                    dir: self.enforcer.dir().display().to_string(),
                    mode: format!("{:?}", self.enforcer.mode()).to_lowercase(),
                    policies: self.enforcer.policy_count(),
                    generation: self.enforcer.generation(),
                },
                coverage: self.status.coverage,
                kernel_path: self.kernel.status(),
                kernel: crate::features::report(),
                kernel_log: self.maps.kernel_log().ok(),
            }),
            Request::SetKernelLog { level } => match self.maps.set_kernel_log(level) {
                Ok(previous) => {
                    tracing::info!(uid = caller.uid, %previous, %level, "kernel log switched");
                    Response::KernelLog { previous, level }
                }
                Err(e) => error(e),
            },
            Request::ListDns { job_id, limit } => {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                match store.dns(job_id.as_deref(), limit) {
                    Ok(queries) => Response::Dns { queries },
                    Err(e) => error(e),
                }
            }
            Request::ListUnix { job_id, limit } => {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                match store.unix_connects(job_id.as_deref(), limit) {
                    Ok(connects) => Response::Unix { connects },
                    Err(e) => error(e),
                }
            }
            Request::ListUdpFlows { job_id, limit } => {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                match store.udp_flows(job_id.as_deref(), limit) {
                    Ok(flows) => Response::UdpFlows { flows },
                    Err(e) => error(e),
                }
            }
            Request::ListApprovals { .. }
            | Request::ShowApproval { .. }
            | Request::DecideApproval { .. }
            | Request::DecideApprovalFor { .. }
            | Request::RevokeGrantFor { .. }
            | Request::RevokeGrant { .. } => self.approvals(caller, request),
            Request::ListEvents { job_id, limit } => {
                let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                match store.events(job_id.as_deref(), limit) {
                    Ok(events) => Response::Events { events },
                    Err(e) => error(e),
                }
            }
        }
    }
}

impl AgentControl {
    /// A decision on another host's request, audited here as well as there.
    fn fleet_decide(
        &self,
        caller: Caller,
        decider: Result<crate::approvals::Decider, crate::approvals::ApprovalError>,
        id: &str,
        verdict: crate::approvals::Verdict,
    ) -> Response {
        let action = match verdict {
            crate::approvals::Verdict::Approve { .. } => "approval_approve",
            crate::approvals::Verdict::Deny { .. } => "approval_deny",
        };
        let result = match (decider, &self.fleet) {
            (Err(e), _) => Err(e.to_string()),
            (Ok(decider), Some(fleet)) => fleet.decide(decider, id, verdict),
            (Ok(_), None) => Err("no central store".to_owned()),
        };
        let (outcome, detail) = match &result {
            Ok(record) => (
                "ok",
                format!(
                    "fleet request {id}: {}",
                    record.state.map_or("pending", |s| s.as_str())
                ),
            ),
            Err(why) => ("refused", format!("fleet request {id}: {why}")),
        };
        self.recorder
            .record(record::RecordEvent::Audit(record::AuditRecord {
                at: record::now_ms(),
                action: action.to_owned(),
                outcome: outcome.to_owned(),
                job_id: None,
                caller_pid: caller.pid,
                caller_uid: caller.uid,
                detail,
            }));
        match result {
            Ok(record) => Response::Approval(Box::new(record)),
            Err(why) => error(why),
        }
    }

    /// Approval requests: listed, shown and decided by reviewers.
    fn approvals(&self, caller: Caller, request: Request) -> Response {
        let approvals = &self.approvals;
        let store = || {
            // Decisions are written by the writer thread: the store shows them once
            // committed.
            self.recorder.flush(std::time::Duration::from_secs(2));
            self.store.lock().unwrap_or_else(|e| e.into_inner())
        };
        match request {
            // A request this agent does not hold may be another host's: decided through
            // the central store (this host's reviewers, this host's signature).
            Request::DecideApproval { id, verdict }
                if approvals.waiting(&id).is_none() && self.fleet.is_some() =>
            {
                self.fleet_decide(caller, approvals.reviewer(caller), &id, verdict)
            }
            Request::DecideApprovalFor {
                id,
                verdict,
                reviewer,
            } if approvals.waiting(&id).is_none() && self.fleet.is_some() => {
                let decider = crate::approvals::Decider::console(&reviewer);
                self.fleet_decide(caller, Ok(decider), &id, verdict)
            }
            Request::DecideApprovalFor {
                id,
                verdict,
                reviewer,
            } => match approvals.decide_for_console(caller, &reviewer, &id, verdict) {
                Ok(record) => Response::Approval(Box::new(record)),
                Err(e) => error(e),
            },
            Request::DecideApproval { id, verdict } => {
                match approvals.decide(caller, &id, verdict) {
                    Ok(record) => Response::Approval(Box::new(record)),
                    Err(e) => error(e),
                }
            }
            Request::RevokeGrantFor { id, reviewer } => {
                match approvals.revoke_for_console(caller, &reviewer, &id) {
                    Ok(grant) => Response::Grant(Box::new(grant)),
                    Err(e) => error(e),
                }
            }
            Request::RevokeGrant { id } => match approvals.revoke(caller, &id) {
                Ok(grant) => Response::Grant(Box::new(grant)),
                Err(e) => error(e),
            },
            _ if !approvals.may_review(caller) => {
                let message = format!("uid {} is not a reviewer (approvals.reviewers)", caller.uid);
                self.refused(caller, request.op(), &message);
                error(message)
            }
            Request::ListApprovals { pending: true, .. } => Response::Approvals {
                approvals: approvals.pending(),
                grants: approvals.grants(),
            },
            Request::ListApprovals { limit, .. } => {
                let live = approvals.pending();
                match store().approvals(false, limit) {
                    Ok(mut stored) => {
                        // The live requests carry their approvals so far.
                        for record in &mut stored {
                            if let Some(now) = live.iter().find(|l| l.id == record.id) {
                                *record = now.clone();
                            }
                        }
                        Response::Approvals {
                            approvals: stored,
                            grants: approvals.grants(),
                        }
                    }
                    Err(e) => error(e),
                }
            }
            Request::ShowApproval { id } => match approvals.waiting(&id) {
                Some(record) => Response::Approval(Box::new(record)),
                None => match store().approval(&id) {
                    Ok(Some(record)) => Response::Approval(Box::new(record)),
                    Ok(None) => error(format!("no approval request {id}")),
                    Err(e) => error(e),
                },
            },
            _ => error("not an approvals request"),
        }
    }
}

fn enrolled(result: Result<Enrolled, crate::enroll::EnrollError>) -> Response {
    match result {
        Ok(Enrolled { job, attest_error }) => Response::Enrolled {
            job: Job::clone(&job),
            attest_error,
        },
        Err(e) => error(e),
    }
}

impl Handler for AgentControl {
    fn refused(&self, caller: Caller, op: &'static str, message: &str) {
        self.recorder
            .record(record::RecordEvent::Audit(record::AuditRecord {
                at: record::now_ms(),
                action: "control".to_owned(),
                outcome: "refused".to_owned(),
                job_id: None,
                caller_pid: caller.pid,
                caller_uid: caller.uid,
                detail: format!("{op}: {message}"),
            }));
    }

    async fn handle(self: Arc<Self>, caller: Caller, request: Request) -> Response {
        // Jobs and the store do blocking IO (cgroupfs, SQLite): keep it off the runtime.
        match tokio::task::spawn_blocking(move || self.answer(caller, request)).await {
            Ok(response) => response,
            Err(e) => error(format!("internal error: {e}")),
        }
    }
}
