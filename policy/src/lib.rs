//! Tollgate's policy engine: a pure library that decides, for a job's identity, the
//! process that opened a connection and its destination, whether the connection may
//! proceed. No IO, no async runtime, no unsafe code; the agent enforces what it decides.
#![forbid(unsafe_code)]

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// The process that opened a connection, as the kernel recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
}

/// The job a connection belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub job_id: String,
    pub labels: BTreeMap<String, String>,
}

/// A request to open an L4 connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest<'a> {
    pub principal: &'a Principal,
    pub process: &'a Process,
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub const fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// A decision with the policies that determined it and a reason a person can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub effect: Effect,
    pub policy_ids: Vec<String>,
    pub reason: String,
}

impl Decision {
    pub fn allow(reason: impl Into<String>) -> Self {
        Self {
            effect: Effect::Allow,
            policy_ids: Vec::new(),
            reason: reason.into(),
        }
    }

    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            effect: Effect::Deny,
            policy_ids: Vec::new(),
            reason: reason.into(),
        }
    }
}

/// Decides connections. Implementations must be cheap and must not block: the proxy
/// calls them for every intercepted connection.
pub trait Engine: Send + Sync {
    fn decide_connect(&self, request: &ConnectRequest<'_>) -> Decision;
}

/// The engine in force while no policy is configured: every connection is allowed, and
/// the record says why.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

pub const ALLOW_ALL_REASON: &str = "no policy configured: default allow";

impl Engine for AllowAll {
    fn decide_connect(&self, _request: &ConnectRequest<'_>) -> Decision {
        Decision::allow(ALLOW_ALL_REASON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_all_allows_with_a_reason() {
        let principal = Principal::default();
        let process = Process::default();
        let decision = AllowAll.decide_connect(&ConnectRequest {
            principal: &principal,
            process: &process,
            destination: "127.0.0.1:5432".parse().unwrap(),
        });
        assert_eq!(decision.effect, Effect::Allow);
        assert_eq!(decision.reason, ALLOW_ALL_REASON);
    }
}
