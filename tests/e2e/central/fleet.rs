//! Fleet-wide approvals: a statement held on host A is approved with the CLI on host
//! B (through B's agent, signed with B's key), and A's client goes on within a second.
//! A decision written into the store without a valid signature is refused by A.
use std::time::{Duration, Instant};

use tollgate::approvals::{ApprovalRecord, ApprovalState};
use tollgate_e2e::{Agent, output, postgres::postgres, require_root, stderr, stdout, wait_for};

use super::Central;
use crate::approvals::{POLICY, direct_psql, has_column, last, psql_in_job};

fn fleet_agent(central: &Central, host: &str, pg: &tollgate_e2e::postgres::Postgres) -> Agent {
    let approvals = format!("timeout = \"60s\"\n\n{}", central.config(host, ""));
    let agent = crate::approvals::agent_with(pg, &approvals, POLICY);
    super::enroll(&agent);
    agent
}

/// `tollgate approvals ARGS --central URL` on `agent`'s host.
fn approvals(central: &Central, agent: &Agent, args: &[&str]) -> std::process::Output {
    output(
        agent
            .tollgate()
            .arg("approvals")
            .args(args)
            .args(["--central", &central.url, "--central-config"])
            .arg(&agent.config_path),
    )
}

fn fleet_pending(central: &Central, on: &Agent) -> Vec<(String, ApprovalRecord)> {
    let out = approvals(central, on, &["list", "--pending", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).expect("json");
    rows.into_iter()
        .map(|row| {
            let host = row["host"].as_str().unwrap_or_default().to_owned();
            (host, serde_json::from_value(row).expect("record"))
        })
        .collect()
}

#[test]
fn a_request_held_on_one_host_is_approved_from_another_within_a_second() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_fleet; CREATE TABLE tollgate_fleet (id int)",
    );
    let central = Central::start();
    let a = fleet_agent(&central, "runner-a", pg);
    let b = fleet_agent(&central, "runner-b", pg);

    // Forged: a decision for A's request that B's key did not sign is refused by A.
    let psql = psql_in_job(
        &a,
        pg,
        "ALTER TABLE tollgate_fleet ADD COLUMN forged int;\nSELECT 'after';\n",
    );
    let (host, request) = wait_for("A's request in the store", Duration::from_secs(20), || {
        let mut pending = fleet_pending(&central, &b);
        (pending.len() == 1).then(|| pending.remove(0))
    });
    assert_eq!(host, "runner-a");
    assert!(
        request
            .sql
            .as_deref()
            .unwrap_or("")
            .contains("ADD COLUMN forged")
    );
    central.sql(&format!(
        "INSERT INTO tollgate.approval_decisions (request_id, by_host, decider, verdict, at, \
         signature) VALUES ('{}', 'runner-b', \
         '{{\"key\":\"uid:0@runner-b\",\"uid\":0,\"login\":\"root\",\"shown\":\"root@runner-b\"}}', \
         '{{\"verdict\":\"approve\",\"scope\":\"once\"}}', 1, '\\x00'); \
         NOTIFY tollgate_approvals, 'runner-a'",
        request.id
    ));
    let outcome = wait_for(
        "A's verdict on the forgery",
        Duration::from_secs(10),
        || {
            let o = central.sql(&format!(
            "SELECT coalesce(outcome, '') FROM tollgate.approval_decisions WHERE request_id = '{}'",
            request.id
        ));
            (!o.is_empty()).then_some(o)
        },
    );
    assert!(outcome.contains("not signed by runner-b"), "{outcome}");
    assert!(!has_column(pg, "tollgate_fleet", "forged"), "still held");
    // B's own reviewer approves it: signed by B, applied by A.
    let out = approvals(
        &central,
        &b,
        &["approve", &request.id, "--reason", "fleet release"],
    );
    let approved_at = Instant::now();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("approved"), "{}", stdout(&out));
    let (out, err) = psql.join().expect("psql");
    let waited = approved_at.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "A's client went on after {waited:?}"
    );
    assert!(has_column(pg, "tollgate_fleet", "forged"), "{err}");
    assert_eq!(last(&out), "after", "{out} {err}");
    let record: ApprovalRecord = a.typed(&["approvals", "show", &request.id, "--json"]);
    assert_eq!(record.state, Some(ApprovalState::Approved));
    assert_eq!(record.reviewers, ["root@runner-b"]);
    let audit = a.audit(&[]);
    assert!(
        audit
            .iter()
            .any(|e| e.action == "approval_approve" && e.detail.contains("by root@runner-b")),
        "{audit:?}"
    );
    let (_, shown) = {
        let out = approvals(&central, &b, &["show", &request.id, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
        (v["host"].clone(), v)
    };
    assert_eq!(shown["state"], "approved");

    // Denied from B: A's client gets 42501 with B's reason.
    let psql = psql_in_job(
        &a,
        pg,
        "ALTER TABLE tollgate_fleet ADD COLUMN refused int;\nSELECT 'after';\n",
    );
    let (_, request) = wait_for("the second request", Duration::from_secs(20), || {
        let mut pending = fleet_pending(&central, &b);
        (pending.len() == 1).then(|| pending.remove(0))
    });
    let out = approvals(
        &central,
        &b,
        &["deny", &request.id, "--reason", "not from runner-b"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = psql.join().expect("psql");
    assert!(err.contains("not from runner-b"), "{err}");
    assert_eq!(last(&out), "after");
    assert!(!has_column(pg, "tollgate_fleet", "refused"));
    // A decided request cannot be decided again.
    let out = approvals(&central, &b, &["approve", &request.id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("denied, not pending"),
        "{}",
        stderr(&out)
    );

    grants_are_fleet_wide(&central, &a, &b, pg);
}

/// A grant with a duration's scope, made by approving A's request from B, lets the same
/// statement shape of the same repository and workflow pass on B too; a grant written
/// into the store without its host's signature is ignored.
fn grants_are_fleet_wide(
    central: &Central,
    a: &Agent,
    b: &Agent,
    pg: &tollgate_e2e::postgres::Postgres,
) {
    let script =
        "ALTER TABLE tollgate_fleet ADD COLUMN IF NOT EXISTS granted int;\nSELECT 'after';\n";
    let psql = psql_in_job(a, pg, script);
    let (_, request) = wait_for("the request to grant", Duration::from_secs(20), || {
        let mut pending = fleet_pending(central, b);
        (pending.len() == 1).then(|| pending.remove(0))
    });
    let out = approvals(central, b, &["approve", &request.id, "--scope", "30m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, err) = psql.join().expect("psql");
    assert_eq!(last(&out), "after", "{err}");
    let record: ApprovalRecord = a.typed(&["approvals", "show", &request.id, "--json"]);
    let grant = record.grant_id.expect("a grant");
    // B takes the grant in within its poll.
    wait_for("B to hold A's grant", Duration::from_secs(10), || {
        let list: serde_json::Value = b.typed(&["approvals", "list", "--json"]);
        list["grants"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["id"] == grant.as_str()))
            .then_some(())
    });
    let started = Instant::now();
    let (out, err) = psql_in_job(b, pg, script).join().expect("psql on B");
    assert_eq!(last(&out), "after", "{err}");
    assert!(
        started.elapsed() < tollgate_e2e::scaled(Duration::from_secs(5)),
        "not held on B"
    );
    assert!(!err.contains("waits for approval"), "{err}");
    let sessions = b.wait_sessions(None, 1);
    let statements = b.wait_statements(&sessions, 2);
    assert_eq!(statements[0].approval.as_deref(), Some(grant.as_str()));

    // A copy of the real grant under another id and host: only the signature is wrong.
    central.sql(&format!(
        "INSERT INTO tollgate.approval_grants (id, host, record, expires_at, signature) \
         SELECT 'forged-grant', 'runner-b', replace(record, '{grant}', 'forged-grant'), \
         expires_at, signature FROM tollgate.approval_grants WHERE id = '{grant}'"
    ));
    wait_for("the forged grant refused", Duration::from_secs(10), || {
        a.log()
            .contains("a grant not signed by its host's enrolled key is ignored")
            .then_some(())
    });
    let list: serde_json::Value = a.typed(&["approvals", "list", "--json"]);
    assert!(
        !list["grants"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g["id"] == "forged-grant")),
        "{list}"
    );
}
