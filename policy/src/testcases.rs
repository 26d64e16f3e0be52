//! `tollgate policy test FILE`: a table of expected decisions that users run in their own
//! CI, like `opa test`. The file is TOML:
//!
//! ```toml
//! policy_dir = "policies"          # relative to this file; default: the agent's
//! mode = "enforce"                 # default enforce
//!
//! [[targets]]                      # optional; default: the agent's catalog
//! name = "prod-db"
//! cidrs = ["10.1.0.0/16"]
//! ports = [5432]
//! tags = { env = "production" }
//!
//! [[case]]
//! name = "deploy on main may reach prod-db"
//! labels = { repository = "acme/api", workflow = "deploy", ref = "refs/heads/main" }
//! dest = "10.1.2.3:5432"
//! # hostname = "db.corp.example"     # the name the job resolved dest from
//! # sni = "api.example.com"          # the name a TLS client asks for (context.sni)
//! # identity = { provider = "github", repository = "acme/api" }  # as a runner hook sets it
//! # assurance = "oidc-verified"                                   # default host-asserted
//! # action = "sql:ddl"; tables = ["orders"]; database = "shop"; user = "app"   # a statement
//! # action = "http:request"; method = "DELETE"; url = "http://api.corp/v1/x?y=1"  # a request
//! # headers = { "x-ci-run" = "run-42" }   # of those `[http] headers` names
//! # action = "mcp:call"; tool = "query"; arguments = '{"table": "users"}'  # a tool call
//! # changed = true                      # the tool changed within its session
//! expect = "allow"                 # allow | deny | require_approval
//! policies = ["prod-db-deploy"]    # optional: the determining policy ids
//! ```
use std::{collections::BTreeMap, net::SocketAddr};

use serde::Deserialize;

use crate::{Effect, Mode, PolicyEngine, Principal, Process, TargetSpec};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub policy_dir: Option<String>,
    pub mode: Option<Mode>,
    pub targets: Option<Vec<TargetSpec>>,
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Identity fields (provider, repository, ref, ...), as a runner hook sets them.
    #[serde(default)]
    pub identity: BTreeMap<String, String>,
    /// `host-asserted` (default) or `oidc-verified`.
    #[serde(default)]
    pub assurance: crate::Assurance,
    pub dest: SocketAddr,
    /// The name the job resolved `dest` from (`resource.hostname`).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The name a TLS client's ClientHello asks for (`context.sni` of a connect).
    #[serde(default)]
    pub sni: Option<String>,
    /// For `sql:*` actions: the statement's context.
    #[serde(default)]
    pub database: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub action: Option<String>,
    /// For `http:request`: the request's method and URL.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// For `http:request`: request headers (names lowercase).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// For `mcp:call`: the tool, its arguments (a JSON object's text), and whether it
    /// changed within its session.
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
    #[serde(default)]
    pub changed: bool,
    #[serde(default)]
    pub process: Option<CaseProcess>,
    pub expect: Effect,
    #[serde(default)]
    pub policies: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseProcess {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub exe: Option<String>,
}

/// What one case produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl TestFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Runs every case against `engine` (whose mode is ignored: cases expect the effect).
pub fn run(engine: &PolicyEngine, cases: &[Case]) -> Vec<Outcome> {
    cases
        .iter()
        .map(|case| {
            let action = case.action.as_deref().unwrap_or("connect");
            if action != "connect"
                && action != crate::http::ACTION
                && action != crate::mcp::ACTION
                && !action.starts_with("sql:")
            {
                return failed(
                    case,
                    format!(
                        "action `{action}` cannot be tested (connect, sql:*, http:request or \
                         mcp:call)"
                    ),
                );
            }
            let principal = Principal {
                job_id: "policy-test".to_owned(),
                labels: case.labels.clone(),
                identity: case.identity.clone(),
                assurance: case.assurance,
            };
            let p = case.process.clone().unwrap_or_default();
            let process = Process {
                pid: 1,
                uid: p.uid,
                gid: p.gid,
                comm: p.comm,
                exe: p.exe,
            };
            let subject = crate::Subject::new(&principal, &process, case.dest)
                .with_hostname(case.hostname.as_deref())
                .with_sni(case.sni.as_deref());
            let decision = if action == "connect" {
                engine.decide_connect(subject)
            } else if action == crate::http::ACTION {
                let Some(url) = &case.url else {
                    return failed(case, "an http:request case needs url".to_owned());
                };
                let method = case.method.as_deref().unwrap_or("GET");
                let mut request = match crate::HttpRequest::from_url(method, url) {
                    Ok(request) => request,
                    Err(error) => return failed(case, error),
                };
                request.headers = case
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect();
                engine.decide_http(subject, &request)
            } else if action == crate::mcp::ACTION {
                let Some(tool) = &case.tool else {
                    return failed(case, "an mcp:call case needs tool".to_owned());
                };
                let mut call =
                    match crate::McpCall::parse(tool, case.arguments.as_deref().unwrap_or("")) {
                        Ok(call) => call,
                        Err(error) => return failed(case, error),
                    };
                call.changed = case.changed;
                engine.decide_mcp(subject, &call)
            } else {
                let sql = crate::SqlContext {
                    database: case.database.clone(),
                    user: case.user.clone(),
                    tables: case.tables.clone(),
                };
                engine.decide_sql(subject, action, &sql)
            };
            let mut problems = Vec::new();
            if decision.effect != case.expect {
                problems.push(format!(
                    "expected {}, got {}",
                    case.expect.as_str(),
                    decision.effect.as_str()
                ));
            }
            if let Some(expected) = &case.policies {
                let mut want = expected.clone();
                let mut got = decision.policy_ids.clone();
                want.sort();
                got.sort();
                if want != got {
                    problems.push(format!("expected policies {want:?}, got {got:?}"));
                }
            }
            Outcome {
                name: case.name.clone(),
                passed: problems.is_empty(),
                detail: if problems.is_empty() {
                    format!("{} ({})", decision.effect.as_str(), decision.reason)
                } else {
                    format!("{} ({})", problems.join("; "), decision.reason)
                },
            }
        })
        .collect()
}

fn failed(case: &Case, detail: String) -> Outcome {
    Outcome {
        name: case.name.clone(),
        passed: false,
        detail,
    }
}
