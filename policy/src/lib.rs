//! Tollgate's policy engine: a pure library that decides, for a job's identity, the
//! process that opened a connection and its destination, whether the connection may
//! proceed. Policies are Cedar, validated against [`schema::SCHEMA`]. No IO, no async
//! runtime, no unsafe code; the agent reads the files and enforces what this decides.
#![forbid(unsafe_code)]

pub mod dns;
pub mod eval;
pub mod http;
pub mod kernel;
pub mod load;
pub mod mcp;
pub mod schema;
pub mod targets;
pub mod testcases;
pub mod udp;
pub mod unix;

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

pub use eval::PolicyEngine;
pub use http::HttpRequest;
pub use load::{LoadErrors, PolicyBundle, PolicyError, Source, load, load_with};
pub use mcp::McpCall;
pub use targets::{Catalog, PortRange, ResultsMasking, TargetMasking, TargetSpec, TargetTls};

/// The process that opened a connection, as the kernel recorded it. Decisions depend
/// on every field but `pid`, which is informational.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// Identity fields (repository, workflow, ref, ...). When there are none at all, the
    /// labels of the same names stand in for them.
    #[serde(default)]
    pub identity: BTreeMap<String, String>,
    #[serde(default)]
    pub assurance: Assurance,
}

/// How much of a job's identity has been proven.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Assurance {
    /// The runner host (or whoever started the job) said so.
    #[default]
    HostAsserted,
    /// The CI system's signed OIDC token for this run was verified.
    OidcVerified,
}

impl Assurance {
    pub const fn as_str(self) -> &'static str {
        match self {
            Assurance::HostAsserted => "host-asserted",
            Assurance::OidcVerified => "oidc-verified",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "host-asserted" => Some(Self::HostAsserted),
            "oidc-verified" => Some(Self::OidcVerified),
            _ => None,
        }
    }
}

/// Who asks and where to: the job, the process that opened the connection, and the
/// connection's original destination. Every decision is about a subject.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub principal: &'a Principal,
    pub process: &'a Process,
    pub destination: SocketAddr,
    /// The name the job resolved the destination's address from (through Tollgate's
    /// resolver), if it did: `resource.hostname`, and what `dns_names` match.
    pub hostname: Option<&'a str>,
    /// The name a TLS client asked for in its ClientHello (`context.sni` of a
    /// connect), as the client claims it.
    pub sni: Option<&'a str>,
}

impl<'a> Subject<'a> {
    pub fn new(principal: &'a Principal, process: &'a Process, destination: SocketAddr) -> Self {
        Self {
            principal,
            process,
            destination,
            hostname: None,
            sni: None,
        }
    }

    pub fn with_sni(mut self, sni: Option<&'a str>) -> Self {
        self.sni = sni;
        self
    }

    pub fn with_hostname(mut self, hostname: Option<&'a str>) -> Self {
        self.hostname = hostname;
        self
    }
}

/// What an SQL decision sees besides the job, the process and the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SqlContext {
    pub database: String,
    pub user: String,
    /// Tables read or written, as written in the statement (`public.orders`, `orders`).
    pub tables: Vec<String>,
}

/// Whether decisions are enforced or only recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny unless permitted.
    #[default]
    Enforce,
    /// Evaluate and record everything, never block.
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
    RequireApproval,
}

impl Effect {
    pub const fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::RequireApproval => "require_approval",
        }
    }
}

/// A decision, with the policies that determined it and a reason a person can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub effect: Effect,
    /// False in audit mode: the effect is recorded, the connection proceeds.
    pub enforced: bool,
    pub policy_ids: Vec<String>,
    pub reason: String,
    /// The target the destination resolved to, or `(unknown)`.
    pub target: String,
    /// The protocol that target declares (`postgres`, ...): how its connections are
    /// followed, from the same policy as the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

impl Decision {
    pub fn allow(reason: impl Into<String>) -> Self {
        Self {
            effect: Effect::Allow,
            enforced: true,
            policy_ids: Vec::new(),
            reason: reason.into(),
            target: String::new(),
            protocol: None,
        }
    }

    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            effect: Effect::Deny,
            enforced: true,
            policy_ids: Vec::new(),
            reason: reason.into(),
            target: String::new(),
            protocol: None,
        }
    }

    /// About `target`: its name (or `(unknown)`) and the protocol it declares.
    pub fn about(mut self, target: Option<&TargetSpec>) -> Self {
        self.target = target.map_or_else(|| "(unknown)".to_owned(), |t| t.name.clone());
        self.protocol = target.and_then(|t| t.protocol.clone());
        self
    }

    /// Whether the connection must be refused.
    pub fn blocks(&self) -> bool {
        self.enforced && self.effect != Effect::Allow
    }

    /// The label recorded and counted: allow, deny, require_approval, or in audit mode
    /// would_deny / would_require_approval.
    pub fn label(&self) -> &'static str {
        match (self.effect, self.enforced) {
            (Effect::Allow, _) => "allow",
            (Effect::Deny, true) => "deny",
            (Effect::RequireApproval, true) => "require_approval",
            (Effect::Deny, false) => "would_deny",
            (Effect::RequireApproval, false) => "would_require_approval",
        }
    }
}

pub const NO_POLICY_REASON: &str = "no policy configured: default allow";
