//! MCP at L7: the official MCP Python SDK's client and server (PyPI `mcp`), over
//! streamable HTTP (answers as SSE and as JSON) and the legacy SSE transport, in jobs.
//! Each `tools/call` is decided with `mcp:call`: a refused call gets a JSON-RPC error
//! naming the policy, with its id, and the session goes on; `tools/list` shows only the
//! tools the job may call; a tool that changes within the session is flagged; a call
//! that needs approval waits for a reviewer. Every call is on record. Each is compared
//! with the same client and steps directly.
use std::thread;

use serde_json::{Value, json};
use tollgate::record::{DecisionLabel, StatementRecord};
use tollgate_e2e::{
    Agent,
    mcp::{McpServer, client_argv},
    output, require_root, stderr, stdout,
};

use crate::approvals::{approvals_cli, wait_pending};

mod console;
mod hostile;

const POLICY: &str = r#"
@id("connect")
permit(principal, action == Action::"connect", resource);
@id("tools")
permit(principal, action == Action::"mcp:call", resource)
when { ["echo", "query", "add", "customer", "rugpull"].contains(context.tool) };
@id("no-users")
forbid(principal, action == Action::"mcp:call", resource)
when { context.tool == "query" && context.arguments has table && context.arguments.table == "users" };
@id("deploys-need-approval")
@approval("required")
permit(principal, action == Action::"mcp:call", resource)
when { context.tool == "deploy" };
@id("no-changed-tools")
forbid(principal, action == Action::"mcp:call", resource)
when { context.changed };
"#;

fn agent_with(extra: &str) -> Agent {
    Agent::start_with_policy("", extra, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("mcp.cedar"), POLICY).expect("policy");
    })
}

/// Runs the client's `steps` against `server`, in a job of `agent` or (None) directly:
/// the job's id (or "") and each step's outcome.
fn client(agent: Option<&Agent>, server: &McpServer, steps: &Value) -> (String, Vec<Value>) {
    let argv = client_argv(server, steps);
    let script = "echo \"${TOLLGATE_JOB_ID:-}\"; exec \"$@\"";
    let mut command: Vec<&str> = vec!["sh", "-c", script, "sh"];
    command.extend(argv.iter().map(String::as_str));
    let out = output(&mut Agent::direct_or_in_job(
        agent,
        &[("repository", "acme/agents")],
        &command,
    ));
    assert!(
        out.status.success(),
        "the MCP client failed: {}",
        stderr(&out)
    );
    let text = stdout(&out);
    let mut lines = text.lines();
    let job = lines.next().unwrap_or_default().to_owned();
    let outcomes = lines
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (job, outcomes)
}

/// The MCP records of a job's connections, in order.
fn mcp_records(agent: &Agent, job: &str, n: usize) -> Vec<StatementRecord> {
    let mut records = tollgate_e2e::wait_for(
        &format!("{n} MCP records"),
        tollgate_e2e::scaled(std::time::Duration::from_secs(20)),
        || {
            let records: Vec<StatementRecord> = agent
                .sessions(Some(job))
                .iter()
                .flat_map(|s| agent.statements(s))
                .filter(|s| s.kind == "mcp")
                .collect();
            (records.len() >= n).then_some(records)
        },
    );
    records.sort_by_key(|s| (s.started_at, s.seq));
    records
}

fn tool_of(record: &StatementRecord) -> (&str, Option<&str>, DecisionLabel) {
    let mcp = record.mcp.as_ref().expect("an MCP record");
    (mcp.method.as_str(), mcp.tool.as_deref(), record.decision)
}

const STEPS: &str = r#"[
  ["list"],
  ["call", "echo", {"text": "hello"}],
  ["call", "drop_table", {"table": "orders"}],
  ["call", "query", {"table": "users"}],
  ["call", "query", {"table": "orders", "limit": 3}],
  ["call", "echo", {"text": "still here"}]
]"#;

fn calls_decided(transport: &'static str) {
    if !require_root() {
        return;
    }
    let server = McpServer::start(transport);
    let steps: Value = serde_json::from_str(STEPS).expect("steps");
    // The control: directly, every tool is listed and every call runs.
    let (_, direct) = client(None, &server, &steps);
    let all_tools = json!([
        "add",
        "customer",
        "deploy",
        "drop_table",
        "echo",
        "query",
        "rugpull"
    ]);
    assert_eq!(direct[0]["tools"], all_tools, "{direct:?}");
    assert_eq!(direct[1]["text"], "hello");
    assert_eq!(direct[2]["text"], "dropped orders");
    assert_eq!(direct[3]["text"], "10 rows of users");
    assert_eq!(direct[4]["text"], "3 rows of orders");
    assert_eq!(server.take_calls().len(), 5);

    let agent = agent_with("");
    let (job, in_job) = client(Some(&agent), &server, &steps);
    // drop_table is listed for nobody: no call of it is permitted.
    assert_eq!(
        in_job[0]["tools"],
        json!(["add", "customer", "deploy", "echo", "query", "rugpull"]),
        "{in_job:?}"
    );
    assert_eq!(in_job[1], direct[1], "an allowed call answers as directly");
    // Refused: a JSON-RPC error naming the policy (default deny names none).
    assert_eq!(in_job[2]["error"]["code"], -32001, "{in_job:?}");
    let message = in_job[2]["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("drop_table") && message.contains("no policy permits mcp:call"),
        "{message}"
    );
    assert_eq!(in_job[3]["error"]["code"], -32001, "{in_job:?}");
    assert!(
        in_job[3]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-users")),
        "an argument-based forbid: {in_job:?}"
    );
    // Its allowed control: another table; and the session went on.
    assert_eq!(in_job[4], direct[4]);
    assert_eq!(in_job[5], direct[5]);
    // The server ran only the allowed calls.
    let ran: Vec<String> = server.take_calls().into_iter().map(|(t, _)| t).collect();
    assert_eq!(ran, ["echo", "query", "echo"]);

    let records = mcp_records(&agent, &job, 6);
    let seen: Vec<_> = records.iter().map(tool_of).collect();
    assert_eq!(
        seen,
        [
            ("tools/list", None, DecisionLabel::Allow),
            ("tools/call", Some("echo"), DecisionLabel::Allow),
            ("tools/call", Some("drop_table"), DecisionLabel::Deny),
            ("tools/call", Some("query"), DecisionLabel::Deny),
            ("tools/call", Some("query"), DecisionLabel::Allow),
            ("tools/call", Some("echo"), DecisionLabel::Allow),
        ],
        "{records:#?}"
    );
    let list = records[0].mcp.as_ref().expect("facts");
    assert_eq!(list.hidden, ["drop_table"]);
    assert!(list.result_bytes.is_some_and(|b| b > 100), "{list:?}");
    let echo = records[1].mcp.as_ref().expect("facts");
    assert_eq!(echo.arguments.as_deref(), Some(r#"{"text":"hello"}"#));
    assert!(echo.result_bytes.is_some_and(|b| b > 0), "{echo:?}");
    assert!(records[1].duration_us.is_some());
    assert_eq!(&*records[3].policy_ids, ["no-users"]);
    let transport_label = if transport == "sse" {
        "mcp/sse"
    } else {
        "mcp/http"
    };
    assert!(
        records.iter().all(|r| r.protocol == transport_label),
        "{records:#?}"
    );
    assert!(agent.metric("tollgate_mcp_calls_total{decision=\"deny\"}") >= 2.0);
    assert!(agent.metric("tollgate_mcp_tools_hidden_total") >= 1.0);
}

#[test]
fn streamable_http_calls_are_decided_listings_filtered_and_recorded() {
    calls_decided("streamable-http");
}

#[test]
fn streamable_http_with_json_answers_is_decided_the_same() {
    calls_decided("streamable-http-json");
}

#[test]
fn the_legacy_sse_transport_is_decided_the_same() {
    calls_decided("sse");
}

#[test]
fn a_tool_that_changes_within_its_session_is_flagged_and_its_calls_refused() {
    if !require_root() {
        return;
    }
    let server = McpServer::start("streamable-http");
    let agent = agent_with("");
    let steps = json!([
        ["list"],
        ["call", "echo", {"text": "before"}],
        ["call", "rugpull", {}],
        ["list"],
        ["call", "echo", {"text": "after"}],
    ]);
    let (job, out) = client(Some(&agent), &server, &steps);
    assert_eq!(out[1]["text"], "before");
    assert_eq!(out[2]["text"], "changed");
    // The changed tool is hidden now (no-changed-tools forbids it outright).
    let listed = out[3]["tools"].as_array().expect("a listing");
    assert!(!listed.contains(&json!("echo")), "{out:?}");
    assert!(listed.contains(&json!("query")), "{out:?}");
    assert!(
        out[4]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-changed-tools")),
        "{out:?}"
    );
    let records = mcp_records(&agent, &job, 5);
    let second = records
        .iter()
        .filter(|r| r.mcp.as_ref().is_some_and(|m| m.method == "tools/list"))
        .nth(1)
        .expect("the second listing");
    let facts = second.mcp.as_ref().expect("facts");
    assert_eq!(
        facts.changes,
        ["echo: its description changed"],
        "{facts:?}"
    );
    let last = records.last().expect("the last call");
    assert!(last.mcp.as_ref().is_some_and(|m| m.changed), "{last:?}");
    assert!(agent.metric("tollgate_mcp_tools_changed_total") >= 1.0);
    // The server's listing itself, directly, says what changed.
    let (_, direct) = client(None, &server, &json!([["list"]]));
    assert!(
        direct[0]["descriptions"]["echo"]
            .as_str()
            .is_some_and(|d| d.contains("id_rsa")),
        "{direct:?}"
    );
}

#[test]
fn a_held_call_runs_only_once_approved() {
    held_call("streamable-http");
}

#[test]
fn a_held_call_over_the_legacy_sse_transport_runs_only_once_approved() {
    held_call("sse");
}

/// A call that needs approval waits, inside the client's own request, until a reviewer
/// approves (it then runs) or denies it (the client gets the JSON-RPC error).
fn held_call(transport: &'static str) {
    if !require_root() {
        return;
    }
    let server = McpServer::start(transport);
    let agent = agent_with("[approvals]\ntimeout = \"30s\"\n");
    let deploy = |agent: &Agent, env: &str| {
        let argv = client_argv(&server, &json!([["call", "deploy", {"env": env}]]));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut command = agent.run_command(&[("repository", "acme/agents")], &argv);
        thread::spawn(move || output(&mut command))
    };
    let approved = deploy(&agent, "prod");
    let request = wait_pending(&agent);
    assert_eq!(request.action, "mcp:call");
    assert_eq!(request.policy_ids, ["deploys-need-approval"]);
    assert_eq!(
        request.sql.as_deref(),
        Some(r#"tools/call deploy {"env":"prod"}"#)
    );
    assert!(
        server.take_calls().is_empty(),
        "held: the server saw nothing yet"
    );
    assert!(
        approvals_cli(&agent, &["approve", &request.id])
            .status
            .success()
    );
    let out = approved.join().expect("client");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("deployed to prod"),
        "{}",
        stdout(&out)
    );
    assert_eq!(server.take_calls().len(), 1);

    let denied = deploy(&agent, "staging");
    let request = wait_pending(&agent);
    assert!(
        approvals_cli(&agent, &["deny", &request.id, "--reason", "not today"])
            .status
            .success()
    );
    let out = denied.join().expect("client");
    let text = stdout(&out);
    assert!(
        text.contains("-32001") && text.contains("not today"),
        "{text}"
    );
    assert!(server.take_calls().is_empty());
}

#[test]
fn tool_results_and_recorded_arguments_are_masked() {
    if !require_root() {
        return;
    }
    let server = McpServer::start("streamable-http");
    let steps = json!([
        ["call", "customer", {"name": "ann"}],
        ["call", "echo", {"text": "mail bob@example.com, order 42"}],
    ]);
    let (_, direct) = client(None, &server, &steps);
    assert!(
        direct[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("ann@example.com")),
        "{direct:?}"
    );
    let agent = agent_with("[masking]\nresults = \"detect\"\n");
    let (job, out) = client(Some(&agent), &server, &steps);
    let text = out[0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("****@example.com"), "{out:?}");
    assert!(text.contains("************1111"), "{out:?}");
    assert!(
        !text.contains("ann@example.com") && !text.contains("4111 1111"),
        "{out:?}"
    );
    // Ordinary values stay as they were.
    assert!(text.contains("\"note\": \"ok\""), "{out:?}");
    assert_eq!(out[1]["text"], "mail ****@example.com, order 42");
    // (The client lists the tools too, before its first call: it validates results.)
    let records = mcp_records(&agent, &job, 2);
    let echo = records
        .iter()
        .filter_map(|r| r.mcp.as_ref())
        .find(|m| m.tool.as_deref() == Some("echo"))
        .expect("the echo call");
    assert_eq!(
        echo.arguments.as_deref(),
        Some(r#"{"text":"mail ****@example.com, order 42"}"#)
    );
}
