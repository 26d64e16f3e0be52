//! `[console]`: the review console (`tollgate console`): where it listens, how reviewers
//! sign in (`[console.oidc]`) and which of their claims make them viewers, approvers or
//! admins (`[console.roles]`). docs/console.md.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Where the console listens (`--listen` overrides it).
    pub listen: SocketAddr,
    /// PEM certificate chain and key: the console serves HTTPS. Without them it serves
    /// plain HTTP, which is meant for loopback or behind a TLS-terminating proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// How long a sign-in lasts (then the reviewer signs in again).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Most signed-in sessions kept at once (the oldest goes first).
    pub max_sessions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<ConsoleOidcConfig>,
    pub roles: RolesConfig,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9480)),
            tls_cert: None,
            tls_key: None,
            session_ttl: Duration::from_secs(8 * 3600),
            max_sessions: 10_000,
            oidc: None,
            roles: RolesConfig::default(),
        }
    }
}

/// The OIDC provider reviewers sign in with (authorization code flow with PKCE).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleOidcConfig {
    /// The issuer URL; its `/.well-known/openid-configuration` is read at start.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret (a public client has none: PKCE only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// The console's callback as the provider knows it: `https://HOST/auth/callback`.
    pub redirect_url: String,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The claim that names the reviewer in records and is compared with a job's actor
    /// for self-approval.
    #[serde(default = "default_login_claim")]
    pub login_claim: String,
}

fn default_scopes() -> Vec<String> {
    vec!["profile".to_owned(), "email".to_owned()]
}

fn default_login_claim() -> String {
    "preferred_username".to_owned()
}

/// Roles from one claim of the ID token (a string or a list of strings): a reviewer
/// whose claim holds a value listed under a role has it. `admin` includes `approver`,
/// which includes `viewer`. A reviewer with no role is refused at sign-in.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolesConfig {
    pub claim: String,
    pub viewer: Vec<String>,
    pub approver: Vec<String>,
    pub admin: Vec<String>,
}

impl Default for RolesConfig {
    fn default() -> Self {
        Self {
            claim: "groups".to_owned(),
            viewer: Vec::new(),
            approver: Vec::new(),
            admin: Vec::new(),
        }
    }
}
