//! Deciding from the console: a statement psql holds right now is approved by a
//! reviewer signed in with OIDC, psql goes on, the inbox's live stream says so, and the
//! records carry the reviewer's OIDC identity. The job's actor cannot approve their own.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;
use tollgate_e2e::{
    console::{Client, Console},
    oidc::Issuer,
    output_with_stdin, require_root, scaled, stderr, stdout, wait_for,
};

use super::{agent, identity, job_command};
use crate::approvals::{direct_psql, last};

/// The lines of the live approvals stream, as they arrive.
fn live_stream(console: &Console, client: &Client) -> mpsc::Receiver<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", console.port())).expect("connect");
    let cookies: String = client
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    write!(
        stream,
        "GET /api/v1/approvals/events HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookies}\r\n\
         Accept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(
    console: &Console,
    rx: &mpsc::Receiver<String>,
    want: &str,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.starts_with(want) => return started.elapsed(),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!(
        "no `{want}` line on the live stream within {within:?}\n{}",
        console.log()
    );
}

fn pending(client: &mut Client) -> Vec<serde_json::Value> {
    client.get("/api/v1/approvals?state=pending").json()["approvals"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_statement_psql_holds_is_approved_in_the_console_and_the_records_name_the_reviewer() {
    if !require_root() {
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_console_held; CREATE TABLE tollgate_console_held (id int)",
    );
    let agent = agent(pg, 9);
    let issuer = Issuer::start();
    let console = Console::start(&agent, &issuer);
    let mut sam = console.sign_in(&issuer, "sam", &["sre"]);
    let mut octocat = console.sign_in(&issuer, "octocat", &["sre"]);
    let live = live_stream(&console, &sam);
    wait_line(
        &console,
        &live,
        ": connected",
        scaled(Duration::from_secs(5)),
    );

    let args = pg.psql_session_args("127.0.0.1");
    let who = identity("acme/api", "4821", "octocat", "prod");
    let mut command = job_command(
        &agent,
        &who,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let psql = thread::spawn(move || {
        let out = output_with_stdin(
            &mut command,
            b"ALTER TABLE tollgate_console_held ADD COLUMN x int;\nSELECT 'after';\n\
              ALTER TABLE tollgate_console_held ADD COLUMN y int;\nSELECT 'end';\n\
              ALTER TABLE tollgate_console_held ADD COLUMN z int;\nSELECT 'last';\n",
        );
        (stdout(&out), stderr(&out))
    });

    // The inbox hears of the request without being asked.
    wait_line(
        &console,
        &live,
        "event: approvals",
        scaled(Duration::from_secs(10)),
    );
    let request = wait_for("the pending request", Duration::from_secs(10), || {
        let mut open = pending(&mut sam);
        (open.len() == 1).then(|| open.remove(0))
    });
    let id = request["id"].as_str().expect("id").to_owned();
    assert!(
        request["sql"]
            .as_str()
            .unwrap_or_default()
            .contains("ALTER TABLE tollgate_console_held"),
        "{request}"
    );
    assert_eq!(request["identity"]["actor"], "octocat", "{request}");
    assert_eq!(request["identity"]["repository"], "acme/api", "{request}");
    assert_eq!(request["state"], "pending");

    // The job's actor may not approve it; a denial needs a reason.
    let own = octocat.post(&format!("/api/v1/approvals/{id}/approve"), &json!({}));
    assert_eq!(own.status, 409, "{}", own.body);
    assert!(own.body.contains("self-approval"), "{}", own.body);
    let bare = sam.post(&format!("/api/v1/approvals/{id}/deny"), &json!({}));
    assert_eq!(bare.status, 400, "{}", bare.body);
    assert_eq!(pending(&mut sam).len(), 1, "still held");

    // Sam approves: psql goes on, the stream says so, the inbox empties.
    let approved = sam.post(
        &format!("/api/v1/approvals/{id}/approve"),
        &json!({ "scope": "once", "reason": "planned migration" }),
    );
    assert_eq!(approved.status, 200, "{}", approved.body);
    let record = approved.json();
    assert_eq!(record["state"], "approved");
    assert_eq!(record["reviewers"], json!(["oidc:sam"]));
    wait_line(
        &console,
        &live,
        "event: approvals",
        scaled(Duration::from_secs(10)),
    );

    // The second statement: denied with a reason, which psql shows.
    let second = wait_for("the second request", Duration::from_secs(20), || {
        pending(&mut sam)
            .into_iter()
            .find(|r| r["id"] != id.as_str())
    });
    let second_id = second["id"].as_str().expect("id").to_owned();
    let denied = sam.post(
        &format!("/api/v1/approvals/{second_id}/deny"),
        &json!({ "reason": "not during the freeze" }),
    );
    assert_eq!(denied.status, 200, "{}", denied.body);
    assert_eq!(denied.json()["state"], "denied");
    // The third: approved for 30 minutes, which makes a grant.
    let third = wait_for("the third request", Duration::from_secs(20), || {
        pending(&mut sam)
            .into_iter()
            .find(|r| r["id"] != id.as_str() && r["id"] != second_id.as_str())
    });
    let third_id = third["id"].as_str().expect("id").to_owned();
    let granted = sam.post(
        &format!("/api/v1/approvals/{third_id}/approve"),
        &json!({ "scope": "30m" }),
    );
    assert_eq!(granted.status, 200, "{}", granted.body);
    let grant_id = granted.json()["grant_id"]
        .as_str()
        .expect("a grant")
        .to_owned();
    let (out, err) = psql.join().expect("psql");
    assert!(out.lines().any(|l| l.trim() == "after"), "{out}\n{err}");
    assert!(out.lines().any(|l| l.trim() == "end"), "{out}\n{err}");
    assert_eq!(last(&out), "last", "{err}");
    assert!(err.contains("not during the freeze"), "{err}");

    // Every reviewer sees the grant; only an admin revokes it.
    let grants = sam.get("/api/v1/grants").json();
    let listed = grants["grants"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{grants}");
    assert_eq!(listed[0]["id"], grant_id.as_str());
    assert_eq!(listed[0]["approved_by"], json!(["oidc:sam"]));
    let not_admin = sam.post(&format!("/api/v1/grants/{grant_id}/revoke"), &json!({}));
    assert_eq!(not_admin.status, 403, "{}", not_admin.body);
    assert!(not_admin.body.contains("admins only"), "{}", not_admin.body);
    let mut ada = console.sign_in(&issuer, "ada", &["secops"]);
    let revoked = ada.post(&format!("/api/v1/grants/{grant_id}/revoke"), &json!({}));
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.json()["id"], grant_id.as_str());
    let again = ada.post(&format!("/api/v1/grants/{grant_id}/revoke"), &json!({}));
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(ada.get("/api/v1/grants").json()["grants"], json!([]));

    // The records carry the reviewer's OIDC identity. (All three decisions: a slow
    // host can write the last two between two looks.)
    let decided = wait_for(
        "the decisions on record",
        scaled(Duration::from_secs(10)),
        || {
            let all = sam.get("/api/v1/approvals").json();
            let rows = all["approvals"].as_array().cloned().unwrap_or_default();
            let done: Vec<_> = rows
                .into_iter()
                .filter(|r| r["state"] != "pending")
                .collect();
            let on_record = |want: &str| done.iter().any(|r| r["id"] == want);
            [id.as_str(), second_id.as_str(), third_id.as_str()]
                .into_iter()
                .all(on_record)
                .then_some(done)
        },
    );
    let first = decided
        .iter()
        .find(|r| r["id"] == id.as_str())
        .expect("first");
    assert_eq!(first["reviewers"], json!(["oidc:sam"]));
    assert_eq!(first["reason"], "planned migration");
    // The audit entries are written after the decisions' records: wait for the last.
    let audit = wait_for(
        "the revocation in the audit trail",
        Duration::from_secs(10),
        || {
            let audit = sam.get("/api/v1/audit?limit=100").json();
            audit
                .to_string()
                .contains("revoked by oidc:ada")
                .then_some(audit)
        },
    );
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    let by_console: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .filter(|d| d.contains("oidc:sam (console; issuer"))
        .collect();
    assert_eq!(by_console.len(), 3, "{audit}");
    assert!(
        by_console.iter().all(|d| d.contains("subject sub-sam")),
        "{by_console:?}"
    );
    let refused: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| {
            e["outcome"] == "refused"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("oidc:octocat"))
        })
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "the refused self-approval is audited: {audit}"
    );
}
