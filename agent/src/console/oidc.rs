//! Reviewers' sign-in: the OIDC authorization code flow with PKCE (S256), a state and a
//! nonce per attempt, the code exchanged at the provider's token endpoint and the ID
//! token verified against the provider's published keys.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use ring::rand::SystemRandom;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::auth::{Reviewer, Role, random_token};
use crate::{
    config::{ConsoleOidcConfig, RolesConfig},
    identity::oidc::{ACCEPTED, fetch},
};

/// How long a sign-in attempt may take (from the redirect to the callback).
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// At most this many sign-ins in flight (older ones are dropped).
const MAX_FLOWS: usize = 10_000;
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the OIDC provider's discovery document: {0}")]
    Discovery(String),
    #[error("reading the client secret {path}: {source}")]
    Secret {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no sign-in is in progress for this browser (or it took longer than 10 minutes)")]
    UnknownState,
    #[error("the token endpoint: {0}")]
    Token(String),
    #[error("the ID token: {0}")]
    IdToken(String),
    #[error("{login} has no console role (claim `{claim}`: {values:?})")]
    NoRole {
        login: String,
        claim: String,
        values: Vec<String>,
    },
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

struct Flow {
    verifier: String,
    nonce: String,
    next: String,
    started: Instant,
}

/// The provider reviewers sign in with.
pub struct Provider {
    config: ConsoleOidcConfig,
    roles: RolesConfig,
    secret: Option<String>,
    discovery: Discovery,
    keys: Mutex<Option<JwkSet>>,
    flows: Mutex<HashMap<String, Flow>>,
    rng: SystemRandom,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into()
}

/// `https://…` or loopback `http://…`, as for job identity.
fn checked(url: &str) -> Result<&str, String> {
    fetch::check_url(url).map(|()| url)
}

impl Provider {
    /// Reads the provider's discovery document (blocking).
    pub fn discover(config: &ConsoleOidcConfig, roles: &RolesConfig) -> Result<Self, SignInError> {
        let secret = match &config.client_secret_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| SignInError::Secret {
                        path: path.display().to_string(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            config.issuer.trim_end_matches('/')
        );
        let text = fetch::get(&url, None).map_err(|e| SignInError::Discovery(e.to_string()))?;
        let discovery: Discovery = serde_json::from_str(&text)
            .map_err(|e| SignInError::Discovery(format!("{url}: {e}")))?;
        if discovery.issuer.trim_end_matches('/') != config.issuer.trim_end_matches('/') {
            return Err(SignInError::Discovery(format!(
                "{url} names issuer `{}`, not `{}`",
                discovery.issuer, config.issuer
            )));
        }
        for endpoint in [
            &discovery.authorization_endpoint,
            &discovery.token_endpoint,
            &discovery.jwks_uri,
        ] {
            checked(endpoint).map_err(SignInError::Discovery)?;
        }
        Ok(Self {
            config: config.clone(),
            roles: roles.clone(),
            secret,
            discovery,
            keys: Mutex::new(None),
            flows: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        })
    }

    /// Starts a sign-in: the state (for the flow cookie) and the provider URL to send
    /// the browser to. `next` is where to go once signed in (a path of this console).
    pub fn begin(&self, next: &str) -> (String, String) {
        let state = random_token(&self.rng);
        let verifier = random_token(&self.rng);
        let nonce = random_token(&self.rng);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(
            self.config
                .scopes
                .iter()
                .filter(|s| *s != "openid")
                .cloned(),
        );
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.config.redirect_url)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let separator = if self.discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{}{separator}{query}",
            self.discovery.authorization_endpoint
        );
        let mut flows = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        flows.retain(|_, f| f.started.elapsed() < FLOW_TTL);
        if flows.len() >= MAX_FLOWS
            && let Some(oldest) = flows
                .iter()
                .min_by_key(|(_, f)| f.started)
                .map(|(s, _)| s.clone())
        {
            flows.remove(&oldest);
        }
        flows.insert(
            state.clone(),
            Flow {
                verifier,
                nonce,
                next: next.to_owned(),
                started: Instant::now(),
            },
        );
        (state, url)
    }

    /// Ends a sign-in (blocking): the flow named by `state` (which the browser's flow
    /// cookie must also hold), the code exchanged and the ID token verified. Returns the
    /// reviewer and where to go next.
    pub fn finish(&self, state: &str, code: &str) -> Result<(Reviewer, String), SignInError> {
        let flow = self
            .flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)
            .filter(|f| f.started.elapsed() < FLOW_TTL)
            .ok_or(SignInError::UnknownState)?;
        let id_token = self.exchange(code, &flow.verifier)?;
        let claims = self.verify(&id_token, &flow.nonce)?;
        Ok((self.reviewer(&claims)?, flow.next))
    }

    fn exchange(&self, code: &str, verifier: &str) -> Result<String, SignInError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.config.redirect_url.as_str()),
            ("code_verifier", verifier),
            ("client_id", self.config.client_id.as_str()),
        ];
        if let Some(secret) = &self.secret {
            form.push(("client_secret", secret.as_str()));
        }
        let mut response = agent()
            .post(&self.discovery.token_endpoint)
            .header("Accept", "application/json")
            .send_form(form)
            .map_err(|e| SignInError::Token(e.to_string()))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| SignInError::Token(e.to_string()))?;
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| SignInError::Token(format!("HTTP {status}: not JSON: {e}")))?;
        if !status.is_success() {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("error");
            let detail = body
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(SignInError::Token(format!(
                "HTTP {status}: {error} {detail}"
            )));
        }
        body.get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| SignInError::Token("the response has no id_token".to_owned()))
    }

    fn key(&self, kid: &str) -> Result<DecodingKey, SignInError> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let found = keys.as_ref().and_then(|k| k.find(kid)).cloned();
        let jwk = match found {
            Some(jwk) => jwk,
            None => {
                // A new key (rotation): fetch the set again, once per unknown kid.
                let text = fetch::get(&self.discovery.jwks_uri, None)
                    .map_err(|e| SignInError::IdToken(e.to_string()))?;
                let set: JwkSet = serde_json::from_str(&text)
                    .map_err(|e| SignInError::IdToken(format!("the JWKS: {e}")))?;
                let jwk = set.find(kid).cloned();
                *keys = Some(set);
                jwk.ok_or_else(|| SignInError::IdToken(format!("signed with unknown key `{kid}`")))?
            }
        };
        DecodingKey::from_jwk(&jwk).map_err(|e| SignInError::IdToken(format!("key {kid}: {e}")))
    }

    fn verify(&self, token: &str, nonce: &str) -> Result<Map<String, Value>, SignInError> {
        let header =
            decode_header(token).map_err(|e| SignInError::IdToken(format!("malformed: {e}")))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(SignInError::IdToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| SignInError::IdToken("no key id (kid)".to_owned()))?;
        let key = self.key(&kid)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 60;
        validation.set_issuer(&[&self.discovery.issuer]);
        validation.set_audience(&[&self.config.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| SignInError::IdToken(e.to_string()))?;
        if data.claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(SignInError::IdToken(
                "its nonce is not this sign-in's".to_owned(),
            ));
        }
        Ok(data.claims)
    }

    fn reviewer(&self, claims: &Map<String, Value>) -> Result<Reviewer, SignInError> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let subject = text("sub").unwrap_or_default();
        let login = text(&self.config.login_claim)
            .or_else(|| text("email"))
            .unwrap_or_else(|| subject.clone());
        let values: Vec<String> = match claims.get(&self.roles.claim) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let role = Role::from_claim(&self.roles, &values).ok_or_else(|| SignInError::NoRole {
            login: login.clone(),
            claim: self.roles.claim.clone(),
            values,
        })?;
        Ok(Reviewer {
            issuer: self.discovery.issuer.clone(),
            subject,
            login,
            name: text("name"),
            email: text("email"),
            role,
        })
    }
}
