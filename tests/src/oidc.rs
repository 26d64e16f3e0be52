//! A local OIDC issuer for the tests: RSA keys generated at test time (openssl), a
//! discovery document and JWKS served on loopback (fetches counted), a GitHub-style
//! token endpoint (`ACTIONS_ID_TOKEN_REQUEST_URL`), and the authorization code flow with
//! PKCE for the review console's sign-in (the user who signs in is set by the test).
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

/// The bearer the token endpoint expects (like ACTIONS_ID_TOKEN_REQUEST_TOKEN).
pub const REQUEST_TOKEN: &str = "request-token-for-tests";

struct Key {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

fn generate(kid: &str) -> Key {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("running openssl genpkey");
    assert!(out.status.success(), "openssl genpkey failed");
    let encoding = EncodingKey::from_rsa_pem(&out.stdout).expect("RSA key from openssl");
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256).expect("JWK");
    jwk.common.key_id = Some(kid.to_owned());
    Key {
        kid: kid.to_owned(),
        encoding,
        jwk: serde_json::to_value(&jwk).expect("JWK as JSON"),
    }
}

/// An authorization code handed out, waiting to be exchanged.
struct Code {
    client_id: String,
    redirect_uri: String,
    nonce: String,
    challenge: String,
    claims: Value,
}

struct State {
    url: String,
    /// Claims of whoever signs in at /authorize next (None: sign-in refused).
    user: Mutex<Option<Value>>,
    codes: Mutex<std::collections::HashMap<String, Code>>,
    /// Code exchanges, and those refused.
    exchanges: AtomicUsize,
    refused_exchanges: AtomicUsize,
    /// Claims the token endpoint signs (with the published key).
    endpoint_claims: Mutex<Option<Value>>,
    jwks_fetches: AtomicUsize,
    token_requests: AtomicUsize,
    stop: AtomicBool,
}

pub struct Issuer {
    pub url: String,
    published: Key,
    unpublished: Key,
    state: Arc<State>,
    port: u16,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Issuer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind issuer");
        let port = listener.local_addr().expect("addr").port();
        let url = format!("http://127.0.0.1:{port}");
        let published = generate("k1");
        let unpublished = generate("k2");
        let state = Arc::new(State {
            url: url.clone(),
            user: Mutex::new(None),
            codes: Mutex::new(std::collections::HashMap::new()),
            exchanges: AtomicUsize::new(0),
            refused_exchanges: AtomicUsize::new(0),
            endpoint_claims: Mutex::new(None),
            jwks_fetches: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let jwks = json!({ "keys": [published.jwk.clone()] });
        let signing = published.encoding.clone();
        let kid = published.kid.clone();
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                serve(stream, &shared, &jwks, &signing, &kid);
            }
        });
        Self {
            url,
            published,
            unpublished,
            state,
            port,
        }
    }

    /// GitHub's claims for a run, issued now for `audience`, valid for 5 minutes.
    pub fn github_claims(&self, repository: &str, run_id: &str, attempt: &str) -> Value {
        let now = now();
        json!({
            "iss": self.url, "aud": "tollgate", "sub": format!("repo:{repository}:ref:refs/heads/main"),
            "iat": now, "nbf": now, "exp": now + 300,
            "repository": repository, "run_id": run_id, "run_attempt": attempt,
            "ref": "refs/heads/main", "ref_type": "branch", "sha": "0123abcd",
            "workflow": "deploy", "actor": "octocat", "event_name": "push",
            "environment": "production",
        })
    }

    /// GitLab's claims for a job.
    pub fn gitlab_claims(&self, project: &str, pipeline: &str, job: &str) -> Value {
        let now = now();
        json!({
            "iss": self.url, "aud": "tollgate", "sub": format!("project_path:{project}:ref_type:branch:ref:main"),
            "iat": now, "nbf": now, "exp": now + 300,
            "project_path": project, "pipeline_id": pipeline, "job_id": job,
            "ref": "main", "ref_type": "branch", "user_login": "alice", "pipeline_source": "push",
        })
    }

    /// Buildkite's claims for a job (`buildkite-agent oidc request-token`).
    pub fn buildkite_claims(&self, org: &str, pipeline: &str, build: u64, job: &str) -> Value {
        let now = now();
        json!({
            "iss": self.url, "aud": "tollgate",
            "sub": format!("organization:{org}:pipeline:{pipeline}:ref:refs/heads/main:commit:750339bf:step:"),
            "iat": now, "nbf": now, "exp": now + 300,
            "organization_slug": org, "pipeline_slug": pipeline, "build_number": build,
            "build_branch": "main", "build_commit": "750339bf", "step_key": null,
            "job_id": job, "agent_id": "018485f6-eec2-4b61-a7be-0e35ef563df0",
        })
    }

    /// A token signed with the published key (`kid` k1).
    pub fn sign(&self, claims: &Value) -> String {
        sign(&self.published, claims)
    }

    /// A token signed with a key the JWKS does not have (`kid` k2).
    pub fn sign_unpublished(&self, claims: &Value) -> String {
        sign(&self.unpublished, claims)
    }

    /// What the token endpoint signs from now on.
    pub fn set_endpoint_claims(&self, claims: Value) {
        *self
            .state
            .endpoint_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(claims);
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_URL` for this issuer.
    pub fn request_url(&self) -> String {
        format!("{}/token?api-version=2.0", self.url)
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::Relaxed)
    }

    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::Relaxed)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Who signs in at /authorize from now on: `login` (`preferred_username`) with
    /// `groups`.
    pub fn set_user(&self, login: &str, groups: &[&str]) {
        *self.state.user.lock().unwrap_or_else(|e| e.into_inner()) = Some(json!({
            "sub": format!("sub-{login}"), "preferred_username": login,
            "name": format!("{login} (test)"), "email": format!("{login}@example.test"),
            "groups": groups,
        }));
    }

    /// Code exchanges answered, and refused (bad verifier, client, secret or code).
    pub fn exchanges(&self) -> (usize, usize) {
        (
            self.state.exchanges.load(Ordering::Relaxed),
            self.state.refused_exchanges.load(Ordering::Relaxed),
        )
    }
}

/// The client secret the token endpoint expects from the console.
pub const CLIENT_SECRET: &str = "console-secret-for-tests";
/// The client id the console is registered with.
pub const CLIENT_ID: &str = "tollgate-console";

fn query_of(path: &str) -> std::collections::HashMap<String, String> {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((decode(k), decode(v)))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// /authorize: the user the test set signs in at once; back to the client with a code.
fn authorize(state: &State, path: &str) -> (u16, Value, Option<String>) {
    let q = query_of(path);
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("response_type") != "code" || get("code_challenge_method") != "S256" {
        return (400, json!({ "error": "invalid_request" }), None);
    }
    let Some(claims) = state.user.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        let location = format!(
            "{}?error=access_denied&error_description=no%20user&state={}",
            get("redirect_uri"),
            encode(&get("state"))
        );
        return (302, json!({}), Some(location));
    };
    let code = format!(
        "code-{}-{}",
        now(),
        state.codes.lock().map_or(0, |c| c.len())
    );
    state
        .codes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            code.clone(),
            Code {
                client_id: get("client_id"),
                redirect_uri: get("redirect_uri"),
                nonce: get("nonce"),
                challenge: get("code_challenge"),
                claims,
            },
        );
    let location = format!(
        "{}?code={}&state={}",
        get("redirect_uri"),
        encode(&code),
        encode(&get("state"))
    );
    (302, json!({}), Some(location))
}

/// /oauth/token: the code for an ID token, once, with the PKCE verifier and the secret.
fn exchange(state: &State, body: &str, signing: &EncodingKey, kid: &str) -> (u16, Value) {
    let form = query_of(&format!("?{body}"));
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let code = state
        .codes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&get("code"));
    let refuse = |why: &str| {
        state.refused_exchanges.fetch_add(1, Ordering::Relaxed);
        (
            400,
            json!({ "error": "invalid_grant", "error_description": why }),
        )
    };
    let Some(code) = code else {
        return refuse("unknown or used code");
    };
    if get("grant_type") != "authorization_code" {
        return refuse("grant_type");
    }
    if get("client_id") != code.client_id || get("client_id") != CLIENT_ID {
        return refuse("client_id");
    }
    if get("client_secret") != CLIENT_SECRET {
        return refuse("client_secret");
    }
    if get("redirect_uri") != code.redirect_uri {
        return refuse("redirect_uri");
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, get("code_verifier").as_bytes());
    if base64url(digest.as_ref()) != code.challenge {
        return refuse("PKCE verifier");
    }
    state.exchanges.fetch_add(1, Ordering::Relaxed);
    let now = now();
    let mut claims = code.claims;
    claims["iss"] = json!(state.url);
    claims["aud"] = json!(CLIENT_ID);
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + 300);
    claims["nonce"] = json!(code.nonce);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let token = jsonwebtoken::encode(&header, &claims, signing).unwrap_or_default();
    (
        200,
        json!({ "access_token": "opaque", "token_type": "Bearer", "id_token": token }),
    )
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("signing a test token")
}

fn serve(mut stream: TcpStream, state: &State, jwks: &Value, signing: &EncodingKey, kid: &str) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request).to_string();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let head_len = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
    let length: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = request[head_len.min(request.len())..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let body = String::from_utf8_lossy(&body).to_string();
    let mut location = None;
    let authorized = text
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: bearer {REQUEST_TOKEN}")));
    let (code, body) = if path == "/.well-known/openid-configuration" {
        (
            200,
            json!({
                "issuer": state.url, "jwks_uri": format!("{}/jwks", state.url),
                "authorization_endpoint": format!("{}/authorize", state.url),
                "token_endpoint": format!("{}/oauth/token", state.url),
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            }),
        )
    } else if path.starts_with("/authorize?") {
        let (code, body, to) = authorize(state, &path);
        location = to;
        (code, body)
    } else if path == "/oauth/token" {
        exchange(state, &body, signing, kid)
    } else if path == "/jwks" {
        state.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        (200, jwks.clone())
    } else if path.starts_with("/token?") {
        state.token_requests.fetch_add(1, Ordering::Relaxed);
        let claims = state
            .endpoint_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match (authorized, claims, path.contains("audience=tollgate")) {
            (false, _, _) => (401, json!({ "message": "bad bearer" })),
            (true, None, _) => (404, json!({ "message": "no claims set" })),
            (true, Some(mut claims), audience_ok) => {
                if !audience_ok {
                    claims["aud"] = json!("not-requested");
                }
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some(kid.to_owned());
                let token = jsonwebtoken::encode(&header, &claims, signing).unwrap_or_default();
                (200, json!({ "value": token }))
            }
        }
    } else {
        (404, json!({ "message": "not found" }))
    };
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        302 => "Found",
        _ => "Error",
    };
    let location = location
        .map(|l| format!("Location: {l}\r\n"))
        .unwrap_or_default();
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n{location}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}
