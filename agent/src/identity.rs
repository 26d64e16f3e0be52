//! Pipeline identity: which CI run a job is, and how sure Tollgate is of it.
//!
//! A job's identity comes from the runner's environment (`host-asserted`: the runner
//! host says so), from an identity file (`tollgate run --identity-file`), and is raised
//! to `oidc-verified` once the CI system's signed token for the run has been checked.
pub mod ancestry;
pub mod env;
pub mod file;
pub mod oidc;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const MAX_VALUE_LEN: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity field `{field}`: {reason}")]
    Invalid { field: String, reason: &'static str },
    #[error("missing {0}: is this running inside the CI job's environment?")]
    Missing(&'static str),
}

/// Who a job is. A field the CI system did not provide is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Identity {
    /// `github`, `gitlab`, `buildkite`, `jenkins`, `cron`, ...
    #[serde(skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// `owner/name` (GitHub) or the project path (GitLab).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub repository: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workflow: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workflow_ref: String,
    /// The job's name in the workflow.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub job: String,
    /// The CI system's own id of this job (GitLab's `CI_JOB_ID`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ci_job_id: String,
    /// The run (GitHub) or pipeline (GitLab) id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub run_attempt: String,
    #[serde(rename = "ref", skip_serializing_if = "String::is_empty")]
    pub git_ref: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ref_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sha: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub environment: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub actor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub event: String,
    /// The runner's name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub runner: String,
}

impl Identity {
    /// Every field, by its policy attribute name.
    pub fn fields(&self) -> [(&'static str, &str); 15] {
        [
            ("provider", &self.provider),
            ("repository", &self.repository),
            ("workflow", &self.workflow),
            ("workflow_ref", &self.workflow_ref),
            ("job", &self.job),
            ("ci_job_id", &self.ci_job_id),
            ("run_id", &self.run_id),
            ("run_attempt", &self.run_attempt),
            ("ref", &self.git_ref),
            ("ref_type", &self.ref_type),
            ("sha", &self.sha),
            ("environment", &self.environment),
            ("actor", &self.actor),
            ("event", &self.event),
            ("runner", &self.runner),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, value)| value.is_empty())
    }

    /// The non-empty fields, as the policy principal carries them.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.fields()
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    /// Rejects oversized values and control characters (they end up in logs and tables).
    pub fn validate(&self) -> Result<(), IdentityError> {
        for (field, value) in self.fields() {
            let invalid = |reason| IdentityError::Invalid {
                field: field.to_owned(),
                reason,
            };
            if value.len() > MAX_VALUE_LEN {
                return Err(invalid("values are at most 1024 bytes"));
            }
            if value.chars().any(char::is_control) {
                return Err(invalid("values must not contain control characters"));
            }
        }
        Ok(())
    }

    /// A short human form: `github acme/api run 42.1 job deploy`.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "-".to_owned();
        }
        let mut parts = Vec::new();
        for (label, value) in [
            ("", &self.provider),
            ("", &self.repository),
            ("run ", &self.run_id),
        ] {
            if !value.is_empty() {
                parts.push(format!("{label}{value}"));
            }
        }
        if !self.run_attempt.is_empty()
            && !self.run_id.is_empty()
            && let Some(last) = parts.last_mut()
        {
            last.push('.');
            last.push_str(&self.run_attempt);
        }
        if !self.job.is_empty() {
            parts.push(format!("job {}", self.job));
        }
        parts.join(" ")
    }
}

/// How much of a job's identity has been proven: the policy crate's, which Cedar sees as
/// `principal.assurance`.
pub use tollgate_policy::Assurance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_ref_and_skips_empty_fields() {
        let identity = Identity {
            provider: "github".to_owned(),
            repository: "acme/api".to_owned(),
            git_ref: "refs/heads/main".to_owned(),
            run_id: "42".to_owned(),
            run_attempt: "2".to_owned(),
            job: "deploy".to_owned(),
            ..Default::default()
        };
        let json = serde_json::to_string(&identity).unwrap();
        assert!(json.contains(r#""ref":"refs/heads/main""#), "{json}");
        assert!(!json.contains("sha"), "{json}");
        assert_eq!(serde_json::from_str::<Identity>(&json).unwrap(), identity);
        assert_eq!(identity.summary(), "github acme/api run 42.2 job deploy");
        assert_eq!(identity.to_map().len(), 6);
        assert_eq!(Identity::default().summary(), "-");
    }

    #[test]
    fn validates_values() {
        let mut identity = Identity {
            actor: "x\ny".to_owned(),
            ..Default::default()
        };
        assert!(matches!(
            identity.validate(),
            Err(IdentityError::Invalid { field, .. }) if field == "actor"
        ));
        identity.actor = "a".repeat(1025);
        assert!(identity.validate().is_err());
        identity.actor = "octocat".to_owned();
        assert!(identity.validate().is_ok());
    }

    #[test]
    fn assurance_names() {
        assert_eq!(
            serde_json::to_string(&Assurance::OidcVerified).unwrap(),
            r#""oidc-verified""#
        );
        assert_eq!(
            Assurance::parse("host-asserted"),
            Some(Assurance::HostAsserted)
        );
        assert_eq!(Assurance::parse("x"), None);
    }
}
