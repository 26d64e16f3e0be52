//! `tollgate policy check | explain | test`: offline tools over the same engine the agent
//! runs, for reviewing policies and testing them in CI.
use std::{
    net::{SocketAddr, ToSocketAddrs as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use tollgate_policy::{
    Catalog, Mode, PolicyEngine, Principal, Process, Source, Subject,
    testcases::{self, TestFile},
};

use crate::{config::Config, enforce::read_sources};

/// Loads PATH (a file or a directory of *.cedar files) as sources.
fn sources(path: &Path) -> anyhow::Result<Vec<Source>> {
    if path.is_dir() {
        Ok(read_sources(path)?.unwrap_or_default())
    } else {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(vec![Source {
            name: path.display().to_string(),
            text,
        }])
    }
}

/// `tollgate policy check [PATH]`.
pub fn check(path: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?.0;
    let path = path.unwrap_or(config.policy.dir);
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    let sources = sources(&path)?;
    match tollgate_policy::load_with(&sources, &config.http.headers) {
        Ok(bundle) => {
            println!(
                "ok: {} policies in {} file(s) under {}",
                bundle.len(),
                sources.len(),
                path.display()
            );
            for (id, file) in &bundle.origins {
                println!("  {id}  ({file})");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            eprintln!("{} error(s)", errors.0.len());
            Ok(ExitCode::from(1))
        }
    }
}

fn engine(
    config: &Config,
    policy_dir: Option<&Path>,
    mode: Option<Mode>,
) -> anyhow::Result<PolicyEngine> {
    let dir = policy_dir.unwrap_or(&config.policy.dir);
    let sources = match read_sources(dir)? {
        Some(sources) => sources,
        None => bail!("policy directory {} does not exist", dir.display()),
    };
    let bundle = tollgate_policy::load_with(&sources, &config.http.headers)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let catalog =
        Catalog::new(config.targets.clone()).map_err(|e| anyhow::anyhow!("targets: {e}"))?;
    Ok(PolicyEngine::new(
        bundle,
        catalog,
        mode.unwrap_or(config.policy.mode),
    ))
}

/// `HOST:PORT` of a URL (port 80 for http, 443 for https, where it names none).
fn url_destination(url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("--url {url}: expected http://HOST/PATH"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.ends_with(':') && port.parse::<u16>().is_ok());
    Ok(if has_port {
        authority.to_owned()
    } else {
        let port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        format!("{authority}:{port}")
    })
}

fn resolve(dest: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = dest.parse() {
        return Ok(addr);
    }
    dest.to_socket_addrs()
        .with_context(|| format!("--dest {dest}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--dest {dest}: no address"))
}

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// The job's labels (repeatable). Without --identity, identity fields come from
    /// labels of their name.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::jobs::parse_label)]
    labels: Vec<(String, String)>,
    /// An identity field (repeatable), as a runner hook sets it: --identity provider=github.
    #[arg(long = "identity", value_name = "FIELD=VALUE", value_parser = crate::jobs::parse_label)]
    identity: Vec<(String, String)>,
    /// The job's assurance: host-asserted or oidc-verified.
    #[arg(long, default_value = "host-asserted", value_parser = parse_assurance)]
    assurance: tollgate_policy::Assurance,
    /// The destination, HOST:PORT (for `http:request` and `mcp:call`, by default the
    /// URL's host and port).
    #[arg(long, required_unless_present = "url")]
    dest: Option<String>,
    /// `connect`, `sql:read|write|ddl|admin|unknown` for one statement,
    /// `http:request` for one request, or `mcp:call` for one MCP tool call.
    #[arg(long, default_value = "connect")]
    action: String,
    /// For `http:request`: the request's method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// For `http:request`: the request's URL (`http://host[:port]/path?query`).
    #[arg(long)]
    url: Option<String>,
    /// For `http:request`: a request header (repeatable), as `[http] headers` names it.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = crate::jobs::parse_label)]
    headers: Vec<(String, String)>,
    /// For `mcp:call`: the tool's name.
    #[arg(long)]
    tool: Option<String>,
    /// For `mcp:call`: the call's arguments, a JSON object.
    #[arg(long, value_name = "JSON")]
    arguments: Option<String>,
    /// For `mcp:call`: the tool changed within its session (`context.changed`).
    #[arg(long)]
    changed: bool,
    /// The name the job resolved the destination from (`resource.hostname`).
    #[arg(long)]
    hostname: Option<String>,
    /// For `connect`: the name a TLS client asks for in its ClientHello
    /// (`context.sni`).
    #[arg(long)]
    sni: Option<String>,
    /// For `sql:*`: a table the statement uses (repeatable).
    #[arg(long = "table")]
    tables: Vec<String>,
    /// For `sql:*`: the database.
    #[arg(long, default_value = "")]
    database: String,
    /// For `sql:*`: the database user.
    #[arg(long, default_value = "")]
    db_user: String,
    /// The process's uid.
    #[arg(long, default_value_t = 0)]
    uid: u32,
    /// The process's comm.
    #[arg(long, default_value = "")]
    comm: String,
    /// Policies to use instead of the config's policy.dir.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// `tollgate policy explain`.
pub fn explain(args: ExplainArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    const SQL_ACTIONS: [&str; 5] = [
        "sql:read",
        "sql:write",
        "sql:ddl",
        "sql:admin",
        "sql:unknown",
    ];
    let http = args.action == tollgate_policy::http::ACTION;
    let mcp = args.action == tollgate_policy::mcp::ACTION;
    if args.action != "connect" && !http && !mcp && !SQL_ACTIONS.contains(&args.action.as_str()) {
        bail!(
            "--action {}: expected connect, http:request, mcp:call or one of {}",
            args.action,
            SQL_ACTIONS.join(", ")
        );
    }
    let call = match (&args.tool, mcp) {
        (Some(tool), true) => {
            let mut call =
                tollgate_policy::McpCall::parse(tool, args.arguments.as_deref().unwrap_or(""))
                    .map_err(|e| anyhow::anyhow!("--arguments: {e}"))?;
            call.changed = args.changed;
            Some(call)
        }
        (None, true) => bail!("--action mcp:call needs --tool"),
        (Some(_), false) => bail!("--tool is for --action mcp:call"),
        (None, false) if args.arguments.is_some() => {
            bail!("--arguments is for --action mcp:call")
        }
        (None, false) => None,
    };
    let request = match (&args.url, http) {
        (Some(url), true) => {
            let mut request = tollgate_policy::HttpRequest::from_url(&args.method, url)
                .map_err(|e| anyhow::anyhow!("--url {e}"))?;
            request.headers = args
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
            Some(request)
        }
        (None, true) => bail!("--action http:request needs --url"),
        (Some(_), false) if !mcp => bail!("--url is for --action http:request or mcp:call"),
        (Some(_), false) => None,
        (None, false) => None,
    };
    let (config, _) = Config::load(config)?;
    let engine = engine(&config, args.policy_dir.as_deref(), None)?;
    let dest = match (&args.dest, &args.url) {
        (Some(dest), _) => dest.clone(),
        (None, Some(url)) => url_destination(url)?,
        (None, None) => bail!("--dest is required"),
    };
    let destination = resolve(&dest)?;
    let principal = Principal {
        job_id: "explain".to_owned(),
        labels: args.labels.into_iter().collect(),
        identity: args.identity.into_iter().collect(),
        assurance: args.assurance,
    };
    let process = Process {
        pid: 0,
        uid: args.uid,
        gid: 0,
        comm: args.comm,
        exe: None,
    };
    let subject = Subject::new(&principal, &process, destination)
        .with_hostname(args.hostname.as_deref())
        .with_sni(args.sni.as_deref());
    let decision = if let Some(request) = &request {
        engine.decide_http(subject, request)
    } else if let Some(call) = &call {
        engine.decide_mcp(subject, call)
    } else if args.action == "connect" {
        engine.decide_connect(subject)
    } else {
        let sql = tollgate_policy::SqlContext {
            database: args.database,
            user: args.db_user,
            tables: args.tables,
        };
        engine.decide_sql(subject, &args.action, &sql)
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decision)?);
    } else {
        println!("decision:    {}", decision.label());
        println!("effect:      {}", decision.effect.as_str());
        println!(
            "mode:        {}",
            if decision.enforced {
                "enforce"
            } else {
                "audit (not blocking)"
            }
        );
        println!("destination: {destination}");
        println!("target:      {}", decision.target);
        println!(
            "policies:    {}",
            if decision.policy_ids.is_empty() {
                "(none)".to_owned()
            } else {
                decision.policy_ids.join(", ")
            }
        );
        println!("reason:      {}", decision.reason);
    }
    Ok(ExitCode::SUCCESS)
}

/// `tollgate policy test FILE`.
pub fn test(file: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let tests = TestFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let (mut config, _) = Config::load(config)?;
    if let Some(targets) = tests.targets.clone() {
        config.targets = targets;
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let policy_dir = tests.policy_dir.as_ref().map(|dir| base.join(dir));
    let engine = engine(&config, policy_dir.as_deref(), tests.mode)?;
    let outcomes = testcases::run(&engine, &tests.cases);
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    for outcome in &outcomes {
        println!(
            "{} {}: {}",
            if outcome.passed { "PASS" } else { "FAIL" },
            outcome.name,
            outcome.detail
        );
    }
    println!("{} passed, {} failed", outcomes.len() - failed, failed);
    Ok(if failed == 0 && !outcomes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn parse_assurance(text: &str) -> Result<tollgate_policy::Assurance, String> {
    tollgate_policy::Assurance::parse(text)
        .ok_or_else(|| format!("{text:?}: expected host-asserted or oidc-verified"))
}
