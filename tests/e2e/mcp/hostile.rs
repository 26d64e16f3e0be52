//! Hostile MCP: bodies that are not JSON-RPC or too large get a protocol error and the
//! agent goes on; an SSE answer cut in the middle of an event reaches the client as it
//! came, and its call is recorded so.
use serde_json::{Value, json};
use tollgate::record::{DecisionLabel, StatementRecord};
use tollgate_e2e::{Agent, mcp::McpServer, output, require_root, stdout};

use super::{agent_with, client};

/// A server that answers every POST with an SSE stream that ends in the middle of an
/// event: cleanly (the chunked body's last chunk sent) or abruptly (the connection
/// closed without it).
const CUT_SERVER: &str = r#"
import socket, sys
abrupt = sys.argv[1] == "abrupt"
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += conn.recv(65536)
    event = b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"te'
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n" % len(event) + event + b"\r\n" + (b"" if abrupt else b"0\r\n\r\n"))
    conn.close()
"#;

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#;

/// curl POSTing `body` to `url`: (exit code, what it printed).
fn curl_post(agent: Option<&Agent>, url: &str, body: &str) -> (i32, String) {
    let out = output(&mut Agent::direct_or_in_job(
        agent,
        &[("repository", "acme/agents")],
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-H",
            "Accept: application/json, text/event-stream",
            "--data-binary",
            body,
            "-w",
            "\n%{http_code}",
            url,
        ],
    ));
    (out.status.code().unwrap_or(-1), stdout(&out))
}

#[test]
fn hostile_mcp_bytes_get_a_protocol_error_and_the_agent_goes_on() {
    if !require_root() {
        return;
    }
    let server = McpServer::start("streamable-http");
    let agent = agent_with(&format!(
        "[mcp]\nmax_message_size = 2048\n\n[[targets]]\nname = \"tools\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{}]\nprotocol = \"mcp\"\n",
        server.port
    ));
    let url = server.url();
    // Not JSON, and not JSON-RPC: a JSON-RPC error, HTTP 400; the server is not asked.
    for (body, code) in [
        ("{not json", -32700),
        (r#"{"jsonrpc":"2.0","id":1}"#, -32600),
    ] {
        let (exit, text) = curl_post(Some(&agent), &url, body);
        assert_eq!(exit, 0, "{text}");
        let (json, status) = text.rsplit_once('\n').expect("a status");
        assert_eq!(status, "400", "{text}");
        let json: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(json["error"]["code"], code, "{text}");
        assert_eq!(json["id"], Value::Null);
    }
    // Past [mcp] max_message_size: 413.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "x".repeat(4096)
    );
    let (_, text) = curl_post(Some(&agent), &url, &big);
    assert!(text.ends_with("\n413"), "{text}");
    assert!(server.take_calls().is_empty(), "none reached the server");
    // The agent goes on: a real client in a job, after all that.
    let (job, out) = client(
        Some(&agent),
        &server,
        &json!([["call", "echo", {"text": "fine"}]]),
    );
    assert_eq!(out[0]["text"], "fine", "{out:?}");
    assert!(!job.is_empty());
    assert!(agent.metric("tollgate_mcp_malformed_total") >= 3.0);
    let malformed: Vec<StatementRecord> = agent
        .sessions(None)
        .iter()
        .flat_map(|s| agent.statements(s))
        .filter(|s| s.kind == "mcp" && s.decision == DecisionLabel::Malformed)
        .collect();
    assert_eq!(malformed.len(), 2, "{malformed:#?}");
}

#[test]
fn an_sse_answer_cut_mid_event_reaches_the_client_as_it_came_and_is_recorded() {
    if !require_root() {
        return;
    }
    let agent = agent_with("");
    for how in ["clean", "abrupt"] {
        let mut child = std::process::Command::new(tollgate_e2e::python())
            .args(["-c", CUT_SERVER, how])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the cutting server");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("its port");
        let url = format!("http://127.0.0.1:{}/mcp", line.trim());
        let direct = curl_post(None, &url, CALL);
        let in_job = curl_post(Some(&agent), &url, CALL);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            in_job, direct,
            "{how}: the same bytes and the same exit as directly"
        );
        assert!(in_job.1.contains(r#""type":"te"#), "{how}: {in_job:?}");
        if how == "abrupt" {
            assert_ne!(in_job.0, 0, "curl sees the cut: {in_job:?}");
        }
    }
    let records: Vec<StatementRecord> = tollgate_e2e::wait_for(
        "both calls on record",
        tollgate_e2e::scaled(std::time::Duration::from_secs(20)),
        || {
            let records: Vec<StatementRecord> = agent
                .sessions(None)
                .iter()
                .flat_map(|s| agent.statements(s))
                .filter(|s| s.kind == "mcp" && s.error.is_some())
                .collect();
            (records.len() >= 2).then_some(records)
        },
    );
    let errors: Vec<&str> = records.iter().filter_map(|r| r.error.as_deref()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("ended in the middle of an event")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("stream failed")),
        "{errors:?}"
    );
}
