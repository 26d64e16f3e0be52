//! The review console in real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from npm: tests/browser/console.mjs). A reviewer signs in through
//! the OIDC issuer, filters to a job, steps a replay to its denied statement, approves
//! a statement psql holds right now and sees it turn approved without a reload, and
//! sees a tampered store flagged. Screenshots: target/test-artifacts/console/.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use tollgate_e2e::{
    console::Console, in_ci, oidc::Issuer, output_with_stdin, require_root, scaled, stderr, stdout,
};

use super::{agent, identity, job_command, psql_script, tamper};
use crate::approvals::{direct_psql, last};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// node, chromium and playwright-core, or why not.
fn browser_tools() -> Result<(), String> {
    let script_dir = workspace().join("tests/browser");
    if !script_dir.join("node_modules/playwright-core").exists() {
        return Err(
            "tests/browser/node_modules has no playwright-core: run `cargo xtask setup`".to_owned(),
        );
    }
    for tool in ["node", "chromium"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "`{tool}` is not installed: run `cargo xtask setup`"
            ));
        }
    }
    Ok(())
}

#[test]
fn a_reviewer_finds_replays_approves_and_audits_in_chromium() {
    if !require_root() {
        return;
    }
    if let Err(why) = browser_tools() {
        assert!(!in_ci(), "{why}");
        eprintln!("skipping the browser test: {why}");
        return;
    }
    let pg = tollgate_e2e::postgres::postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_console_items, tollgate_console_secret, tollgate_console_browser; \
         CREATE TABLE tollgate_console_items (id int, name text); \
         CREATE TABLE tollgate_console_secret (id int); CREATE TABLE tollgate_console_browser (id int)",
    );
    let agent = agent(pg, 9);
    let job_a = identity("acme/api", "4821", "octocat", "prod");
    psql_script(&agent, pg, &job_a, super::ONE_DENIED);
    psql_script(
        &agent,
        pg,
        &identity("acme/web", "4822", "hubot", "staging"),
        "SELECT 1;\n",
    );
    let sessions = agent.wait_sessions(None, 2);
    let a_session = sessions
        .iter()
        .find(|s| s.job_identity.repository == "acme/api")
        .expect("job A's session")
        .id
        .clone();
    agent.wait_statements(&sessions, 5);

    let issuer = Issuer::start();
    issuer.set_user("sam", &["sre"]);
    let console = Console::start(&agent, &issuer);
    // A vm-test guest reads the workspace read-only: its screenshots go to a temporary
    // directory instead.
    let mut artifacts = workspace().join("target/test-artifacts/console");
    if std::fs::create_dir_all(&artifacts).is_err() || tempfile::tempfile_in(&artifacts).is_err() {
        artifacts = std::env::temp_dir().join("tollgate-test-artifacts/console");
    }
    eprintln!("screenshots: {}", artifacts.display());
    let mut node = Command::new("node")
        .arg("console.mjs")
        .current_dir(workspace().join("tests/browser"))
        .env("CONSOLE_URL", &console.url)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", "/usr/bin/chromium")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let mut to_node = node.stdin.take().expect("stdin");
    let (tx, rx) = mpsc::channel();
    let from_node = node.stdout.take().expect("stdout");
    thread::spawn(move || {
        for line in BufReader::new(from_node).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut psql = None;
    let mut steps = Vec::new();
    loop {
        let line = match rx.recv_timeout(scaled(Duration::from_secs(90))) {
            Ok(line) => line,
            Err(_) => {
                let _ = node.kill();
                let err = node.stderr.take().map(|mut e| {
                    let mut s = String::new();
                    let _ = std::io::Read::read_to_string(&mut e, &mut s);
                    s
                });
                panic!(
                    "the browser script stopped after {steps:?}: {err:?}\n{}",
                    console.log()
                );
            }
        };
        eprintln!("browser: {line}");
        if let Some(step) = line.strip_prefix("ok ") {
            steps.push(step.to_owned());
        } else if line == "step hold" {
            // psql asks for the DDL now; the inbox shows it without a reload.
            let args = pg.psql_session_args("127.0.0.1");
            let mut command = job_command(
                &agent,
                &job_a,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            psql = Some(thread::spawn(move || {
                let out = output_with_stdin(
                    &mut command,
                    b"ALTER TABLE tollgate_console_browser ADD COLUMN x int;\nSELECT 'after';\n",
                );
                (stdout(&out), stderr(&out))
            }));
            writeln!(to_node, "go").expect("to node");
        } else if line == "step tamper" {
            // The approval went through: psql finished its script.
            let (out, err) = psql.take().expect("psql").join().expect("psql thread");
            assert_eq!(last(&out), "after", "{err}");
            tamper(&agent.db_path, &a_session);
            writeln!(to_node, "go").expect("to node");
        } else if line == "done" {
            break;
        } else if let Some(why) = line.strip_prefix("fail ") {
            panic!(
                "in Chromium: {why}\nsteps done: {steps:?}\n--- console log ---\n{}",
                console.log()
            );
        }
    }
    drop(to_node);
    let status = node.wait().expect("node");
    assert!(status.success());
    assert_eq!(steps.len(), 6, "{steps:?}");
    for shot in [
        "01-signed-in",
        "02-filtered",
        "03-replay-denied",
        "04a-pending",
        "04b-approved",
        "05-tampered",
        "06-phone",
    ] {
        let path = artifacts.join(format!("{shot}.png"));
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "{} is missing or empty", path.display());
    }
}
