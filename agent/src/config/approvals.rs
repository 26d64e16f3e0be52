//! `[approvals]`: just-in-time approval of statements and connections whose decision is
//! RequireApproval: who may decide, how many must agree, and how long a request waits.
use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// Who reviews, and how requests are decided.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// Who may approve or deny over the control socket: `uid:N`, `gid:N`, `user:NAME`
    /// or `group:NAME` (a group matches its members' supplementary groups too). Empty:
    /// only root.
    pub reviewers: Vec<ReviewerSpec>,
    /// Distinct reviewers who must approve before a request is approved (one denial
    /// denies it).
    pub min_approvals: u32,
    /// How long a request waits for its decision before it is refused.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Whether a reviewer whose login equals the job's `actor` may approve that job's
    /// requests.
    pub self_approval: bool,
    /// Where every request and decision is POSTed (`[[approvals.webhooks]]`).
    pub webhooks: Vec<WebhookConfig>,
}

/// One `[[approvals.webhooks]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// https, or http to a loopback host.
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// A file holding a bearer token (sent as `Authorization: Bearer …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
}

/// The body a webhook gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// `{"event": "requested" | "decided", "request": {…}}` (docs/approvals.md).
    #[default]
    Json,
    /// A Slack incoming-webhook message: `{"text": "…"}`.
    Slack,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            reviewers: Vec::new(),
            min_approvals: 1,
            timeout: Duration::from_secs(600),
            self_approval: false,
            webhooks: Vec::new(),
        }
    }
}

/// One entry of `approvals.reviewers`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReviewerSpec {
    Uid(u32),
    Gid(u32),
    User(String),
    Group(String),
}

#[derive(Debug, thiserror::Error)]
#[error(
    "reviewer {0:?}: expected uid:N, gid:N, user:NAME or group:NAME (for example \"uid:1000\")"
)]
pub struct BadReviewer(String);

impl FromStr for ReviewerSpec {
    type Err = BadReviewer;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadReviewer(s.to_owned());
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        let value = value.trim();
        if value.is_empty() {
            return Err(bad());
        }
        match kind.trim() {
            "uid" => value.parse().map(Self::Uid).map_err(|_| bad()),
            "gid" => value.parse().map(Self::Gid).map_err(|_| bad()),
            "user" => Ok(Self::User(value.to_owned())),
            "group" => Ok(Self::Group(value.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ReviewerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "uid:{uid}"),
            Self::Gid(gid) => write!(f, "gid:{gid}"),
            Self::User(name) => write!(f, "user:{name}"),
            Self::Group(name) => write!(f, "group:{name}"),
        }
    }
}

impl Serialize for ReviewerSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReviewerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviewers_parse_by_kind_and_refuse_anything_else() {
        assert_eq!(
            "uid:1000".parse::<ReviewerSpec>().unwrap(),
            ReviewerSpec::Uid(1000)
        );
        assert_eq!(
            "gid:27".parse::<ReviewerSpec>().unwrap(),
            ReviewerSpec::Gid(27)
        );
        assert_eq!(
            "group:sre".parse::<ReviewerSpec>().unwrap(),
            ReviewerSpec::Group("sre".to_owned())
        );
        for bad in ["1000", "uid:", "uid:x", "role:admin", ""] {
            assert!(bad.parse::<ReviewerSpec>().is_err(), "{bad}");
        }
        assert_eq!(ReviewerSpec::User("ann".to_owned()).to_string(), "user:ann");
    }
}
