//! The central store down: nothing is lost (through an agent's SIGKILL and restart),
//! `central.max_lag` refuses new job connections until it is back, and a wrong password
//! or schema is a clear error while local recording goes on.
use std::{thread, time::Duration};

use tollgate_e2e::{postgres::postgres, require_root, servers::Server, stdout, wait_for};

use super::{Central, assert_all_shipped_once, workload};

#[test]
fn the_central_store_down_under_load_loses_nothing_and_the_lag_rises_and_falls() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    pg.pgbench_init();
    let web = Server::http("127.0.0.1:0");
    let central = Central::start();
    let mut a = central.agent("runner-a", pg, "");
    let mut b = central.agent("runner-b", pg, "");
    workload(&a, pg, &web, "before");
    central.pg.stop_immediate();
    let down = std::time::Instant::now();
    // Load on both hosts while the store is down.
    workload(&a, pg, &web, "during-a");
    workload(&b, pg, &web, "during-b");
    wait_for("the lag to rise", Duration::from_secs(20), || {
        (a.metric("tollgate_central_lag_seconds") >= 2.0
            && a.metric("tollgate_central_backlog_records") > 0.0
            && a.metric("tollgate_central_backlog_bytes") > 0.0)
            .then_some(())
    });
    assert_eq!(a.metric("tollgate_central_up"), 0.0);
    // One agent dies and comes back while the store is down: its backlog is on disk.
    b.kill9();
    b.start_again();
    workload(&b, pg, &web, "restarted-b");
    if let Some(left) = Duration::from_secs(30).checked_sub(down.elapsed()) {
        thread::sleep(left);
    }
    let peak = a.metric("tollgate_central_lag_seconds");
    assert!(peak >= 20.0, "lag while down 30 s: {peak}");
    central.pg.start_again();
    for agent in [&a, &b] {
        wait_for("the backlog shipped", Duration::from_secs(60), || {
            (agent.metric("tollgate_central_backlog_records") == 0.0
                && agent.metric("tollgate_central_lag_seconds") < 1.0)
                .then_some(())
        });
    }
    assert!(a.metric("tollgate_central_errors_total{stage=\"connect\"}") >= 1.0);
    // Records made after the store came back (the prune below keeps them).
    let back = std::time::Instant::now();
    workload(&a, pg, &web, "after-a");
    workload(&b, pg, &web, "after-b");
    a.stop();
    b.stop();
    assert_all_shipped_once(&central, &a, "runner-a");
    assert_all_shipped_once(&central, &b, "runner-b");
    let out = central.verify(&a, None);
    assert!(out.status.success(), "{}", stdout(&out));

    // Pruning what came before the outage: the chains verify from where it cut them.
    let before = central.count("SELECT count(*) FROM tollgate.records");
    // The cutoff falls between the outage's records (30 s and more before `back`) and
    // those made after it, however slow the host.
    let older_than = format!("{}s", back.elapsed().as_secs() + 5);
    let out = central.tollgate(&["central", "prune", "--older-than", &older_than]);
    assert!(out.status.success(), "{}", tollgate_e2e::stderr(&out));
    let after = central.count("SELECT count(*) FROM tollgate.records");
    assert!(
        after < before && after > 0,
        "pruned {before} -> {after}: {}",
        stdout(&out)
    );
    let out = central.verify(&a, None);
    assert!(out.status.success(), "after the prune: {}", stdout(&out));
    // The typed tables lost the rows whose newest record was pruned, and kept the rest.
    for (kind, table) in [
        ("connection", "connection_rows"),
        ("statement", "statement_rows"),
        ("job", "job_rows"),
    ] {
        let rows = central.count(&format!("SELECT count(*) FROM tollgate.{table}"));
        let newest = central.count(&format!(
            "SELECT count(*) FROM tollgate.latest WHERE kind = '{kind}'"
        ));
        assert_eq!(rows, newest, "{table} after the prune");
    }
    assert!(central.count("SELECT count(*) FROM tollgate.connection_rows") > 0);
    // One more record gone from the start is missing, not pruned.
    let first = central.count("SELECT min(seq) FROM tollgate.records WHERE host = 'runner-a'");
    central.sql(&format!(
        "DELETE FROM tollgate.records WHERE host = 'runner-a' AND seq = {first}"
    ));
    let out = central.verify(&a, Some("runner-a"));
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains(&format!("record #{first} (absent): missing")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn max_lag_refuses_new_job_connections_until_the_store_is_back() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let web = Server::http("127.0.0.1:0");
    let central = Central::start();
    let agent = central.agent("runner-lag", pg, "max_lag = \"2s\"");
    let url = format!("http://127.0.0.1:{}/", web.port());
    let curl = || {
        agent
            .run_job(
                &[("repository", "acme/web")],
                &["curl", "-sf", "-m", "5", &url],
            )
            .status
            .success()
    };
    assert!(curl(), "allowed while the store is up");
    central.pg.stop_immediate();
    // The job's own records wait unshipped; past 2 s new connections are refused.
    assert!(curl(), "allowed while the backlog is young");
    wait_for("max_lag to refuse", Duration::from_secs(20), || {
        (agent.metric("tollgate_central_refusing") == 1.0).then_some(())
    });
    wait_for("a job connection refused", Duration::from_secs(15), || {
        (!curl()).then_some(())
    });
    let (code, body) = agent.admin_get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("central.max_lag"), "{body}");
    let refused = wait_for("the refusal recorded", Duration::from_secs(10), || {
        agent
            .sessions(None)
            .into_iter()
            .find(|s| s.reason.contains("central.max_lag"))
    });
    assert_eq!(refused.decision, tollgate::record::DecisionLabel::Deny);
    central.pg.start_again();
    wait_for("max_lag to let go", Duration::from_secs(30), || {
        (agent.metric("tollgate_central_refusing") == 0.0).then_some(())
    });
    wait_for(
        "job connections allowed again",
        Duration::from_secs(15),
        || curl().then_some(()),
    );
    assert_eq!(agent.admin_get("/readyz").0, 200);
}

#[test]
fn a_wrong_password_or_schema_is_a_clear_error_and_recording_stays_local() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let web = Server::http("127.0.0.1:0");
    let central = Central::start();
    // TLS per sslmode: verify-full against the server's certificate passes; against
    // another CA it is refused, naming the certificate.
    let port = central.pg.port;
    let verify_full = |root: &std::path::Path| {
        std::process::Command::new(tollgate_e2e::agent::tollgate_bin())
            .args(["central", "migrate", "--password-file"])
            .arg(central.password_file.path())
            .arg("--url")
            .arg(format!(
                "postgresql://{}@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={}",
                tollgate_e2e::postgres::SCRAM_USER,
                root.display()
            ))
            .output()
            .expect("tollgate")
    };
    let ca = central.pg.issue_certificate();
    let ok = verify_full(&ca);
    assert!(ok.status.success(), "{}", tollgate_e2e::stderr(&ok));
    let other = tempfile::tempdir().expect("dir");
    let other_ca = other.path().join("ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "1",
            "-nodes",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(other.path().join("ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .expect("openssl");
    assert!(made.status.success());
    let refused = verify_full(&other_ca);
    assert!(!refused.status.success());
    assert!(
        tollgate_e2e::stderr(&refused).contains("certificate"),
        "{}",
        tollgate_e2e::stderr(&refused)
    );

    let wrong = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(wrong.path(), "not-the-password\n").expect("write");
    let extra = format!("password_file = \"{}\"", wrong.path().display());
    // The config's own password_file is replaced by the wrong one.
    let config = central.config("runner-pw", "").replace(
        &format!(
            "password_file = \"{}\"",
            central.password_file.path().display()
        ),
        &extra,
    );
    let mut agent = tollgate_e2e::Agent::start_with(&format!("{config}\n{}", pg.target()));
    let url = format!("http://127.0.0.1:{}/", web.port());
    let out = agent.run_job(&[("repository", "acme/web")], &["curl", "-sf", &url]);
    assert!(out.status.success(), "recording stays local, jobs go on");
    assert_eq!(agent.wait_sessions(None, 1).len(), 1);
    wait_for("the error logged", Duration::from_secs(15), || {
        agent
            .log()
            .contains("password authentication failed")
            .then_some(())
    });
    assert!(agent.metric("tollgate_central_errors_total{stage=\"connect\"}") >= 1.0);
    assert_eq!(agent.metric("tollgate_central_up"), 0.0);
    // Stopping, it tries the store a few more times within its 5 s, backing off as
    // before (it once retried back to back, hundreds of times), and says what it left.
    agent.stop();
    let log = agent.plain_log();
    let attempts: u32 = log
        .lines()
        .find(|l| l.contains("stopping with records the central store has not taken"))
        .and_then(|l| l.split("attempts=").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stop warning with its attempts; log:\n{log}"));
    assert!(
        (1..=5).contains(&attempts),
        "{attempts} attempts while stopping"
    );

    // A store at another schema version.
    central.sql("UPDATE tollgate.meta SET value = '99' WHERE key = 'schema_version'");
    let other = central.agent_unenrolled("runner-schema", pg);
    wait_for("the schema error logged", Duration::from_secs(15), || {
        other
            .log()
            .contains("the central store's schema is version 99, this agent's is 2")
            .then_some(())
    });
    assert!(other.metric("tollgate_central_errors_total{stage=\"schema\"}") >= 1.0);
    // And the CLI says the same.
    let out = central.tollgate(&["central", "migrate"]);
    assert!(!out.status.success());
    assert!(
        tollgate_e2e::stderr(&out).contains("schema is version 99"),
        "{}",
        tollgate_e2e::stderr(&out)
    );
    // An address where nothing listens.
    let out = std::process::Command::new(tollgate_e2e::agent::tollgate_bin())
        .args([
            "central",
            "migrate",
            "--url",
            "postgresql://x@127.0.0.1:1/db?sslmode=disable",
        ])
        .output()
        .expect("tollgate");
    assert!(!out.status.success());
    assert!(
        tollgate_e2e::stderr(&out).contains("central store postgresql://x@127.0.0.1:1/db"),
        "{}",
        tollgate_e2e::stderr(&out)
    );
}
