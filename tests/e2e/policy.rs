//! Policy enforcement with real clients: deny and permit, audit mode, reload keeping the
//! previous set, revocation of a live session, and the documented examples.
use std::{path::Path, process::Command, time::Duration};

use tollgate::record::DecisionLabel;
use tollgate_e2e::{
    Agent, agent::tollgate_bin, output, postgres, postgres::LiveSession, require_root,
    servers::Server, stderr, stdout, wait_for,
};

use crate::assert_metrics_match_records;

fn targets(pg_port: u16, http_port: u16) -> String {
    format!(
        "[[targets]]\nname = \"pg\"\ncidrs = [\"127.0.0.1/32\", \"::1/128\"]\nports = [{pg_port}]\n\
         protocol = \"postgres\"\ntags = {{ env = \"production\" }}\n\n\
         [[targets]]\nname = \"web\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{http_port}]\n"
    )
}

const PG_FOR_API: &str = r#"
@id("pg-api")
permit(principal, action == Action::"connect", resource)
when { resource.name == "pg" && principal.repository == "acme/api" };
"#;

fn write_policy(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).expect("policy dir");
    // Write then rename, so a reload never sees half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, dir.join(name)).expect("rename policy");
}

fn psql(pg: &tollgate_e2e::postgres::Postgres, sql: &str) -> Vec<String> {
    pg.psql_args("127.0.0.1", sql)
}

#[test]
fn a_denied_job_is_refused_and_a_permitted_job_goes_through() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let http = Server::http("127.0.0.1:0");
    let agent = Agent::start_with_policy("", &targets(pg.port, http.port()), |dir| {
        write_policy(dir, "pg.cedar", PG_FOR_API)
    });
    let sql = psql(pg, "select 'permitted'");
    let sql: Vec<&str> = sql.iter().map(String::as_str).collect();

    let allowed = agent.run_job(&[("repository", "acme/api")], &sql);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert_eq!(stdout(&allowed).trim(), "permitted");

    let denied = agent.run_job(&[("repository", "acme/web")], &sql);
    assert!(!denied.status.success(), "psql from acme/web must fail");
    assert!(stdout(&denied).is_empty());
    let url = format!("http://127.0.0.1:{}/", http.port());
    let curl = agent.run_job(&[("repository", "acme/api")], &["curl", "-sS", &url]);
    assert!(!curl.status.success(), "no policy permits the web target");
    assert_eq!(
        http.accepted.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached it"
    );

    let sessions = agent.wait_sessions(None, 3);
    let by_comm = |comm: &str, decision: DecisionLabel| {
        sessions
            .iter()
            .filter(|s| s.comm.as_deref() == Some(comm) && s.decision == decision)
            .count()
    };
    assert_eq!(by_comm("psql", DecisionLabel::Allow), 1, "{sessions:?}");
    assert_eq!(by_comm("psql", DecisionLabel::Deny), 1, "{sessions:?}");
    assert_eq!(by_comm("curl", DecisionLabel::Deny), 1, "{sessions:?}");
    let allow = sessions
        .iter()
        .find(|s| s.decision == DecisionLabel::Allow)
        .expect("allow");
    assert_eq!(allow.policy_ids[0], "pg-api");
    assert_eq!(allow.target.as_deref(), Some("pg"));
    let deny = sessions
        .iter()
        .find(|s| s.comm.as_deref() == Some("psql") && s.decision == DecisionLabel::Deny)
        .expect("deny");
    assert!(deny.reason.contains("default deny"), "{deny:?}");
    assert_metrics_match_records(&agent);
}

#[test]
fn audit_mode_lets_jobs_through_but_records_would_deny() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let agent = Agent::start_with_policy("mode = \"audit\"", &targets(pg.port, 1), |dir| {
        write_policy(dir, "pg.cedar", PG_FOR_API)
    });
    let sql = psql(pg, "select 'audited'");
    let sql: Vec<&str> = sql.iter().map(String::as_str).collect();
    let out = agent.run_job(&[("repository", "acme/web")], &sql);
    assert!(
        out.status.success(),
        "audit mode never blocks: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&out).trim(), "audited");
    let sessions = agent.wait_sessions(None, 1);
    assert_eq!(sessions[0].decision, DecisionLabel::WouldDeny);
    assert_eq!(
        agent.metric("tollgate_proxy_decisions_total{decision=\"would_deny\"}"),
        1.0
    );
    assert_metrics_match_records(&agent);
}

#[test]
fn a_reload_with_a_broken_policy_keeps_the_previous_one() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let agent = Agent::start_with_policy("", &targets(pg.port, 1), |dir| {
        write_policy(dir, "pg.cedar", PG_FOR_API)
    });
    write_policy(
        &agent.policy_dir(),
        "broken.cedar",
        "permit(principal, action, resource)\nwhen { principal.repo == };\n",
    );
    agent.signal(libc::SIGHUP);
    wait_for("a failed reload", Duration::from_secs(10), || {
        (agent.metric("tollgate_policy_reloads_total{result=\"error\"}") >= 1.0).then_some(())
    });
    // The count and the log line are written one after the other: wait for the line.
    wait_for(
        "the error, naming file:line:col, in the log",
        Duration::from_secs(5),
        || agent.log().contains("broken.cedar:2:").then_some(()),
    );
    assert_eq!(
        agent.metric("tollgate_policy_loaded"),
        1.0,
        "the old set is in force"
    );
    let sql = psql(pg, "select 'still permitted'");
    let sql: Vec<&str> = sql.iter().map(String::as_str).collect();
    let out = agent.run_job(&[("repository", "acme/api")], &sql);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(agent.status().policy.policies, 1);
}

#[test]
fn a_reload_that_revokes_access_closes_a_live_psql_session() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let agent = Agent::start_with_policy("", &targets(pg.port, 1), |dir| {
        write_policy(dir, "pg.cedar", PG_FOR_API)
    });
    let mut session = LiveSession::open(&agent, pg, &[("repository", "acme/api")]);
    assert_eq!(session.query("select 'before';"), "before");
    let generation = agent.status().policy.generation;

    // Revoke: acme/api no longer has access. The file watcher picks it up.
    write_policy(
        &agent.policy_dir(),
        "pg.cedar",
        "@id(\"pg-nobody\")\npermit(principal, action == Action::\"connect\", resource)\n\
         when { resource.name == \"pg\" && principal.repository == \"nobody\" };\n",
    );
    wait_for("the reload", Duration::from_secs(10), || {
        (agent.status().policy.generation > generation).then_some(())
    });
    wait_for("the revocation", Duration::from_secs(10), || {
        (agent.metric("tollgate_policy_revoked_total") >= 1.0).then_some(())
    });
    session.send("select 'after';");
    let (status, rest) = session.finish();
    assert!(
        !rest.iter().any(|l| l == "after"),
        "the session was closed: {rest:?}"
    );
    assert!(!status.success(), "psql reports the lost connection");

    let sessions = agent.wait_sessions(None, 1);
    assert_eq!(
        sessions[0].decision,
        DecisionLabel::Revoked,
        "{:?}",
        sessions[0]
    );
    assert!(sessions[0].reason.contains("revoked by a policy reload"));
}

#[test]
fn the_documented_examples_check_and_pass_their_tests() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let check = output(
        Command::new(tollgate_bin())
            .args(["policy", "check"])
            .arg(docs.join("policies")),
    );
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(
        stdout(&check).contains("ok: 16 policies"),
        "{}",
        stdout(&check)
    );
    let test = output(
        Command::new(tollgate_bin())
            .args(["policy", "test"])
            .arg(docs.join("policy-tests.toml"))
            .arg("--config")
            .arg(docs.join("agent.toml")),
    );
    assert!(test.status.success(), "{}{}", stdout(&test), stderr(&test));
    assert!(
        stdout(&test).contains("20 passed, 0 failed"),
        "{}",
        stdout(&test)
    );

    // A failing expectation fails the run.
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = dir.path().join("t.toml");
    std::fs::write(
        &failing,
        format!(
            "policy_dir = \"{}\"\n[[case]]\nname = \"wrong\"\ndest = \"192.0.2.1:22\"\nexpect = \"allow\"\n",
            docs.join("policies").display()
        ),
    )
    .expect("write");
    let fail = output(
        Command::new(tollgate_bin())
            .args(["policy", "test"])
            .arg(&failing)
            .arg("--config")
            .arg(docs.join("agent.toml")),
    );
    assert_eq!(fail.status.code(), Some(1));
    assert!(
        stdout(&fail).contains("FAIL wrong: expected allow, got deny"),
        "{}",
        stdout(&fail)
    );

    // Errors name file:line:col and exit non-zero.
    std::fs::write(
        dir.path().join("bad.cedar"),
        "permit(principal, action, resource)\nwhen { principal.repo == \"x\" };\n",
    )
    .expect("write");
    let bad = output(
        Command::new(tollgate_bin())
            .args(["policy", "check"])
            .arg(dir.path().join("bad.cedar")),
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("bad.cedar:2:"), "{}", stderr(&bad));
}

#[test]
fn policy_explain_decides_a_connect_a_request_and_a_tool_call_as_the_agent_would() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let explain = |args: &[&str]| {
        output(
            Command::new(tollgate_bin())
                .args(["policy", "explain", "--json", "--config"])
                .arg(docs.join("agent.toml"))
                .arg("--policy-dir")
                .arg(docs.join("policies"))
                .args(args),
        )
    };
    let decided = |args: &[&str]| -> serde_json::Value {
        let out = explain(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out)).expect("JSON")
    };
    let agents = ["--label", "repository=acme/agents"];
    let call = |tool: &str, arguments: &str| {
        let mut args = vec!["--action", "mcp:call", "--dest", "10.40.0.9:8000"];
        args.extend(agents);
        args.extend(["--tool", tool, "--arguments", arguments]);
        decided(&args)
    };
    // A tool call by its arguments, and its allowed control.
    let users = call("query", r#"{"table": "users"}"#);
    assert_eq!(users["effect"], "deny", "{users}");
    assert_eq!(users["policy_ids"], serde_json::json!(["no-users-table"]));
    assert_eq!(users["target"], "tools-mcp");
    let orders = call("query", r#"{"table": "orders"}"#);
    assert_eq!(orders["effect"], "allow", "{orders}");
    assert_eq!(
        call("deploy", r#"{"env": "prod"}"#)["effect"],
        "require_approval"
    );
    let changed = decided(&[
        "--action",
        "mcp:call",
        "--dest",
        "10.40.0.9:8000",
        "--label",
        "repository=acme/agents",
        "--tool",
        "search",
        "--changed",
    ]);
    assert_eq!(changed["policy_ids"], serde_json::json!(["no-rug-pulls"]));
    // An HTTP request, its destination from the URL.
    let read = decided(&[
        "--action",
        "http:request",
        "--method",
        "GET",
        "--url",
        "https://10.40.0.7/v1/projects/7",
        "--label",
        "repository=acme/web",
    ]);
    assert_eq!(read["effect"], "allow", "{read}");
    assert_eq!(read["target"], "internal-api");
    // Wrong combinations are errors that say what is wrong.
    for (args, says) in [
        (
            &["--action", "mcp:call", "--dest", "10.40.0.9:8000"][..],
            "needs --tool",
        ),
        (
            &["--dest", "10.40.0.9:8000", "--tool", "x"][..],
            "--tool is for --action mcp:call",
        ),
        (
            &[
                "--action",
                "mcp:call",
                "--dest",
                "10.40.0.9:8000",
                "--tool",
                "x",
                "--arguments",
                "[1]",
            ][..],
            "must be a JSON object",
        ),
        (
            &["--action", "mcp:list", "--dest", "10.40.0.9:8000"][..],
            "expected connect",
        ),
    ] {
        let out = explain(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}
