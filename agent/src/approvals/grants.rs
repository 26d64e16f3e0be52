//! Grants: approvals with a scope wider than the one request. `job` covers the same
//! statement shape (constants removed) on the same target from the same job, until the
//! job ends; a duration covers the same shape and target for the same repository and
//! workflow until it expires.
use std::{
    fmt,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::ApprovalRecord;
use crate::record::now_ms;

/// How far an approval reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantScope {
    Once,
    Job,
    For(Duration),
}

#[derive(Debug, thiserror::Error)]
#[error("scope {0:?}: expected once, job or a duration such as 30m")]
pub struct ScopeError(String);

impl GrantScope {
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        match text.trim() {
            "once" => Ok(Self::Once),
            "job" => Ok(Self::Job),
            other => match humantime::parse_duration(other) {
                Ok(d) if !d.is_zero() => Ok(Self::For(d)),
                _ => Err(ScopeError(text.to_owned())),
            },
        }
    }
}

impl GrantScope {
    /// Whether this scope is no wider than every cap in `caps` (comma-separated
    /// `@approval_scope` values): `once` allows only once; `job` allows once and job; a
    /// duration allows once, job and durations up to it. A cap that does not parse
    /// allows only once.
    pub fn within(self, caps: &str) -> bool {
        caps.split(',').all(|cap| {
            match (self, GrantScope::parse(cap).unwrap_or(GrantScope::Once)) {
                (Self::Once, _) => true,
                (Self::Job, GrantScope::Job | GrantScope::For(_)) => true,
                (Self::For(asked), GrantScope::For(cap)) => asked <= cap,
                _ => false,
            }
        })
    }
}

impl fmt::Display for GrantScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Once => f.write_str("once"),
            Self::Job => f.write_str("job"),
            Self::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// A grant in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    /// The request whose approval created it.
    pub request: String,
    pub scope: String,
    pub shape: String,
    pub target: Option<String>,
    /// `job` scope: the job.
    pub job_id: Option<String>,
    /// A duration's scope: the repository and workflow.
    pub repository: Option<String>,
    pub workflow: Option<String>,
    pub approved_by: Vec<String>,
    pub granted_at: i64,
    /// Unix ms; None for a `job` grant (it ends with the job).
    pub expires_at: Option<i64>,
    #[serde(skip)]
    expires: Option<Instant>,
}

impl Grant {
    pub fn describe(&self) -> String {
        match (&self.job_id, &self.repository) {
            (Some(job), _) => format!("job {job}, {}", self.shape),
            (None, repo) => format!(
                "{} {} for {}, {}",
                repo.as_deref().unwrap_or("-"),
                self.workflow.as_deref().unwrap_or("-"),
                self.scope,
                self.shape
            ),
        }
    }

    fn live(&self) -> bool {
        self.expires.is_none_or(|at| Instant::now() < at)
    }

    fn covers(&self, request: &ApprovalRecord, shape: &str) -> bool {
        if !self.live() || self.shape != shape || self.target != request.target {
            return false;
        }
        match &self.job_id {
            Some(job) => request.job_id.as_deref() == Some(job.as_str()),
            None => {
                let field = |name: &str| request.identity.get(name).filter(|v| !v.is_empty());
                self.repository.is_some()
                    && field("repository") == self.repository.as_ref()
                    && field("workflow") == self.workflow.as_ref()
            }
        }
    }
}

#[derive(Default)]
pub(super) struct Grants {
    grants: Vec<Grant>,
}

impl Grants {
    pub(super) fn covering(&mut self, request: &ApprovalRecord, shape: &str) -> Option<&Grant> {
        self.grants.retain(Grant::live);
        self.grants.iter().find(|g| g.covers(request, shape))
    }

    pub(super) fn add(
        &mut self,
        request: &ApprovalRecord,
        shape: &str,
        scope: GrantScope,
        approved_by: Vec<String>,
    ) -> Grant {
        let field = |name: &str| {
            request
                .identity
                .get(name)
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let (job_id, repository, workflow, expires) = match scope {
            GrantScope::For(d) => (None, field("repository"), field("workflow"), Some(d)),
            GrantScope::Job | GrantScope::Once => (request.job_id.clone(), None, None, None),
        };
        let grant = Grant {
            id: uuid::Uuid::now_v7().to_string(),
            request: request.id.clone(),
            scope: scope.to_string(),
            shape: shape.to_owned(),
            target: request.target.clone(),
            job_id,
            repository,
            workflow,
            approved_by,
            granted_at: now_ms(),
            expires_at: expires.map(|d| now_ms() + d.as_millis() as i64),
            expires: expires.map(|d| Instant::now() + d),
        };
        self.grants.push(grant.clone());
        grant
    }

    /// A grant made on another host of the fleet (a duration's scope only): in force
    /// here until it expires. False if it was already here, or is over or job-scoped.
    pub(super) fn adopt(&mut self, mut grant: Grant) -> bool {
        let left = grant.expires_at.map(|at| at - now_ms());
        let Some(left) = left.filter(|ms| *ms > 0) else {
            return false;
        };
        if grant.job_id.is_some() || self.grants.iter().any(|g| g.id == grant.id) {
            return false;
        }
        grant.expires = Some(Instant::now() + std::time::Duration::from_millis(left as u64));
        self.grants.push(grant);
        true
    }

    pub(super) fn revoke(&mut self, id: &str) -> Option<Grant> {
        let at = self.grants.iter().position(|g| g.id == id)?;
        Some(self.grants.remove(at))
    }

    pub(super) fn keep_jobs(&mut self, live: &[String]) {
        self.grants
            .retain(|g| g.live() && g.job_id.as_ref().is_none_or(|job| live.contains(job)));
    }

    pub(super) fn live(&self) -> Vec<Grant> {
        self.grants.iter().filter(|g| g.live()).cloned().collect()
    }
}
