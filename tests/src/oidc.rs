//! A local OIDC issuer for the tests: RSA keys generated at test time (openssl), a
//! discovery document and JWKS served on loopback (fetches counted), and a GitHub-style
//! token endpoint (`ACTIONS_ID_TOKEN_REQUEST_URL`).
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

struct State {
    url: String,
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
    let authorized = text
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: bearer {REQUEST_TOKEN}")));
    let (code, body) = if path == "/.well-known/openid-configuration" {
        (
            200,
            json!({ "issuer": state.url, "jwks_uri": format!("{}/jwks", state.url) }),
        )
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
    let reason = if code == 200 { "OK" } else { "Error" };
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}
