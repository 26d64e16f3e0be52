//! The review console (`tollgate console`) over a store filled by real jobs: psql
//! sessions with allowed, denied and held statements, and curl at L4. The API is read
//! through a client that signs in with the test OIDC issuer as a browser does.
mod approvals;
mod browser;
mod fleet;
mod openapi;

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use tollgate_e2e::{
    Agent,
    console::{Client, Console},
    oidc::Issuer,
    output_with_stdin,
    postgres::Postgres,
    require_root,
    servers::Server,
    stderr, stdout,
};

pub(crate) const POLICY: &str = r#"
@id("pg-connect")
permit(principal, action == Action::"connect", resource)
when { resource.name == "pg" || resource.name == "web" };

@id("pg-read-write")
permit(principal, action in [Action::"sql:read", Action::"sql:write"], resource)
when { resource.name == "pg" };

@id("no-secret-writes")
forbid(principal, action == Action::"sql:write", resource)
when { context has tables && context.tables.contains("tollgate_console_secret") };

@id("ddl-needs-approval")
@approval("required")
permit(principal, action == Action::"sql:ddl", resource)
when { resource.name == "pg" };
"#;

/// Four statements, the third denied by `no-secret-writes`.
pub(crate) const ONE_DENIED: &str = "SELECT 'hello';\nINSERT INTO tollgate_console_items \
    VALUES (1, 'one');\nINSERT INTO tollgate_console_secret VALUES (1);\nSELECT 'done';\n";

/// An agent with `pg` (PostgreSQL) and `web` (an HTTP server's port) as targets.
pub(crate) fn agent(pg: &Postgres, web_port: u16) -> Agent {
    agent_with(pg, web_port, "")
}

/// The same, with `extra` (whole tables) added to its config.
pub(crate) fn agent_with(pg: &Postgres, web_port: u16, extra: &str) -> Agent {
    let config = format!(
        "{extra}\n[approvals]\ntimeout = \"2m\"\n[[targets]]\nname = \"pg\"\n\
         cidrs = [\"127.0.0.1/32\"]\nports = [{}]\nprotocol = \"postgres\"\n\
         [[targets]]\nname = \"web\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{web_port}]\n",
        pg.port
    );
    Agent::start_with_policy("", &config, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("policy.cedar"), POLICY).expect("policy");
    })
}

/// `tollgate run --identity-file` with these identity fields, running `cmd`.
pub(crate) fn job_command(
    agent: &Agent,
    identity: &[(&str, &str)],
    cmd: &[&str],
) -> std::process::Command {
    let file = agent
        .dir
        .path()
        .join(format!("identity-{}.toml", uuid_like()));
    let text: String = identity
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    std::fs::write(&file, text).expect("identity file");
    let mut command = agent.tollgate();
    command
        .arg("run")
        .arg("--identity-file")
        .arg(&file)
        .arg("--")
        .args(cmd);
    command
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn identity<'a>(
    repository: &'a str,
    run: &'a str,
    actor: &'a str,
    environment: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("provider", "github"),
        ("repository", repository),
        ("workflow", "deploy"),
        ("run_id", run),
        ("job", "migrate"),
        ("actor", actor),
        ("environment", environment),
    ]
}

fn psql_script(agent: &Agent, pg: &Postgres, identity: &[(&str, &str)], script: &str) -> String {
    let args = pg.psql_session_args("127.0.0.1");
    let mut command = job_command(
        agent,
        identity,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let out = output_with_stdin(&mut command, script.as_bytes());
    format!("{}{}", stdout(&out), stderr(&out))
}

fn ids(page: &Value) -> Vec<String> {
    page["sessions"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn sessions(client: &mut Client, query: &str) -> Value {
    let answer = client.get(&format!("/api/v1/sessions?{query}"));
    assert_eq!(answer.status, 200, "{query}: {}", answer.body);
    answer.json()
}

#[test]
fn the_api_finds_pages_and_replays_real_jobs_and_enforces_each_role() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    crate::approvals::direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_console_items, tollgate_console_secret; \
         CREATE TABLE tollgate_console_items (id int, name text); \
         CREATE TABLE tollgate_console_secret (id int)",
    );
    let web = Server::http("127.0.0.1:0");
    let agent = agent(pg, web.port());
    let job_a = identity("acme/api", "4821", "octocat", "prod");
    let out = psql_script(
        &agent,
        pg,
        &job_a,
        "SELECT 'hello';\nINSERT INTO tollgate_console_items VALUES (1, 'one'), (2, 'two');\n\
         INSERT INTO tollgate_console_secret VALUES (1);\nSELECT count(*) FROM tollgate_console_items;\n",
    );
    assert!(
        out.contains("permission denied") || out.contains("42501") || out.contains("denied"),
        "{out}"
    );
    let job_b = identity("acme/web", "4822", "hubot", "staging");
    psql_script(&agent, pg, &job_b, "SELECT 'web';\n");
    let url = format!("http://127.0.0.1:{}/", web.port());
    let out = job_command(
        &agent,
        &identity("acme/web", "4823", "hubot", "staging"),
        &["curl", "-sS", "-m", "5", &url],
    )
    .output()
    .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 25 sessions of one job, for paging.
    let load = identity("acme/load", "9000", "loader", "ci");
    let args = pg.psql_args("127.0.0.1", "SELECT 1");
    let loop_script = format!(
        "for i in $(seq 25); do {} >/dev/null || exit 1; done",
        args.iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = job_command(&agent, &load, &["sh", "-c", &loop_script])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = agent.wait_sessions(None, 28);
    assert_eq!(recorded.len(), 28);

    let issuer = Issuer::start();
    let console = Console::start(&agent, &issuer);

    // Nobody signed in: only health and sign-in answer.
    let mut anonymous = console.client();
    assert_eq!(anonymous.get("/healthz").status, 200);
    for path in [
        "/api/v1/sessions",
        "/api/v1/me",
        "/api/v1/openapi.json",
        "/api/v1/audit",
        "/assets/app.js",
    ] {
        assert_eq!(anonymous.get(path).status, 401, "{path}");
    }
    let page = anonymous.get("/sessions?repository=acme%2Fapi");
    assert_eq!(page.status, 302);
    assert!(
        page.header("location")
            .starts_with("/auth/login?next=%2Fsessions"),
        "{}",
        page.header("location")
    );
    let denied = anonymous.post("/api/v1/approvals/x/approve", &json!({}));
    assert_eq!(denied.status, 401);

    // A viewer reads everything.
    let mut viewer = console.sign_in(&issuer, "vera", &["eng"]);
    let cookie = viewer.cookies.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        cookie,
        ["__Host-tollgate-session"],
        "the flow cookie is cleared"
    );
    let me = viewer.get("/api/v1/me").json();
    assert_eq!(me["role"], "viewer");
    assert_eq!(me["login"], "vera");
    assert_eq!(me["dev_insecure_local"], false);

    // Filters: repository and run find job A's one session.
    let a = sessions(&mut viewer, "repository=acme%2Fapi&run=4821");
    let a_rows = a["sessions"].as_array().expect("rows").clone();
    assert_eq!(a_rows.len(), 1, "{a}");
    let a_session = &a_rows[0];
    assert_eq!(a_session["job_identity"]["repository"], "acme/api");
    assert_eq!(a_session["target"], "pg");
    assert_eq!(a_session["statement_count"], 4);
    assert_eq!(a_session["statements_denied"], 1);
    let host = a_session["host"].as_str().expect("host").to_owned();
    // Each filter alone narrows as it should, and a control of the other value.
    for (query, expect) in [
        ("actor=octocat", 1),
        ("actor=hubot", 2),
        ("environment=staging", 2),
        ("repository=acme%2Fweb", 2),
        ("repository=acme%2Fweb&protocol=tcp", 1),
        ("repository=acme%2Fweb&protocol=postgres", 1),
        ("target=web", 1),
        ("provider=github&repository=acme%2Fload&limit=500", 25),
        ("q=tollgate_console_secret", 1),
        ("q=TOLLGATE_CONSOLE_ITEMS", 1),
        ("q=no_such_table_anywhere", 0),
        ("kind=write", 1),
        ("kind=ddl", 0),
        ("decision=allow&repository=acme%2Fapi", 1),
        ("decision=deny&repository=acme%2Fapi", 0),
        ("workflow=deploy&job=migrate&limit=500", 28),
        ("host=another-host", 0),
    ] {
        let page = sessions(&mut viewer, query);
        assert_eq!(ids(&page).len(), expect, "{query}: {page}");
    }
    let first = recorded
        .iter()
        .map(|s| s.started_at)
        .min()
        .unwrap_or_default();
    let last = recorded
        .iter()
        .map(|s| s.started_at)
        .max()
        .unwrap_or_default();
    assert_eq!(
        ids(&sessions(
            &mut viewer,
            &format!("from={}&limit=500", last + 1)
        ))
        .len(),
        0
    );
    assert_eq!(
        ids(&sessions(&mut viewer, &format!("to={first}&limit=500"))).len(),
        0
    );
    assert_eq!(
        ids(&sessions(
            &mut viewer,
            &format!("from={first}&to={}&limit=500", last + 1)
        ))
        .len(),
        28
    );
    let bad = viewer.get("/api/v1/sessions?decision=maybe");
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("`decision`"),
        "{}",
        bad.body
    );

    // Paging: 10 at a time, newest first, every session once.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("repository=acme%2Fload&limit=10&cursor={c}"),
            None => "repository=acme%2Fload&limit=10".to_owned(),
        };
        let page = sessions(&mut viewer, &query);
        let starts: Vec<i64> = page["sessions"]
            .as_array()
            .map(|r| r.iter().filter_map(|s| s["started_at"].as_i64()).collect())
            .unwrap_or_default();
        assert!(
            starts.windows(2).all(|w| w[0] >= w[1]),
            "newest first: {starts:?}"
        );
        seen.extend(ids(&page));
        pages += 1;
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    let mut distinct = seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((seen.len(), distinct.len()), (25, 25));

    // Replay: the statements in order, the denied one with its policy and SQLSTATE.
    let id = a_session["id"].as_str().expect("id");
    let session = viewer.get(&format!("/api/v1/sessions/{host}/{id}")).json();
    let statements = session["statements"].as_array().expect("statements");
    let seqs: Vec<i64> = statements
        .iter()
        .filter_map(|s| s["seq"].as_i64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let denied: Vec<&Value> = statements
        .iter()
        .filter(|s| s["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{session}");
    assert_eq!(denied[0]["policy_ids"], json!(["no-secret-writes"]));
    assert_eq!(denied[0]["sqlstate"], "42501");
    let insert = statements
        .iter()
        .find(|s| {
            s["sql"]
                .as_str()
                .is_some_and(|q| q.contains("tollgate_console_items VALUES"))
        })
        .expect("the allowed insert");
    assert_eq!(
        (insert["decision"].as_str(), insert["rows"].as_i64()),
        (Some("allow"), Some(2))
    );
    assert_eq!(
        viewer
            .get(&format!("/api/v1/sessions/{host}/no-such-id"))
            .status,
        404
    );

    // The job: identity and everything it did.
    let job_id = a_session["job_id"].as_str().expect("job id");
    let job = viewer.get(&format!("/api/v1/jobs/{host}/{job_id}")).json();
    assert_eq!(job["job"]["identity"]["run_id"], "4821");
    assert_eq!(job["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(job["statements"].as_array().map(Vec::len), Some(4));

    // The audit trail and the chain.
    let verify = viewer.get("/api/v1/audit/verify").json();
    let report = &verify["hosts"][0];
    assert!(report["report"]["failure"].is_null(), "{verify}");
    assert!(
        report["report"]["records"].as_u64().unwrap_or(0) > 28,
        "{verify}"
    );
    assert_eq!(viewer.get("/api/v1/audit?limit=10").status, 200);

    // Responses carry a strict CSP and the rest.
    let index = viewer.get("/sessions");
    assert_eq!(index.status, 200);
    let csp = index.header("content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(index.header("x-content-type-options"), "nosniff");
    assert_eq!(index.header("x-frame-options"), "DENY");

    // A viewer cannot decide, even with its CSRF token; without the token nobody can.
    let no = viewer.post("/api/v1/approvals/some-id/approve", &json!({}));
    assert_eq!(no.status, 403, "{}", no.body);
    assert!(no.body.contains("approvers only"), "{}", no.body);
    let mut approver = console.sign_in(&issuer, "sam", &["sre", "eng"]);
    assert_eq!(approver.get("/api/v1/me").json()["role"], "approver");
    let no_token = approver.post_with("/api/v1/approvals/some-id/approve", &json!({}), "");
    assert_eq!(no_token.status, 403);
    assert!(no_token.body.contains("CSRF"), "{}", no_token.body);
    let wrong_token = approver.post_with("/api/v1/approvals/some-id/approve", &json!({}), "forged");
    assert_eq!(wrong_token.status, 403);
    approver.origin = Some("http://evil.example".to_owned());
    let wrong_origin = approver.post("/api/v1/approvals/some-id/approve", &json!({}));
    assert_eq!(wrong_origin.status, 403, "a request from another origin");
    approver.origin = Some(console.url.clone());
    // With the token, from this origin: it reaches the agent (nothing is pending).
    let not_pending = approver.post("/api/v1/approvals/some-id/approve", &json!({}));
    assert_eq!(not_pending.status, 409, "{}", not_pending.body);
    assert!(
        not_pending.body.contains("no pending request"),
        "{}",
        not_pending.body
    );
    // Another session's token is not this one's.
    let other = viewer.csrf.clone().unwrap_or_default();
    assert_eq!(
        approver
            .post_with("/api/v1/approvals/some-id/approve", &json!({}), &other)
            .status,
        403
    );
    let admin = console.sign_in(&issuer, "ada", &["secops"]);
    let mut admin = admin;
    assert_eq!(admin.get("/api/v1/me").json()["role"], "admin");

    // Someone without a console role is refused at sign-in.
    let mut stranger = console.client();
    let (status, body) = stranger.sign_in(&issuer, "mallory", &["marketing"]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no console role"), "{body}");
    assert_eq!(stranger.get("/api/v1/me").status, 401);

    // Signing out ends the session.
    assert_eq!(viewer.post("/auth/logout", &json!({})).status, 200);
    assert_eq!(viewer.get("/api/v1/sessions").status, 401);

    // The OpenAPI document describes what the API answered.
    let document = admin.get("/api/v1/openapi.json").json();
    let a_page = sessions(&mut admin, "repository=acme%2Fapi");
    openapi::check(&document, "/api/v1/sessions", &a_page);
    openapi::check(&document, "/api/v1/sessions/{host}/{id}", &session);
    openapi::check(&document, "/api/v1/jobs/{host}/{id}", &job);
    openapi::check(&document, "/api/v1/audit/verify", &verify);
    openapi::check(&document, "/api/v1/me", &admin.get("/api/v1/me").json());
    openapi::check(
        &document,
        "/api/v1/audit",
        &admin.get("/api/v1/audit?limit=5").json(),
    );
    openapi::check(
        &document,
        "/api/v1/approvals",
        &admin.get("/api/v1/approvals").json(),
    );

    // A tampered store is flagged, with the record.
    tamper(&agent.db_path, id);
    let verify = admin.get("/api/v1/audit/verify").json();
    let failure = &verify["hosts"][0]["report"]["failure"];
    assert_eq!(failure["kind"], "changed", "{verify}");
    assert!(
        console.log().contains("console sign-in"),
        "{}",
        console.log()
    );
}

/// Rewrites a recorded statement's SQL behind the agent's back.
pub(crate) fn tamper(db: &Path, session: &str) {
    let conn = rusqlite::Connection::open(db).expect("store");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let changed = conn
        .execute(
            "UPDATE statements SET sql = 'SELECT 1 -- nothing to see' WHERE connection_id = ?1 \
             AND decision = 'deny'",
            [session],
        )
        .expect("tamper");
    assert_eq!(changed, 1);
}

#[test]
fn dev_insecure_local_signs_everyone_in_on_loopback_only() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let out = agent.run_job(&[("repo", "acme/dev")], &["true"]);
    assert!(out.status.success());
    let console = Console::start_args(&agent, None, &["--dev-insecure-local"]);
    let mut client = console.client();
    let me = client.get("/api/v1/me");
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["dev_insecure_local"], true);
    assert_eq!(me.json()["role"], "admin");
    // State-changing requests still need the CSRF token.
    assert_eq!(
        client
            .post("/api/v1/approvals/x/deny", &json!({"reason": "r"}))
            .status,
        403
    );
    // Not on another address, and not without a sign-in at all.
    let refused = agent
        .tollgate()
        .args(["console", "--store"])
        .arg(&agent.db_path)
        .args(["--listen", "0.0.0.0:0", "--dev-insecure-local"])
        .output()
        .expect("console");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("loopback"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let refused = agent
        .tollgate()
        .args(["console", "--store"])
        .arg(&agent.db_path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("console");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("[console.oidc]"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
