//! HTTP at L7: real clients (curl over HTTP/1.1 and HTTP/2, Python requests, Node fetch)
//! in jobs, against real Node servers. Each request is decided with `http:request`: a
//! refused one gets a 403 whose JSON names the policy, on the same connection, which
//! the next request reuses. Every request is on record with its method, path, status
//! and bytes; allowed ones arrive as they would directly.
use std::process::Command;

use serde_json::Value;
use tollgate::record::{DecisionLabel, StatementRecord};
use tollgate_e2e::{Agent, http::HttpServers, output, require_root, stdout};

mod connections;

const POLICY: &str = r#"
@id("connect")
permit(principal, action == Action::"connect", resource);
@id("reads")
permit(principal, action == Action::"http:request", resource)
when { context.method == "GET" };
@id("no-admin")
forbid(principal, action == Action::"http:request", resource)
when { context.path like "/admin*" };
@id("ci-run-posts")
permit(principal, action == Action::"http:request", resource)
when { context.method == "POST" && context.headers has "x-ci-run" && context.headers["x-ci-run"] like "run-*" };
"#;

fn agent_with(policy: &str, extra: &str) -> Agent {
    let policy = policy.to_owned();
    Agent::start_with_policy("", extra, move |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("http.cedar"), policy).expect("policy");
    })
}

fn agent() -> Agent {
    agent_with(POLICY, "[http]\nheaders = [\"x-ci-run\"]\n")
}

/// Runs `script` with sh, in a job of `agent` or (None) directly; returns its stdout.
fn sh(agent: Option<&Agent>, script: &str) -> String {
    let out = output(&mut Agent::direct_or_in_job(
        agent,
        &[("repository", "acme/api")],
        &["sh", "-c", script],
    ));
    assert!(
        out.status.success(),
        "{script}: {}",
        tollgate_e2e::stderr(&out)
    );
    stdout(&out)
}

/// One curl invocation (one connection, reused) for `paths`, each printed as
/// `STATUS NUM_CONNECTS BODY`.
fn curl(flags: &str, port: u16, requests: &[(&str, &str)]) -> String {
    let mut line = format!("curl -sS --max-time 20 {flags}");
    for (i, (method, path)) in requests.iter().enumerate() {
        if i > 0 {
            line.push_str(" --next");
            line.push_str(&format!(" {flags}"));
        }
        line.push_str(&format!(
            " -X {method} -w ' %{{http_code}} %{{num_connects}}\\n' http://127.0.0.1:{port}{path}"
        ));
        if *method == "POST" {
            line.push_str(" --data-binary payload-of-the-test");
        }
    }
    line
}

/// Each answer of [`curl`]'s output: (body JSON, status, num_connects).
fn answers(text: &str) -> Vec<(Value, String, String)> {
    text.lines()
        .map(|line| {
            let (body, tail) = line
                .rsplit_once(' ')
                .and_then(|(head, connects)| {
                    head.rsplit_once(' ')
                        .map(|(body, status)| (body, (status.to_owned(), connects.to_owned())))
                })
                .unwrap_or_else(|| panic!("an answer line: {line:?}"));
            let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            (json, tail.0, tail.1)
        })
        .collect()
}

/// What an allowed answer says of the request, without its peer port.
fn request_seen(answer: &Value) -> (String, String, String, u64, String) {
    (
        answer["method"].as_str().unwrap_or_default().to_owned(),
        answer["path"].as_str().unwrap_or_default().to_owned(),
        answer["query"].as_str().unwrap_or_default().to_owned(),
        answer["bytes"].as_u64().unwrap_or(u64::MAX),
        answer["version"].as_str().unwrap_or_default().to_owned(),
    )
}

const WORKLOAD: [(&str, &str); 5] = [
    ("GET", "/v1/items?page=2"),
    ("GET", "/admin/users"),
    ("DELETE", "/v1/items/7"),
    ("POST", "/v1/items"),
    ("GET", "/v1/items/8"),
];

fn requests(statements: &[StatementRecord]) -> Vec<(&str, &str, Option<u16>, DecisionLabel)> {
    statements
        .iter()
        .map(|s| {
            let http = s.http.as_ref().expect("an HTTP request's record");
            (
                http.method.as_str(),
                http.path.as_str(),
                http.status,
                s.decision,
            )
        })
        .collect()
}

/// The workload over one HTTP/2 connection (Node's http2 client, one session), printed
/// as [`curl`] prints it. (curl 7.88's `--http2-prior-knowledge` fails to reuse a
/// connection for its next transfer, curl/curl#10634, with any server.)
const H2_CLIENT: &str = r#"
import http2 from "node:http2";
const [port, ...pairs] = process.argv.slice(1);
const session = http2.connect(`http://127.0.0.1:${port}`);
for (let i = 0; i < pairs.length; i += 2) {
  const [method, path] = [pairs[i], pairs[i + 1]];
  const line = await new Promise((resolve, reject) => {
    const stream = session.request({ ":method": method, ":path": path });
    let status = "000", body = "";
    stream.on("response", (h) => { status = String(h[":status"]); });
    stream.on("data", (d) => { body += d; });
    stream.on("end", () => resolve(`${body} ${status} ${i === 0 ? 1 : 0}`));
    stream.on("error", reject);
    stream.end(method === "POST" ? "payload-of-the-test" : undefined);
  });
  console.log(line);
}
session.close();
"#;

fn node_h2(port: u16, requests: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = requests.iter().map(|(m, p)| format!("{m} '{p}'")).collect();
    format!(
        "node --input-type=module -e '{}' -- {port} {}",
        H2_CLIENT.replace('\'', "'\\''"),
        pairs.join(" ")
    )
}

fn decided_on_one_connection(
    client: fn(u16, &[(&str, &str)]) -> String,
    port_of: fn(&HttpServers) -> u16,
    version: &str,
) {
    let servers = HttpServers::start();
    let port = port_of(&servers);
    let agent = agent();
    let script = client(port, &WORKLOAD);
    // The control: directly, every request is answered by the server.
    let direct = answers(&sh(None, &script));
    assert!(
        direct.iter().all(|(_, status, _)| status == "200"),
        "{direct:?}"
    );
    let text = sh(Some(&agent), &format!("echo $TOLLGATE_JOB_ID; {script}"));
    let (job_id, text) = text.split_once('\n').expect("the job id");
    let in_job = answers(text);
    let statuses: Vec<&str> = in_job.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["200", "403", "403", "403", "200"], "{text}");
    // One connection for all five, as directly: the refusals kept it usable.
    let connects: Vec<&str> = in_job.iter().map(|(_, _, c)| c.as_str()).collect();
    let direct_connects: Vec<&str> = direct.iter().map(|(_, _, c)| c.as_str()).collect();
    assert_eq!(connects, ["1", "0", "0", "0", "0"], "{text}");
    assert_eq!(connects, direct_connects);
    // The allowed requests arrived as they did directly, on one server connection.
    for i in [0, 4] {
        assert_eq!(
            request_seen(&in_job[i].0),
            request_seen(&direct[i].0),
            "{text}"
        );
        assert_eq!(in_job[i].0["version"], version, "{text}");
    }
    assert_eq!(in_job[0].0["peer"], in_job[4].0["peer"], "{text}");
    // The refusals name their policies.
    assert_eq!(in_job[1].0["error"], "forbidden", "{text}");
    assert_eq!(
        in_job[1].0["policy_ids"],
        serde_json::json!(["no-admin"]),
        "{text}"
    );
    assert_eq!(
        in_job[2].0["policy_ids"],
        serde_json::json!([]),
        "default deny: {text}"
    );
    assert!(
        in_job[2].0["message"]
            .as_str()
            .is_some_and(|m| m.contains("no policy permits http:request")),
        "{text}"
    );

    let sessions = agent.wait_sessions(Some(job_id), 1);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let statements = agent.wait_statement_records(&sessions[0], 5);
    assert_eq!(
        requests(&statements),
        [
            ("GET", "/v1/items", Some(200), DecisionLabel::Allow),
            ("GET", "/admin/users", Some(403), DecisionLabel::Deny),
            ("DELETE", "/v1/items/7", Some(403), DecisionLabel::Deny),
            ("POST", "/v1/items", Some(403), DecisionLabel::Deny),
            ("GET", "/v1/items/8", Some(200), DecisionLabel::Allow),
        ],
        "{statements:?}"
    );
    let first = &statements[0];
    assert_eq!(first.kind, "http");
    assert_eq!(first.policy_ids.as_ref(), ["reads"]);
    assert_eq!(
        &*first.sql, "GET http://127.0.0.1/v1/items",
        "the query is not recorded"
    );
    let facts = first.http.as_ref().expect("facts");
    assert_eq!(facts.query, None);
    assert!(facts.bytes_down > 50, "{facts:?}");
    assert!(first.duration_us.is_some());
    let post = statements[3].http.as_ref().expect("facts");
    assert_eq!(
        post.bytes_up,
        "payload-of-the-test".len() as u64,
        "{post:?}"
    );
    assert_eq!(statements[1].policy_ids.as_ref(), ["no-admin"]);
    let expected = if version == "2.0" {
        "http/2"
    } else {
        "http/1.1"
    };
    assert_eq!(
        sessions[0].protocol.as_deref(),
        Some(expected),
        "{:?}",
        sessions[0]
    );
    let metrics = agent.metrics();
    for (decision, n) in [("allow", 2), ("deny", 3)] {
        let series = format!(
            "tollgate_http_requests_total{{decision=\"{decision}\",version=\"{expected}\"}} {n}"
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[test]
fn curl_over_http1_requests_are_decided_and_a_refusal_keeps_the_connection() {
    if !require_root() {
        return;
    }
    decided_on_one_connection(|port, requests| curl("", port, requests), |s| s.h1, "1.1");
}

#[test]
fn curl_over_http2_requests_are_decided_and_a_refusal_keeps_the_connection() {
    if !require_root() {
        return;
    }
    decided_on_one_connection(node_h2, |s| s.h2, "2.0");
    // curl, one request per connection.
    let servers = HttpServers::start();
    let agent = agent();
    let text = sh(
        Some(&agent),
        &format!(
            "{}; {}",
            curl("--http2-prior-knowledge", servers.h2, &[("GET", "/v1/x")]),
            curl(
                "--http2-prior-knowledge",
                servers.h2,
                &[("GET", "/admin/x")]
            )
        ),
    );
    let statuses: Vec<String> = answers(&text).into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(statuses, ["200", "403"], "{text}");
}

const REQUESTS_CLIENT: &str = r#"
import json, sys, requests
port = sys.argv[1]
s = requests.Session()
for method, path, headers in [
    ("GET", "/v1/a", {}),
    ("POST", "/v1/b", {"X-CI-Run": "run-42"}),
    ("POST", "/v1/c", {"X-CI-Run": "other"}),
    ("GET", "/v1/d", {}),
]:
    r = s.request(method, "http://127.0.0.1:%s%s" % (port, path), headers=headers, data=b"body")
    print(r.status_code, json.dumps(r.json()))
"#;

const FETCH_CLIENT: &str = r#"
const port = process.argv[1];
for (const [method, path] of [["GET", "/v1/a"], ["DELETE", "/v1/b"], ["GET", "/admin"]]) {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  console.log(r.status, JSON.stringify(await r.json()));
}
"#;

#[test]
fn python_requests_and_node_fetch_get_the_same_decisions() {
    if !require_root() {
        return;
    }
    let servers = HttpServers::start();
    let agent = agent();
    let python = tollgate_e2e::python();
    let python = python.to_str().expect("a UTF-8 path");
    let port = servers.h1.to_string();
    let run = |agent: Option<&Agent>, cmd: &[&str]| {
        let out = output(&mut Agent::direct_or_in_job(
            agent,
            &[("repository", "acme/api")],
            cmd,
        ));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            tollgate_e2e::stderr(&out)
        );
        stdout(&out)
            .lines()
            .map(|l| {
                let (status, body) = l.split_once(' ').expect("status and body");
                (
                    status.to_owned(),
                    serde_json::from_str::<Value>(body).expect("json"),
                )
            })
            .collect::<Vec<_>>()
    };
    let requests = [python, "-c", REQUESTS_CLIENT, &port];
    let direct = run(None, &requests);
    assert!(direct.iter().all(|(s, _)| s == "200"), "{direct:?}");
    let in_job = run(Some(&agent), &requests);
    let statuses: Vec<&str> = in_job.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["200", "200", "403", "200"], "{in_job:?}");
    // The header the config names decided the POSTs; the body arrived whole.
    assert_eq!(in_job[1].1["ci_run"], "run-42");
    assert_eq!(in_job[1].1["bytes"], 4);
    assert_eq!(in_job[2].1["policy_ids"], serde_json::json!([]));
    // requests kept its one connection through the refusal.
    assert_eq!(in_job[0].1["peer"], in_job[3].1["peer"], "{in_job:?}");

    let fetch = [
        "node",
        "--input-type=module",
        "-e",
        FETCH_CLIENT,
        "--",
        &port,
    ];
    let direct = run(None, &fetch);
    assert!(direct.iter().all(|(s, _)| s == "200"), "{direct:?}");
    let in_job = run(Some(&agent), &fetch);
    let statuses: Vec<&str> = in_job.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["200", "403", "403"], "{in_job:?}");
    assert_eq!(in_job[2].1["policy_ids"], serde_json::json!(["no-admin"]));
}

#[test]
fn a_declared_http_target_is_followed_without_a_policy_and_other_http_is_not() {
    if !require_root() {
        return;
    }
    let servers = HttpServers::start();
    // No policy directory: everything is allowed; the declared target's requests are
    // recorded one by one, the other server's connection only as a connection.
    let agent = Agent::start_with(&format!(
        "[[targets]]\nname = \"api\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{}]\nprotocol = \"http\"\n",
        servers.h1
    ));
    let script = format!(
        "echo $TOLLGATE_JOB_ID; {}; {}",
        curl(
            "",
            servers.h1,
            &[("GET", "/declared?q=1"), ("DELETE", "/x")]
        ),
        curl(
            "--http2-prior-knowledge",
            servers.h2,
            &[("GET", "/undeclared")]
        ),
    );
    let text = sh(Some(&agent), &script);
    let (job_id, text) = text.split_once('\n').expect("the job id");
    let statuses: Vec<String> = answers(text).into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(statuses, ["200", "200", "200"], "{text}");
    let sessions = agent.wait_sessions(Some(job_id), 2);
    let port_of = |s: &&tollgate::record::ConnectionRecord| {
        s.destination
            .as_deref()
            .and_then(|d| d.rsplit_once(':'))
            .map(|(_, p)| p.to_owned())
            .unwrap_or_default()
    };
    let declared = sessions
        .iter()
        .find(|s| port_of(s) == servers.h1.to_string())
        .expect("the declared target's connection");
    let statements = agent.wait_statement_records(declared, 2);
    assert_eq!(
        requests(&statements),
        [
            ("GET", "/declared", Some(200), DecisionLabel::Allow),
            ("DELETE", "/x", Some(200), DecisionLabel::Allow),
        ]
    );
    let other = sessions
        .iter()
        .find(|s| port_of(s) == servers.h2.to_string())
        .expect("the other server's connection");
    assert!(agent.statements(other).is_empty(), "{other:?}");
    assert!(other.bytes_down > 0, "{other:?}");
}

#[test]
fn hostile_http_gets_a_protocol_error_and_the_agent_carries_on() {
    if !require_root() {
        return;
    }
    let servers = HttpServers::start();
    let agent = agent();
    let port = servers.h1;
    // Headers past [http] max_header_size (64 KiB): 431 from the agent, nothing
    // forwarded.
    let big = "x".repeat(70_000);
    let oversized = format!(
        "curl -sS -o /dev/null -w '%{{http_code}}\\n' -H 'X-Big: {big}' http://127.0.0.1:{port}/v1/x"
    );
    // A chunked body that is not chunked: 400, and the connection is closed.
    let bad_chunked = format!(
        r#"python3 -c '
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.sendall(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nX-CI-Run: run-1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nnot a chunk\r\n")
data = b""
while True:
    got = s.recv(4096)
    if not got:
        break
    data += got
print(data.split(b"\r\n")[0].decode() or "closed")
'"#
    );
    let text = sh(
        Some(&agent),
        &format!(
            "echo $TOLLGATE_JOB_ID; {oversized}; {bad_chunked}; {}",
            curl("", port, &[("GET", "/v1/after")])
        ),
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], "431", "{text}");
    assert!(
        lines[2] == "closed" || lines[2].starts_with("HTTP/1.1 400"),
        "{text}"
    );
    // The agent is unaffected: the next request is answered.
    assert!(lines[3].ends_with(" 200 1"), "{text}");
    let sessions = agent.wait_sessions(Some(lines[0]), 3);
    assert!(
        sessions.iter().filter(|s| s.error.is_some()).count() >= 1,
        "the broken connections are on record with their errors: {sessions:?}"
    );
    let metrics = agent.metrics();
    assert!(metrics.contains("tollgate_"), "the agent answers");
    let direct = output(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{port}/")]));
    assert!(direct.status.success());
}

#[test]
fn json_answers_of_a_target_that_configures_masking_are_masked() {
    if !require_root() {
        return;
    }
    let servers = HttpServers::start();
    let agent = agent_with(
        POLICY,
        &format!(
            "[http]\nheaders = [\"x-ci-run\"]\n\n[[targets]]\nname = \"api\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{}]\nprotocol = \"http\"\n\
             masking = {{ results = \"detect\" }}\n",
            servers.h1
        ),
    );
    let script = format!(
        "curl -sS --max-time 20 'http://127.0.0.1:{}/v1/items?owner=ann@example.com&page=2'",
        servers.h1
    );
    let direct: Value = serde_json::from_str(&sh(None, &script)).expect("JSON");
    assert_eq!(direct["query"], "owner=ann@example.com&page=2");
    let in_job: Value = serde_json::from_str(&sh(Some(&agent), &script)).expect("JSON");
    assert_eq!(in_job["query"], "owner=****@example.com&page=2", "{in_job}");
    // Ordinary values stay as they were.
    assert_eq!(in_job["path"], direct["path"]);
    assert_eq!(in_job["method"], "GET");
}
