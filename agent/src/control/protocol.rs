//! Requests and replies of the control socket.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    bpf::{Coverage, MapOccupancy},
    identity::Identity,
    jobs::Job,
    record::{AuditRecord, ConnectionRecord, DnsRecord, EventRecord, JobExit, UdpFlowRecord},
};

/// Largest request line accepted.
pub const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Create a job cgroup owned by the caller.
    CreateJob {
        labels: BTreeMap<String, String>,
        name: Option<String>,
        /// From `--identity-file` (host-asserted).
        #[serde(default)]
        identity: Option<Identity>,
    },
    /// GitHub Actions job-started hook: enroll the caller's Runner.Worker ancestor.
    GithubJobStarted {
        identity: Identity,
        token: Option<String>,
    },
    /// GitHub Actions job-completed hook: end the caller's Runner.Worker's job.
    GithubJobCompleted {},
    /// GitLab `pre_build_script`: enroll the caller's parent shell.
    GitlabJobStarted {
        identity: Identity,
        token: Option<String>,
    },
    /// Verify an OIDC token for the job the caller runs in.
    Attest {
        token: String,
    },
    /// The audit trail, newest first.
    ListAudit {
        limit: u32,
    },
    /// Place a child process of the caller into the caller's job.
    EnrollPid {
        job_id: String,
        pid: u32,
    },
    /// The job's command ended: kill leftovers, remove the cgroup, close the record.
    EndJob {
        job_id: String,
        exit: Option<JobExit>,
    },
    ListJobs {},
    ListSessions {
        job_id: Option<String>,
        limit: u32,
    },
    ShowSession {
        id: String,
    },
    /// What the kernel refused or saw in jobs, newest first.
    ListEvents {
        job_id: Option<String>,
        limit: u32,
    },
    /// Jobs' DNS queries, newest first.
    ListDns {
        job_id: Option<String>,
        limit: u32,
    },
    /// Jobs' UDP flows, newest first.
    ListUdpFlows {
        job_id: Option<String>,
        limit: u32,
    },
    ListUnix {
        job_id: Option<String>,
        limit: u32,
    },
    Status {},
    /// Approval requests (newest first; only pending ones if `pending`) and the grants
    /// in force (reviewers only).
    ListApprovals {
        pending: bool,
        limit: u32,
    },
    ShowApproval {
        id: String,
    },
    /// A reviewer approves or denies a pending request.
    DecideApproval {
        id: String,
        verdict: crate::approvals::Verdict,
    },
    /// The review console brings a decision of a reviewer signed in with OIDC
    /// (operators only: the console vouches for the reviewer).
    DecideApprovalFor {
        id: String,
        verdict: crate::approvals::Verdict,
        reviewer: crate::approvals::ConsoleReviewer,
    },
    /// The review console brings an admin's revocation of a grant (operators only).
    RevokeGrantFor {
        id: String,
        reviewer: crate::approvals::ConsoleReviewer,
    },
    /// A reviewer ends a grant.
    RevokeGrant {
        id: String,
    },
    /// Switches the eBPF programs' rare-event log while they run (operators only).
    SetKernelLog {
        level: crate::bpf::KernelLog,
    },
}

impl Request {
    /// Bounded label value for metrics.
    pub const fn op(&self) -> &'static str {
        match self {
            Request::CreateJob { .. } => "create_job",
            Request::EnrollPid { .. } => "enroll_pid",
            Request::EndJob { .. } => "end_job",
            Request::ListJobs {} => "list_jobs",
            Request::ListSessions { .. } => "list_sessions",
            Request::ShowSession { .. } => "show_session",
            Request::ListEvents { .. } => "list_events",
            Request::ListDns { .. } => "list_dns",
            Request::ListUdpFlows { .. } => "list_udp_flows",
            Request::ListUnix { .. } => "list_unix",
            Request::Status {} => "status",
            Request::SetKernelLog { .. } => "set_kernel_log",
            Request::GithubJobStarted { .. } => "github_job_started",
            Request::GithubJobCompleted {} => "github_job_completed",
            Request::GitlabJobStarted { .. } => "gitlab_job_started",
            Request::Attest { .. } => "attest",
            Request::ListAudit { .. } => "list_audit",
            Request::ListApprovals { .. } => "list_approvals",
            Request::ShowApproval { .. } => "show_approval",
            Request::DecideApproval { .. } => "decide_approval",
            Request::DecideApprovalFor { .. } => "decide_approval_for",
            Request::RevokeGrant { .. } => "revoke_grant",
            Request::RevokeGrantFor { .. } => "revoke_grant_for",
        }
    }

    /// Whether the request is for operators (root and `control.allowed_*`) only. Runner
    /// hooks and attestation are open at the socket: the agent checks runner accounts,
    /// process ancestry and tokens itself, and records every refusal. Approvals are
    /// for `approvals.reviewers`, whom the agent checks itself.
    pub const fn operator_only(&self) -> bool {
        !matches!(
            self,
            Request::GithubJobStarted { .. }
                | Request::GithubJobCompleted {}
                | Request::GitlabJobStarted { .. }
                | Request::Attest { .. }
                | Request::ListApprovals { .. }
                | Request::ShowApproval { .. }
                | Request::DecideApproval { .. }
                | Request::RevokeGrant { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub proxy_port: u16,
    pub attachment: String,
    pub cgroup_parent: String,
    pub pin_dir: String,
    pub active_jobs: usize,
    pub maps: Option<MapOccupancy>,
    pub recording_healthy: bool,
    pub policy: PolicyStatus,
    /// What interception covers on this kernel.
    pub coverage: Coverage,
    /// Which connections the kernel takes straight to their destination, and why not.
    #[serde(default)]
    pub kernel_path: crate::kernel_path::KernelStatus,
    /// The kernel's release, and what of it the agent runs without (and why).
    #[serde(default)]
    pub kernel: crate::features::KernelReport,
    /// Which rare events the eBPF programs log now (None if the setting is unreadable).
    #[serde(default)]
    pub kernel_log: Option<crate::bpf::KernelLog>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// False when the policy directory does not exist (everything is allowed).
    pub configured: bool,
    pub dir: String,
    pub mode: String,
    pub policies: usize,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Job(Job),
    /// A hook enrolled a job; `attest_error` says why its token (if any) was refused.
    Enrolled {
        job: Job,
        attest_error: Option<String>,
    },
    Jobs {
        jobs: Vec<Job>,
    },
    Audit {
        entries: Vec<AuditRecord>,
    },
    Sessions {
        sessions: Vec<ConnectionRecord>,
    },
    Session(Box<ConnectionRecord>),
    Events {
        events: Vec<EventRecord>,
    },
    Dns {
        queries: Vec<DnsRecord>,
    },
    UdpFlows {
        flows: Vec<UdpFlowRecord>,
    },
    Unix {
        connects: Vec<crate::record::UnixRecord>,
    },
    Status(Status),
    Approvals {
        approvals: Vec<crate::approvals::ApprovalRecord>,
        grants: Vec<crate::approvals::Grant>,
    },
    Approval(Box<crate::approvals::ApprovalRecord>),
    Grant(Box<crate::approvals::Grant>),
    /// The kernel log was switched from `previous` to `level`.
    KernelLog {
        previous: crate::bpf::KernelLog,
        level: crate::bpf::KernelLog,
    },
    Done,
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        let request = Request::CreateJob {
            labels: [("repo".to_owned(), "acme/api".to_owned())].into(),
            name: None,
            identity: None,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(text.contains("\"op\":\"create_job\""), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let end = Request::EndJob {
            job_id: "j".to_owned(),
            exit: Some(JobExit::Signal(9)),
        };
        let text = serde_json::to_string(&end).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), end);
    }

    #[test]
    fn unknown_ops_are_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"drop_tables"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"list_jobs","x":1}"#).is_err());
        let old_client = r#"{"op":"create_job","labels":{},"name":null}"#;
        assert!(serde_json::from_str::<Request>(old_client).is_ok());
        assert!(
            !Request::Attest {
                token: "t".to_owned()
            }
            .operator_only()
        );
        assert!(Request::ListJobs {}.operator_only());
    }
}
