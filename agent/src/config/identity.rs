//! `[identity]`: runner hooks and OIDC verification, per CI provider.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Pipeline identity: runner hooks and OIDC verification.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Allowed clock skew when checking a token's exp and nbf.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Issuer keys (JWKS) are refetched after this long.
    #[serde(with = "humantime_serde")]
    pub jwks_max_age: Duration,
    /// Tokens signed by unknown keys force a JWKS refetch at most this often.
    #[serde(with = "humantime_serde")]
    pub jwks_refetch_interval: Duration,
    pub github: ProviderConfig,
    pub gitlab: ProviderConfig,
    /// Buildkite's OIDC tokens (`buildkite-agent oidc request-token`), for `tollgate
    /// attest` in jobs started with an identity file of `provider = "buildkite"`.
    pub buildkite: BuildkiteConfig,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(60),
            jwks_max_age: Duration::from_secs(3600),
            jwks_refetch_interval: Duration::from_secs(30),
            github: ProviderConfig::default(),
            gitlab: ProviderConfig::default(),
            buildkite: BuildkiteConfig::default(),
        }
    }
}

/// Default issuers of the providers' OIDC tokens.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
pub const GITLAB_ISSUER: &str = "https://gitlab.com";
pub const BUILDKITE_ISSUER: &str = "https://agent.buildkite.com";
/// The audience Tollgate asks for and expects by default.
pub const DEFAULT_AUDIENCE: &str = "tollgate";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// Accounts the CI runner runs as: only they may call this provider's hooks.
    pub runner_uids: Vec<u32>,
    /// The OIDC issuer [default: GitHub's, or https://gitlab.com].
    pub issuer: Option<String>,
    /// The audience tokens must be issued for.
    pub audience: String,
    /// The issuer's JWKS [default: from the issuer's discovery document].
    pub jwks_url: Option<String>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            runner_uids: Vec::new(),
            issuer: None,
            audience: DEFAULT_AUDIENCE.to_owned(),
            jwks_url: None,
        }
    }
}

/// Buildkite has no runner hook Tollgate could install (jobs are wrapped with `tollgate
/// run`), and one issuer signs for every Buildkite organization: tokens are verified
/// only once `organization` says which one this host trusts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildkiteConfig {
    /// The organization slug tokens must carry (`organization_slug`).
    pub organization: Option<String>,
    /// The OIDC issuer [default: https://agent.buildkite.com].
    pub issuer: Option<String>,
    /// The audience tokens must be issued for.
    pub audience: String,
    /// The issuer's JWKS [default: from the issuer's discovery document].
    pub jwks_url: Option<String>,
}

impl Default for BuildkiteConfig {
    fn default() -> Self {
        Self {
            organization: None,
            issuer: None,
            audience: DEFAULT_AUDIENCE.to_owned(),
            jwks_url: None,
        }
    }
}

fn issuer(
    issuer: Option<&String>,
    default: &str,
    audience: &str,
    jwks_url: Option<&String>,
    required: Vec<(&'static str, String)>,
) -> crate::identity::oidc::Issuer {
    crate::identity::oidc::Issuer {
        issuer: issuer
            .map_or(default, String::as_str)
            .trim_end_matches('/')
            .to_owned(),
        audience: audience.to_owned(),
        jwks_url: jwks_url.cloned(),
        required,
    }
}

impl IdentityConfig {
    /// The OIDC issuers by provider, defaults filled in. Buildkite's only with an
    /// organization.
    pub fn issuers(&self) -> std::collections::BTreeMap<String, crate::identity::oidc::Issuer> {
        let mut issuers: std::collections::BTreeMap<_, _> = [
            ("github", &self.github, GITHUB_ISSUER),
            ("gitlab", &self.gitlab, GITLAB_ISSUER),
        ]
        .into_iter()
        .map(|(name, provider, default)| {
            let found = issuer(
                provider.issuer.as_ref(),
                default,
                &provider.audience,
                provider.jwks_url.as_ref(),
                Vec::new(),
            );
            (name.to_owned(), found)
        })
        .collect();
        let buildkite = &self.buildkite;
        if let Some(organization) = &buildkite.organization {
            issuers.insert(
                "buildkite".to_owned(),
                issuer(
                    buildkite.issuer.as_ref(),
                    BUILDKITE_ISSUER,
                    &buildkite.audience,
                    buildkite.jwks_url.as_ref(),
                    vec![("organization_slug", organization.clone())],
                ),
            );
        }
        issuers
    }

    pub fn timing(&self) -> crate::identity::oidc::Timing {
        crate::identity::oidc::Timing {
            leeway: self.leeway,
            jwks_max_age: self.jwks_max_age,
            jwks_refetch_interval: self.jwks_refetch_interval,
        }
    }
}
