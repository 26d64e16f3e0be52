//! Sessions in legacy client encodings through a job: relayed byte for byte, read in
//! their own encoding for the record, and never refused by Tollgate for their bytes.
use std::process::Output;

use tollgate_e2e::{Agent, output_with_stdin, postgres, require_root, stderr};

/// psql with `script` (bytes in `encoding`) on stdin, direct or in a job of `agent`.
fn psql(agent: Option<&Agent>, encoding: &str, script: &[u8]) -> Output {
    let args = postgres().psql_session_args("127.0.0.1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = Agent::direct_or_in_job(agent, &[("repository", "acme/legacy")], &args);
    output_with_stdin(cmd.env("PGCLIENTENCODING", encoding), script)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_latin9_session_runs_and_its_errors_arrive_intact() {
    if !require_root() {
        return;
    }
    let agent = Agent::start_with(&postgres().target());
    // é is 0xe9 and € is 0xa4 in LATIN9 (ISO 8859-15).
    let script: &[u8] = b"SELECT '\xe9\xa4' AS v, length('\xe9\xa4') AS n;\n\
        SELECT '\xe9\xa4'::int;\n\
        SELECT 1 AS after_error;\n";
    let direct = psql(None, "LATIN9", script);
    let job = psql(Some(&agent), "LATIN9", script);
    assert!(job.status.success(), "{}", stderr(&job));
    assert_eq!(
        String::from_utf8_lossy(&job.stdout),
        String::from_utf8_lossy(&direct.stdout),
        "results"
    );
    assert_eq!(job.stdout, direct.stdout, "results, byte for byte");
    assert_eq!(job.stderr, direct.stderr, "errors, byte for byte");
    assert!(
        contains(&job.stdout, b"\xe9\xa4"),
        "the value came back in LATIN9"
    );
    assert!(
        contains(&job.stdout, b"|2\n"),
        "the server counted two characters"
    );
    assert!(
        contains(&job.stderr, b"\"\xe9\xa4\""),
        "the server's error quotes the value in LATIN9: {}",
        String::from_utf8_lossy(&job.stderr)
    );

    // The record reads the statements in their encoding.
    let sessions = agent.wait_sessions(None, 1);
    let statements = agent.wait_statements(&sessions[..1], 3);
    let sql: Vec<&str> = statements.iter().map(|s| &*s.sql).collect();
    assert!(sql.iter().any(|s| s.contains("'é€'::int")), "{sql:?}");
    let failed = statements
        .iter()
        .find(|s| s.sql.contains("::int"))
        .expect("the failing statement");
    assert_eq!(failed.sqlstate.as_deref(), Some("22P02"), "{failed:?}");
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("\"é€\"")),
        "the server's message, read as LATIN9: {failed:?}"
    );
}

/// Bytes that are not valid in the session's encoding go to the server unchanged, for
/// it to refuse as it would without Tollgate; the session goes on. Such a statement is
/// decided as `unknown` and recorded lossily.
#[test]
fn invalid_bytes_are_the_servers_to_judge() {
    if !require_root() {
        return;
    }
    let agent = Agent::start_with(&postgres().target());
    let script: &[u8] = b"SELECT 'caf\xff' AS v;\nSELECT 'ok' AS after;\n";
    let direct = psql(None, "UTF8", script);
    let job = psql(Some(&agent), "UTF8", script);
    assert_eq!(job.stdout, direct.stdout, "results");
    assert_eq!(job.stderr, direct.stderr, "errors");
    assert!(
        contains(&job.stderr, b"invalid byte sequence for encoding \"UTF8\""),
        "{}",
        String::from_utf8_lossy(&job.stderr)
    );
    assert!(contains(&job.stdout, b"ok"), "the session went on");
    let sessions = agent.wait_sessions(None, 1);
    let statements = agent.wait_statements(&sessions[..1], 2);
    let invalid = statements
        .iter()
        .find(|s| s.sql.contains("caf"))
        .expect("the invalid statement");
    assert_eq!(invalid.kind, "unknown", "{invalid:?}");
    assert_eq!(invalid.sqlstate.as_deref(), Some("22021"), "{invalid:?}");
    assert!(invalid.sql.contains("caf\u{fffd}"), "{invalid:?}");
}
