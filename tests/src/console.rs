//! The review console under test: `tollgate console` started on a loopback port over an
//! agent's store, and an HTTP client that signs in through the test OIDC issuer the way
//! a browser does (the flow cookie, the provider's redirect back, the session cookie)
//! and sends the CSRF token on every state-changing request.
use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use crate::{Agent, agent::tollgate_bin, oidc::Issuer};

pub struct Console {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

/// Roles for the console: eng are viewers, sre approvers, secops admins.
pub const ROLES: &str = "[console.roles]\nclaim = \"groups\"\nviewer = [\"eng\"]\n\
    approver = [\"sre\"]\nadmin = [\"secops\"]\n";

impl Console {
    /// `tollgate console` over `agent`'s store, signing in with `issuer`, deciding
    /// through `agent`'s control socket.
    pub fn start(agent: &Agent, issuer: &Issuer) -> Self {
        Self::start_args(agent, Some(issuer), &[])
    }

    /// With `args` added (e.g. `--dev-insecure-local`); `issuer` None: no [console.oidc].
    pub fn start_args(agent: &Agent, issuer: Option<&Issuer>, args: &[&str]) -> Self {
        let mut all: Vec<std::ffi::OsString> = vec!["--store".into(), agent.db_path.clone().into()];
        all.extend(args.iter().map(Into::into));
        Self::launch(agent, issuer, "", &all)
    }

    /// Over the central store at `url` (its password in `password_file`), deciding
    /// through `agent`.
    pub fn start_central(agent: &Agent, issuer: &Issuer, url: &str, password_file: &Path) -> Self {
        let central = format!(
            "[central]\npassword_file = \"{}\"\n",
            password_file.display()
        );
        Self::launch(
            agent,
            Some(issuer),
            &central,
            &["--central".into(), url.into()],
        )
    }

    fn launch(
        agent: &Agent,
        issuer: Option<&Issuer>,
        extra_config: &str,
        args: &[std::ffi::OsString],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-console-")
            .tempdir()
            .expect("tempdir");
        let secret = dir.path().join("client-secret");
        std::fs::write(&secret, crate::oidc::CLIENT_SECRET).expect("secret");
        let port = crate::ephemeral_port();
        let mut config = format!(
            "[state]\ndir = \"{}\"\n{extra_config}[console]\nlisten = \"127.0.0.1:{port}\"\n{ROLES}",
            agent.dir.path().join("state").display()
        );
        if let Some(issuer) = issuer {
            config.push_str(&format!(
                "[console.oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\n\
                 client_secret_file = \"{}\"\nredirect_url = \"http://127.0.0.1:{port}/auth/callback\"\n",
                issuer.url,
                crate::oidc::CLIENT_ID,
                secret.display()
            ));
        }
        let config_path = dir.path().join("console.toml");
        std::fs::write(&config_path, config).expect("console config");
        let log = std::fs::File::create(dir.path().join("console.log")).expect("log");
        let mut child = Command::new(tollgate_bin())
            .args(["console", "--config"])
            .arg(&config_path)
            .arg("--control-socket")
            .arg(&agent.socket)
            .args(args)
            .env("TOLLGATE_LOG", "info,tollgate::console=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("tollgate console");
        let line = crate::first_line(&mut child);
        let url = line
            .strip_prefix("console listening on ")
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| {
                panic!(
                    "console did not start: {line:?}\n{}",
                    std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default()
                )
            });
        Self { child, url, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// A client with no session.
    pub fn client(&self) -> Client {
        Client {
            base: self.url.clone(),
            cookies: BTreeMap::new(),
            csrf: None,
            origin: Some(self.url.clone()),
        }
    }

    /// A client signed in as `login` with `groups` (panics if sign-in fails).
    pub fn sign_in(&self, issuer: &Issuer, login: &str, groups: &[&str]) -> Client {
        let mut client = self.client();
        let (status, body) = client.sign_in(issuer, login, groups);
        assert_eq!(status, 200, "sign-in of {login}: {body}\n{}", self.log());
        client
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer: status, headers (lowercase names; repeated ones joined by "\n"), body.
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

pub struct Client {
    pub base: String,
    pub cookies: BTreeMap<String, String>,
    pub csrf: Option<String>,
    /// The Origin header sent on state-changing requests.
    pub origin: Option<String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into()
}

impl Client {
    fn absolute(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn answer(&mut self, mut response: ureq::http::Response<ureq::Body>) -> Answer {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in response.headers() {
            let value = value.to_str().unwrap_or_default().to_owned();
            if name.as_str() == "set-cookie"
                && let Some((pair, _)) = value.split_once(';')
                && let Some((k, v)) = pair.split_once('=')
            {
                if v.is_empty() {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_owned(), v.to_owned());
                }
            }
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|e| {
                    e.push('\n');
                    e.push_str(&value);
                })
                .or_insert(value);
        }
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn get(&mut self, path: &str) -> Answer {
        let url = self.absolute(path);
        let response = agent()
            .get(&url)
            .header("cookie", &self.cookie_header())
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        self.answer(response)
    }

    /// POST `body` as JSON with the CSRF token (if any) and the Origin.
    pub fn post(&mut self, path: &str, body: &Value) -> Answer {
        let csrf = self.csrf.clone().unwrap_or_default();
        self.post_with(path, body, &csrf)
    }

    pub fn post_with(&mut self, path: &str, body: &Value, csrf: &str) -> Answer {
        let url = self.absolute(path);
        let mut request = agent()
            .post(&url)
            .header("cookie", &self.cookie_header())
            .header("content-type", "application/json")
            .header("x-csrf-token", csrf);
        if let Some(origin) = &self.origin {
            request = request.header("origin", origin);
        }
        let response = request
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        self.answer(response)
    }

    /// Signs in as a browser would; returns the callback's status and body. On success
    /// the session cookie is kept and the CSRF token read from /api/v1/me.
    pub fn sign_in(&mut self, issuer: &Issuer, login: &str, groups: &[&str]) -> (u16, String) {
        issuer.set_user(login, groups);
        let start = self.get("/auth/login?next=%2Fsessions");
        assert_eq!(start.status, 302, "login: {}", start.body);
        let at_issuer = agent()
            .get(start.header("location"))
            .call()
            .expect("the issuer's /authorize");
        assert_eq!(at_issuer.status().as_u16(), 302, "authorize");
        let back = at_issuer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let done = self.get(&back);
        if done.status == 200 {
            let me = self.get("/api/v1/me");
            self.csrf = me.json()["csrf_token"].as_str().map(str::to_owned);
        }
        (done.status, done.body)
    }
}
