//! OIDC verification of a job's identity: the CI system's signed token for the run is
//! checked against the issuer's published keys (JWKS), then its claims against the job.
pub mod fetch;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind, jwk::JwkSet,
};
use serde_json::{Map, Value};

use super::Identity;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    #[error("no OIDC issuer is configured for provider `{0}`{hint}", hint = no_issuer_hint(.0))]
    NoIssuer(String),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted (only asymmetric signatures are)")]
    Algorithm(String),
    #[error("token has no key id (kid)")]
    NoKeyId,
    #[error("unknown signing key `{kid}` (not in the issuer's JWKS{})", if *.refetched { ", even after refetching it" } else { "; refetched too recently to try again" })]
    UnknownKey { kid: String, refetched: bool },
    #[error("fetching the issuer's keys: {0}")]
    Jwks(String),
    #[error("signature does not verify against the issuer's key `{0}`")]
    Signature(String),
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("token audience is not `{0}`")]
    Audience(String),
    #[error("token issuer is not `{0}`")]
    Issuer(String),
    #[error("token claims: {0}")]
    Claims(String),
    #[error("claim `{claim}` is `{token}`, but this agent accepts only `{configured}`")]
    Required {
        claim: &'static str,
        token: String,
        configured: String,
    },
    #[error("claim `{claim}` is `{token}`, but the job's {field} is `{job}`")]
    Mismatch {
        claim: &'static str,
        field: &'static str,
        token: String,
        job: String,
    },
}

fn no_issuer_hint(provider: &str) -> &'static str {
    if provider == "buildkite" {
        " (set identity.buildkite.organization: one issuer signs for every Buildkite \
         organization)"
    } else {
        ""
    }
}

/// Where a provider's tokens come from and who they must be for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub issuer: String,
    pub audience: String,
    /// Taken from the issuer's discovery document when not set.
    pub jwks_url: Option<String>,
    /// Claims every token must carry with exactly these values, whatever the job (the
    /// Buildkite organization: one issuer signs for all of them).
    pub required: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Allowed clock skew for exp and nbf.
    pub leeway: Duration,
    /// Keys are refetched after this long.
    pub jwks_max_age: Duration,
    /// Unknown kids force a refetch of the keys at most this often.
    pub jwks_refetch_interval: Duration,
}

type Fetch = fn(&str) -> Result<String, fetch::FetchError>;

struct CachedKeys {
    keys: JwkSet,
    fetched: Instant,
    /// When an unknown kid last forced a refetch.
    forced: Option<Instant>,
}

/// Verifies tokens. Keys are cached per provider and follow kid rotation.
pub struct Verifier {
    issuers: BTreeMap<String, Issuer>,
    timing: Timing,
    cache: Mutex<HashMap<String, CachedKeys>>,
    fetch: Fetch,
}

pub const ACCEPTED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Verifier {
    /// `issuers`: by provider name (`github`, `gitlab`).
    pub fn new(issuers: BTreeMap<String, Issuer>, timing: Timing) -> Self {
        Self::with_fetch(issuers, timing, |url| fetch::get(url, None))
    }

    fn with_fetch(issuers: BTreeMap<String, Issuer>, timing: Timing, fetch: Fetch) -> Self {
        Self {
            issuers,
            timing,
            cache: Mutex::new(HashMap::new()),
            fetch,
        }
    }

    /// Verifies `token` for a job with `identity` and returns the identity as the token
    /// proves it: the token's claims replace the host-asserted fields they cover.
    pub fn verify(&self, token: &str, identity: &Identity) -> Result<Identity, OidcError> {
        let issuer = self
            .issuers
            .get(&identity.provider)
            .ok_or_else(|| OidcError::NoIssuer(identity.provider.clone()))?;
        let header = decode_header(token).map_err(|e| OidcError::Malformed(e.to_string()))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(OidcError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(OidcError::NoKeyId)?;
        let key = self.key(&identity.provider, issuer, &kid)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.timing.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&[&issuer.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => OidcError::Signature(kid.clone()),
                ErrorKind::ExpiredSignature => OidcError::Expired,
                ErrorKind::ImmatureSignature => OidcError::NotYetValid,
                ErrorKind::InvalidAudience => OidcError::Audience(issuer.audience.clone()),
                ErrorKind::InvalidIssuer => OidcError::Issuer(issuer.issuer.clone()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    OidcError::Claims(format!("missing `{claim}`"))
                }
                _ => OidcError::Malformed(e.to_string()),
            })?;
        for (name, value) in &issuer.required {
            let token = claim(&data.claims, name)
                .ok_or_else(|| OidcError::Claims(format!("missing `{name}`")))?;
            if token != *value {
                return Err(OidcError::Required {
                    claim: name,
                    token,
                    configured: value.clone(),
                });
            }
        }
        proven_identity(identity, &data.claims)
    }

    /// The key `kid`: from the cache, else from a fetch (at most once per refetch
    /// interval when the kid is unknown, so a stream of bad tokens cannot hammer the
    /// issuer).
    fn key(&self, provider: &str, issuer: &Issuer, kid: &str) -> Result<DecodingKey, OidcError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .get(provider)
            .is_some_and(|c| c.fetched.elapsed() < self.timing.jwks_max_age);
        let mut refetched = false;
        if !fresh {
            let mut keys = self.fetch_keys(issuer)?;
            // A scheduled refresh does not reset the unknown-kid rate limit.
            keys.forced = cache.get(provider).and_then(|c| c.forced);
            cache.insert(provider.to_owned(), keys);
            refetched = true;
        }
        let find = |cache: &HashMap<String, CachedKeys>| {
            cache
                .get(provider)
                .and_then(|c| c.keys.find(kid))
                .map(DecodingKey::from_jwk)
        };
        let found = match find(&cache) {
            Some(found) => found,
            None => {
                let may_refetch = cache.get(provider).is_none_or(|c| {
                    c.forced
                        .is_none_or(|at| at.elapsed() >= self.timing.jwks_refetch_interval)
                });
                if refetched || !may_refetch {
                    return Err(OidcError::UnknownKey {
                        kid: kid.to_owned(),
                        refetched,
                    });
                }
                tracing::info!(provider, kid, "unknown signing key; refetching the JWKS");
                let mut keys = self.fetch_keys(issuer)?;
                keys.forced = Some(Instant::now());
                cache.insert(provider.to_owned(), keys);
                find(&cache).ok_or_else(|| OidcError::UnknownKey {
                    kid: kid.to_owned(),
                    refetched: true,
                })?
            }
        };
        found.map_err(|e| OidcError::Jwks(format!("key `{kid}`: {e}")))
    }

    fn fetch_keys(&self, issuer: &Issuer) -> Result<CachedKeys, OidcError> {
        let jwks_url = match &issuer.jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.issuer.trim_end_matches('/')
                );
                let text = (self.fetch)(&url).map_err(|e| OidcError::Jwks(e.to_string()))?;
                let document: Value = serde_json::from_str(&text)
                    .map_err(|e| OidcError::Jwks(format!("{url}: {e}")))?;
                document
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| OidcError::Jwks(format!("{url}: no jwks_uri")))?
                    .to_owned()
            }
        };
        let text = (self.fetch)(&jwks_url).map_err(|e| OidcError::Jwks(e.to_string()))?;
        let keys: JwkSet =
            serde_json::from_str(&text).map_err(|e| OidcError::Jwks(format!("{jwks_url}: {e}")))?;
        tracing::debug!(url = %jwks_url, keys = keys.keys.len(), "fetched JWKS");
        Ok(CachedKeys {
            keys,
            fetched: Instant::now(),
            forced: None,
        })
    }
}

/// A claim as text (CI systems send ids as strings, some as numbers).
/// A claim's value as text. A name of several claims joined by `/` (Buildkite's
/// `organization_slug/pipeline_slug`) is their values joined the same way, present
/// only when all of them are.
fn claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    if name.contains('/') {
        return name
            .split('/')
            .map(|part| claim(claims, part))
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join("/"));
    }
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Buildkite names a pipeline by two claims; the identity's `repository` is both.
const BUILDKITE_PIPELINE: &str = "organization_slug/pipeline_slug";

/// A claim that must equal a job's field: (claim, field name, the job's value).
type MustMatch<'a> = Vec<(&'static str, &'static str, &'a str)>;

/// Checks that the token is for this job, then fills the identity from the claims.
fn proven_identity(job: &Identity, claims: &Map<String, Value>) -> Result<Identity, OidcError> {
    // Claims that must match, and (claim, field) pairs copied into the proven identity.
    let (must_match, copy): (MustMatch<'_>, &[(&str, &str)]) = match job.provider.as_str() {
        "github" => (
            vec![
                ("repository", "repository", &job.repository),
                ("run_id", "run_id", &job.run_id),
                ("run_attempt", "run_attempt", &job.run_attempt),
            ],
            &[
                ("repository", "repository"),
                ("workflow", "workflow"),
                ("workflow_ref", "workflow_ref"),
                ("ref", "ref"),
                ("ref_type", "ref_type"),
                ("sha", "sha"),
                ("environment", "environment"),
                ("actor", "actor"),
                ("event_name", "event"),
                ("run_id", "run_id"),
                ("run_attempt", "run_attempt"),
            ],
        ),
        "gitlab" => (
            vec![
                ("project_path", "repository", &job.repository),
                ("pipeline_id", "run_id", &job.run_id),
                ("job_id", "ci_job_id", &job.ci_job_id),
            ],
            &[
                ("project_path", "repository"),
                ("pipeline_id", "run_id"),
                ("job_id", "ci_job_id"),
                ("ref", "ref"),
                ("ref_type", "ref_type"),
                ("sha", "sha"),
                ("environment", "environment"),
                ("user_login", "actor"),
                ("pipeline_source", "event"),
            ],
        ),
        "buildkite" => (
            vec![
                (BUILDKITE_PIPELINE, "repository", &job.repository),
                ("build_number", "run_id", &job.run_id),
                ("job_id", "ci_job_id", &job.ci_job_id),
            ],
            &[
                (BUILDKITE_PIPELINE, "repository"),
                ("build_number", "run_id"),
                ("job_id", "ci_job_id"),
                ("build_branch", "ref"),
                ("build_commit", "sha"),
            ],
        ),
        other => return Err(OidcError::NoIssuer(other.to_owned())),
    };
    for (name, field, expected) in must_match {
        let token =
            claim(claims, name).ok_or_else(|| OidcError::Claims(format!("missing `{name}`")))?;
        if token != expected {
            return Err(OidcError::Mismatch {
                claim: name,
                field,
                token,
                job: expected.to_owned(),
            });
        }
    }
    let mut proven = job.clone();
    for (name, field) in copy {
        let Some(value) = claim(claims, name).filter(|v| !v.is_empty()) else {
            continue;
        };
        let slot = match *field {
            "repository" => &mut proven.repository,
            "workflow" => &mut proven.workflow,
            "workflow_ref" => &mut proven.workflow_ref,
            "ref" => &mut proven.git_ref,
            "ref_type" => &mut proven.ref_type,
            "sha" => &mut proven.sha,
            "environment" => &mut proven.environment,
            "actor" => &mut proven.actor,
            "event" => &mut proven.event,
            "run_id" => &mut proven.run_id,
            "run_attempt" => &mut proven.run_attempt,
            "ci_job_id" => &mut proven.ci_job_id,
            _ => continue,
        };
        *slot = value;
    }
    proven
        .validate()
        .map_err(|e| OidcError::Claims(e.to_string()))?;
    Ok(proven)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn github_job() -> Identity {
        Identity {
            provider: "github".to_owned(),
            repository: "acme/api".to_owned(),
            run_id: "42".to_owned(),
            run_attempt: "1".to_owned(),
            git_ref: "refs/heads/feature".to_owned(),
            ..Default::default()
        }
    }

    fn claims(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn claims_must_match_the_job_and_then_replace_asserted_fields() {
        let job = github_job();
        let ok = claims(&[
            ("repository", "acme/api".into()),
            ("run_id", "42".into()),
            ("run_attempt", 1.into()),
            ("ref", "refs/heads/main".into()),
            ("environment", "production".into()),
        ]);
        let proven = proven_identity(&job, &ok).unwrap();
        assert_eq!(proven.git_ref, "refs/heads/main", "the token's ref wins");
        assert_eq!(proven.environment, "production");
        let other_run = claims(&[
            ("repository", "acme/api".into()),
            ("run_id", "43".into()),
            ("run_attempt", "1".into()),
        ]);
        let error = proven_identity(&job, &other_run).unwrap_err();
        assert_eq!(
            error.to_string(),
            "claim `run_id` is `43`, but the job's run_id is `42`"
        );
        let missing = claims(&[("repository", "acme/api".into())]);
        assert!(matches!(
            proven_identity(&job, &missing),
            Err(OidcError::Claims(_))
        ));
        let gitlab = Identity {
            provider: "gitlab".to_owned(),
            repository: "acme/api".to_owned(),
            run_id: "7".to_owned(),
            ci_job_id: "99".to_owned(),
            ..Default::default()
        };
        let gitlab_claims = claims(&[
            ("project_path", "acme/api".into()),
            ("pipeline_id", "7".into()),
            ("job_id", "98".into()),
        ]);
        assert!(matches!(
            proven_identity(&gitlab, &gitlab_claims),
            Err(OidcError::Mismatch {
                claim: "job_id",
                ..
            })
        ));
    }

    #[test]
    fn buildkite_tokens_name_the_pipeline_by_organization_and_slug() {
        let job = Identity {
            provider: "buildkite".to_owned(),
            repository: "acme/deploy".to_owned(),
            run_id: "175".to_owned(),
            ci_job_id: "018485f6-1f53-4f18-9b53-72428db4d239".to_owned(),
            git_ref: "asserted".to_owned(),
            ..Default::default()
        };
        let token = |org: &str, build: u64| {
            claims(&[
                ("organization_slug", org.into()),
                ("pipeline_slug", "deploy".into()),
                ("build_number", build.into()),
                ("job_id", "018485f6-1f53-4f18-9b53-72428db4d239".into()),
                ("build_branch", "main".into()),
                ("build_commit", "750339bf".into()),
            ])
        };
        let proven = proven_identity(&job, &token("acme", 175)).unwrap();
        assert_eq!(proven.repository, "acme/deploy");
        assert_eq!(proven.git_ref, "main", "the token's branch wins");
        assert_eq!(proven.sha, "750339bf");
        assert_eq!(
            proven_identity(&job, &token("other", 175))
                .unwrap_err()
                .to_string(),
            "claim `organization_slug/pipeline_slug` is `other/deploy`, but the job's \
             repository is `acme/deploy`"
        );
        assert!(matches!(
            proven_identity(&job, &token("acme", 176)),
            Err(OidcError::Mismatch {
                claim: "build_number",
                ..
            })
        ));
        let mut no_pipeline = token("acme", 175);
        no_pipeline.remove("pipeline_slug");
        assert!(matches!(
            proven_identity(&job, &no_pipeline),
            Err(OidcError::Claims(_))
        ));
        assert!(
            OidcError::NoIssuer("buildkite".to_owned())
                .to_string()
                .contains("identity.buildkite.organization")
        );
    }

    #[test]
    fn refuses_symmetric_and_unsigned_tokens_before_fetching_keys() {
        let verifier = Verifier::with_fetch(
            [(
                "github".to_owned(),
                Issuer {
                    issuer: "https://issuer.invalid".to_owned(),
                    audience: "tollgate".to_owned(),
                    jwks_url: None,
                    required: Vec::new(),
                },
            )]
            .into(),
            Timing {
                leeway: Duration::from_secs(60),
                jwks_max_age: Duration::from_secs(3600),
                jwks_refetch_interval: Duration::from_secs(30),
            },
            |url| {
                Err(fetch::FetchError {
                    url: url.to_owned(),
                    message: "no network in unit tests".to_owned(),
                })
            },
        );
        // {"alg":"HS256","kid":"k"} . {} . sig
        let hs256 = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsifQ.e30.c2ln";
        assert!(matches!(
            verifier.verify(hs256, &github_job()),
            Err(OidcError::Algorithm(_))
        ));
        assert!(matches!(
            verifier.verify("not a token", &github_job()),
            Err(OidcError::Malformed(_))
        ));
        let mut cron = github_job();
        cron.provider = "cron".to_owned();
        assert_eq!(
            verifier.verify(hs256, &cron),
            Err(OidcError::NoIssuer("cron".to_owned()))
        );
        // RS256 with a kid: the key fetch fails and says so.
        let rs256 = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.e30.c2ln";
        assert!(matches!(
            verifier.verify(rs256, &github_job()),
            Err(OidcError::Jwks(_))
        ));
    }
}
