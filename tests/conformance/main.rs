//! `cargo xtask conformance`: the differential conformance suite. Each workload runs
//! direct and through a Tollgate job with the same client; the output must be the same
//! byte for byte, except where masking is asked for, and then exactly there.
mod harness;

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use harness::{Client, Script};
use serde_json::Value;
use tollgate_e2e::{Agent, postgres, require_root};

fn workload_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_CONFORMANCE_SCRIPTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/sql"),
        PathBuf::from,
    )
}

/// Runs every script with each of its clients, direct and in a job of `agent`; the
/// differences, by script and client.
fn differences(agent: &Agent, scripts: &[Script]) -> Vec<String> {
    let pg = postgres();
    let mut failures = Vec::new();
    for script in scripts {
        harness::prepare(pg, script);
        for &client in &script.clients {
            let direct = harness::run(pg, None, script, client);
            let job = harness::run(pg, Some(agent), script, client);
            let verdict = if direct == job {
                "identical"
            } else {
                "DIFFERENT"
            };
            println!(
                "conformance: {} ({}) with {client}: {verdict}, {} bytes",
                script.name,
                script.encoding,
                direct.len()
            );
            if direct != job {
                failures.push(format!(
                    "{} with {client}: {}",
                    script.name,
                    harness::first_difference(&direct, &job)
                ));
            }
        }
    }
    failures
}

#[test]
fn every_workload_is_byte_identical_at_the_defaults() {
    if !require_root() {
        return;
    }
    let scripts = harness::workload(&workload_dir());
    let agent = Agent::start();
    let failures = differences(&agent, &scripts);
    assert!(
        failures.is_empty(),
        "{} of the runs differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let runs: usize = scripts.iter().map(|s| s.clients.len()).sum();
    assert!(
        runs >= 20,
        "the workload ran only {runs} script/client pairs"
    );
}

/// The tokio-postgres client's JSON lines, by statement.
fn by_statement(output: &[u8]) -> BTreeMap<String, Value> {
    String::from_utf8_lossy(output)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|v| Some((v["sql"].as_str()?.to_owned(), v)))
        .collect()
}

/// `script` with tokio-postgres, direct and in a job of an agent whose detectors read
/// results (`results = "detect"`): what each saw, by statement.
fn with_detected_results(script: &Script) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let pg = postgres();
    let agent = Agent::start_with("[masking]\nresults = \"detect\"\n");
    harness::prepare(pg, script);
    let direct = by_statement(&harness::run(pg, None, script, Client::TokioPostgres));
    let job = by_statement(&harness::run(
        pg,
        Some(&agent),
        script,
        Client::TokioPostgres,
    ));
    (direct, job)
}

/// The text-like types, by element type (arrays of them are text-like too).
const TEXT_LIKE: [&str; 7] = [
    "text",
    "character varying",
    "character",
    "name",
    "json",
    "jsonb",
    "xml",
];

/// Values that look like secrets to the detectors, to be cast to every built-in type.
const LOOKALIKES: [&str; 14] = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111111111111111.4111",
    "alice@example.com",
    "alice@example.com 4111111111111111",
    "AKIAIOSFODNN7EXAMPLE",
    "GB82WEST12345698765432",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "{4111111111111111}",
    "{alice@example.com}",
    "\"alice@example.com\"",
    "[4111111111111111,4111111111111112)",
    "<a>alice@example.com</a>",
    "(4111111111111111,alice@example.com)",
];

/// psql with `sql`, direct, stopping at the first error; its tuples-only output.
fn direct_psql(sql: &str, what: &str) -> Vec<u8> {
    let pg = postgres();
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-p",
            &pg.port.to_string(),
        ])
        .args(["-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every built-in type (and its array) that takes one of the lookalikes as input, with
/// the literal it takes.
fn castable() -> Vec<(String, String)> {
    let candidates = LOOKALIKES
        .iter()
        .map(|c| format!("$c${c}$c$"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "CREATE TEMP TABLE casts (t text, c text);\n\
         DO $$ DECLARE r record; c text; BEGIN\n\
           FOR r IN SELECT format_type(oid, NULL) AS t FROM pg_type\n\
             WHERE oid < 16384 AND typisdefined AND typtype IN ('b', 'r', 'm')\n\
               AND typname NOT IN ('unknown', 'cstring', 'gtsvector', 'aclitem', 'int2vector', 'oidvector')\n\
               AND typname !~ '^pg_' AND typname !~ '^reg'\n\
             ORDER BY oid LOOP\n\
             FOREACH c IN ARRAY ARRAY[{candidates}] LOOP\n\
               BEGIN\n\
                 EXECUTE format('SELECT %L::%s', c, r.t);\n\
                 INSERT INTO casts VALUES (r.t, c);\n\
                 EXECUTE format('SELECT ARRAY[%L::%s]', c, r.t);\n\
                 INSERT INTO casts VALUES (r.t || ' in ARRAY', c);\n\
               EXCEPTION WHEN OTHERS THEN NULL;\n\
               END;\n\
             END LOOP;\n\
           END LOOP;\n\
         END $$;\n\
         SELECT t || chr(9) || c FROM casts;\n"
    );
    let out = direct_psql(&sql, "");
    let unique: std::collections::BTreeSet<(String, String)> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, c)| (t.to_owned(), c.to_owned()))
        .collect();
    unique.into_iter().collect()
}

/// With the detectors reading results, no value of a non-text built-in type changes,
/// in text or binary format, while the same lookalikes in text-like types do.
#[test]
fn with_detectors_on_results_only_text_like_types_change() {
    if !require_root() {
        return;
    }
    let casts = castable();
    let types: std::collections::BTreeSet<&str> = casts.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        types.len() >= 40,
        "only {} types took a lookalike: {types:?}",
        types.len()
    );
    let mut body = String::from("SET bytea_output = escape;\n");
    for (t, c) in &casts {
        let sql = match t.strip_suffix(" in ARRAY") {
            Some(e) => format!("SELECT ARRAY[$c${c}$c$::{e}] AS v;\n"),
            None => format!("SELECT $c${c}$c$::{t} AS v;\n"),
        };
        body.push_str(&sql);
    }
    let script = Script {
        name: "types".to_owned(),
        encoding: "UTF8".to_owned(),
        clients: vec![Client::TokioPostgres],
        setup: String::new(),
        body,
    };
    let (direct, job) = with_detected_results(&script);
    assert_eq!(direct.len(), casts.len() + 1, "every statement ran");
    let (mut kept, mut masked, mut wrong) = (0, 0, Vec::new());
    // The first statement is the SET.
    for ((t, c), sql) in casts.iter().zip(script.statements().into_iter().skip(1)) {
        let (d, j) = (&direct[&sql], &job[&sql]);
        let element = t.trim_end_matches(" in ARRAY").trim_end_matches("[]");
        let text_like = TEXT_LIKE.contains(&element);
        // A character(1) keeps one letter of it, and a number inside a longer token is
        // no secret on its own: such text values may stay as they are.
        let holds_secret = element != "character" && c != "4111111111111111.4111";
        match (text_like, d == j) {
            (false, true) => kept += 1,
            (true, false) => masked += 1,
            (true, true) if !holds_secret => kept += 1,
            _ => wrong.push(format!("{t} from {c:?}: direct {d} job {j}")),
        }
    }
    println!(
        "conformance: types: {kept} values kept, {masked} masked, {} types",
        types.len()
    );
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        masked >= 20,
        "the control: text-like values must be masked ({masked})"
    );
}

const SENSITIVE: &str = "\
CREATE TABLE sensitive (id int PRIMARY KEY, secret bool, v text, vc varchar, bp char(60),
  j json, jb jsonb, x xml, arr text[], n int8, num numeric, u uuid);
CREATE FUNCTION fill(id int, secret bool, v text) RETURNS void LANGUAGE sql AS $$
  INSERT INTO sensitive VALUES (id, secret, 'see ' || v || ' here', v,
    CASE WHEN length(v) <= 60 THEN v END, json_build_object('k', v),
    jsonb_build_object('k', v, 'list', jsonb_build_array(v, 42)),
    xmlelement(name note, v), ARRAY[v, 'plain'], 4111111111111111,
    4111111111111111.0, '00000000-0000-0000-0000-000000019992')
$$;
SELECT fill(1, true, 'alice@example.com');
SELECT fill(2, true, '4111 1111 1111 1111');
SELECT fill(3, true, '4012888888881881');
SELECT fill(4, true, 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U');
SELECT fill(5, true, 'AKIAIOSFODNN7EXAMPLE');
SELECT fill(6, true, 'GB82 WEST 1234 5698 7654 32');
SELECT fill(7, true, E'-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----');
SELECT fill(8, false, 'order 2024011512345678 shipped');
SELECT fill(9, false, '550e8400-e29b-41d4-a716-446655440000');
SELECT fill(10, false, '0.881373587019543');
SELECT fill(11, false, 'v1.2.3 built 2024-01-01T12:34:56Z on 192.168.100.200');
SELECT fill(12, false, 'call +1 415 555 0100');
SELECT fill(13, false, 'sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
SELECT fill(14, false, 'bits 0110100001101001 and 0000000000000000');
SELECT fill(15, false, 'user@localhost and pkg@1.2.3');
";

const COLUMNS: [&str; 12] = [
    "id", "secret", "v", "vc", "bp", "j", "jb", "x", "arr", "n", "num", "u",
];
const TEXT_COLUMNS: [&str; 7] = ["v", "vc", "bp", "j", "jb", "x", "arr"];

/// With `results = "detect"`, exactly the sensitive values change, in text and binary
/// format, and every replacement still parses as its column's type.
#[test]
fn detectors_on_results_change_exactly_the_sensitive_values() {
    if !require_root() {
        return;
    }
    let script = Script {
        name: "sensitive".to_owned(),
        encoding: "UTF8".to_owned(),
        clients: vec![Client::TokioPostgres],
        setup: SENSITIVE.to_owned(),
        body: "SELECT * FROM sensitive ORDER BY id;\n".to_owned(),
    };
    let sql = script.statements().remove(0);
    let (direct, job) = with_detected_results(&script);
    let mut wrong = Vec::new();
    let mut changed_text = Vec::new();
    for format in ["binary", "text"] {
        let rows = |seen: &BTreeMap<String, Value>| -> Vec<Value> {
            let all = seen[&sql][format].as_array().cloned().unwrap_or_default();
            all.into_iter().filter(Value::is_array).collect()
        };
        let (d, j) = (rows(&direct), rows(&job));
        assert_eq!(d.len(), 15, "{format}: all rows");
        assert_eq!(d.len(), j.len(), "{format}: rows");
        for (i, (drow, jrow)) in d.iter().zip(&j).enumerate() {
            let secret = i < 7;
            for (c, name) in COLUMNS.iter().enumerate() {
                let (dv, jv) = (&drow[c], &jrow[c]);
                let should_change = secret && TEXT_COLUMNS.contains(name) && !dv.is_null();
                if should_change != (dv != jv) {
                    wrong.push(format!(
                        "{format} row {} {name}: direct {dv} job {jv}",
                        i + 1
                    ));
                }
                if format == "text" && dv != jv {
                    changed_text.push((*name, jv.as_str().unwrap_or_default().to_owned()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every replacement parses as its type.
    let types: BTreeMap<&str, &str> = [
        ("v", "text"),
        ("vc", "varchar"),
        ("bp", "char(60)"),
        ("j", "json"),
        ("jb", "jsonb"),
        ("x", "xml"),
        ("arr", "text[]"),
    ]
    .into();
    let checks: String = changed_text
        .iter()
        .map(|(name, value)| format!("SELECT $v${value}$v$::{};\n", types[name]))
        .collect();
    assert!(changed_text.len() >= 40, "{changed_text:?}");
    direct_psql(&checks, "a replacement does not parse");
    println!(
        "conformance: sensitive: {} masked values parse as their types",
        changed_text.len()
    );
}
