//! The console over the fleet's central store: two agents ship their records, the
//! console (reading the central store, deciding through runner-b's agent) finds both
//! hosts' sessions, replays one, verifies both chains, and approves a statement that
//! runner-a holds right now.
use std::{thread, time::Duration};

use serde_json::json;
use tollgate_e2e::{
    Agent, console::Console, oidc::Issuer, output_with_stdin, require_root, stderr, stdout,
    wait_for,
};

use super::{agent_with, identity, job_command, psql_script};
use crate::{
    approvals::{direct_psql, last},
    central::Central,
};

fn fleet_agent(central: &Central, host: &str, pg: &tollgate_e2e::postgres::Postgres) -> Agent {
    let agent = agent_with(pg, 9, &central.config(host, ""));
    crate::central::enroll(&agent);
    agent
}

#[test]
fn the_console_reads_the_fleet_and_approves_a_statement_held_on_another_host() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_console_items, tollgate_console_secret, tollgate_console_fleet; \
         CREATE TABLE tollgate_console_items (id int, name text); \
         CREATE TABLE tollgate_console_secret (id int); CREATE TABLE tollgate_console_fleet (id int)",
    );
    let central = Central::start();
    let a = fleet_agent(&central, "runner-a", pg);
    let b = fleet_agent(&central, "runner-b", pg);
    let job_a = identity("acme/api", "4821", "octocat", "prod");
    psql_script(&a, pg, &job_a, super::ONE_DENIED);
    psql_script(
        &b,
        pg,
        &identity("acme/web", "4822", "hubot", "staging"),
        "SELECT 'web';\n",
    );
    for host in ["runner-a", "runner-b"] {
        wait_for(
            &format!("{host}'s session centrally"),
            Duration::from_secs(30),
            || {
                let n = central.count(&format!(
                    "SELECT count(*) FROM tollgate.connections WHERE host = '{host}'"
                ));
                let statements = central.count(&format!(
                    "SELECT count(*) FROM tollgate.statements WHERE host = '{host}'"
                ));
                (n >= 1 && statements >= 1).then_some(())
            },
        );
    }

    let issuer = Issuer::start();
    let console = Console::start_central(&b, &issuer, &central.url, central.password_file.path());
    let mut sam = console.sign_in(&issuer, "sam", &["sre"]);
    assert!(
        sam.get("/api/v1/me").json()["source"]
            .as_str()
            .unwrap_or_default()
            .starts_with("central")
    );
    let hosts = sam.get("/api/v1/hosts").json();
    assert_eq!(hosts["hosts"], json!(["runner-a", "runner-b"]), "{hosts}");

    // Both hosts' sessions, and each filter narrows across them.
    let all = sam.get("/api/v1/sessions").json();
    let rows = all["sessions"].as_array().cloned().unwrap_or_default();
    let mut on: Vec<&str> = rows.iter().filter_map(|r| r["host"].as_str()).collect();
    on.sort_unstable();
    assert_eq!(on, ["runner-a", "runner-b"], "{all}");
    for (query, expect) in [
        ("host=runner-a", 1),
        ("repository=acme%2Fweb", 1),
        ("repository=acme%2Fapi&run=4821", 1),
        ("q=tollgate_console_secret", 1),
        ("actor=nobody-at-all", 0),
    ] {
        let page = sam.get(&format!("/api/v1/sessions?{query}")).json();
        assert_eq!(
            page["sessions"].as_array().map(Vec::len),
            Some(expect),
            "{query}: {page}"
        );
    }
    let a_row = rows
        .iter()
        .find(|r| r["host"] == "runner-a")
        .expect("runner-a's session");
    assert_eq!(a_row["statement_count"], 4, "{a_row}");
    assert_eq!(a_row["statements_denied"], 1, "{a_row}");
    let id = a_row["id"].as_str().expect("id");
    let session = sam.get(&format!("/api/v1/sessions/runner-a/{id}")).json();
    let denied: Vec<_> = session["statements"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["decision"] == "deny").collect())
        .unwrap_or_default();
    assert_eq!(denied.len(), 1, "{session}");
    assert_eq!(
        sam.get(&format!("/api/v1/sessions/runner-b/{id}")).status,
        404
    );
    let job = sam
        .get(&format!(
            "/api/v1/jobs/runner-a/{}",
            a_row["job_id"].as_str().unwrap_or_default()
        ))
        .json();
    assert_eq!(job["job"]["identity"]["run_id"], "4821", "{job}");
    assert_eq!(job["statements"].as_array().map(Vec::len), Some(4), "{job}");
    let verify = sam.get("/api/v1/audit/verify").json();
    let reports = verify["hosts"].as_array().cloned().unwrap_or_default();
    assert_eq!(reports.len(), 2, "{verify}");
    assert!(
        reports.iter().all(|h| h["report"]["failure"].is_null()),
        "{verify}"
    );

    // runner-a holds a statement; the console, deciding through runner-b, approves it.
    let args = pg.psql_session_args("127.0.0.1");
    let mut command = job_command(
        &a,
        &job_a,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let psql = thread::spawn(move || {
        let out = output_with_stdin(
            &mut command,
            b"ALTER TABLE tollgate_console_fleet ADD COLUMN x int;\nSELECT 'after';\n",
        );
        (stdout(&out), stderr(&out))
    });
    let request = wait_for(
        "runner-a's request in the console",
        Duration::from_secs(30),
        || {
            let open = sam.get("/api/v1/approvals?state=pending").json();
            open["approvals"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["host"] == "runner-a").cloned())
        },
    );
    let request_id = request["id"].as_str().expect("id").to_owned();
    let approved = sam.post(
        &format!("/api/v1/approvals/{request_id}/approve"),
        &json!({}),
    );
    assert_eq!(approved.status, 200, "{}\n{}", approved.body, console.log());
    let (out, err) = psql.join().expect("psql");
    assert_eq!(last(&out), "after", "{err}");
    let decided = wait_for(
        "the decision on runner-a's record",
        Duration::from_secs(30),
        || {
            let record = sam.get(&format!("/api/v1/approvals/{request_id}")).json();
            (record["state"] == "approved").then_some(record)
        },
    );
    let reviewers = decided["reviewers"].as_array().cloned().unwrap_or_default();
    assert_eq!(reviewers, [json!("oidc:sam@runner-b")], "{decided}");
}
