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
    let enrolled = output(
        agent
            .tollgate()
            .args(["central", "enroll-host", "--config"])
            .arg(&agent.config_path),
    );
    assert!(enrolled.status.success(), "{}", stderr(&enrolled));
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
}
