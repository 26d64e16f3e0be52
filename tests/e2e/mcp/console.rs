//! The console's replay of an MCP session, in real headless Chromium
//! (tests/browser/replay_mcp.mjs).
use serde_json::json;
use tollgate_e2e::{mcp::McpServer, output, require_root, stderr, stdout};

use super::{agent_with, client, mcp_records};

#[test]
fn the_console_replays_the_tool_call_timeline_in_chromium() {
    if !require_root() {
        return;
    }
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf();
    if !workspace
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        assert!(
            !tollgate_e2e::in_ci(),
            "playwright-core: run `cargo xtask setup`"
        );
        eprintln!("skipping: no playwright-core (cargo xtask setup installs it)");
        return;
    }
    let server = McpServer::start("streamable-http");
    let agent = agent_with("");
    let (job, out) = client(
        Some(&agent),
        &server,
        &json!([
            ["list"],
            ["call", "echo", {"text": "hello"}],
            ["call", "drop_table", {"table": "orders"}],
        ]),
    );
    assert_eq!(out[2]["error"]["code"], -32001, "{out:?}");
    mcp_records(&agent, &job, 3);
    // The connections that carried each call (the client pools its connections).
    let sessions = agent.sessions(Some(&job));
    let carrying = |tool: &str| {
        sessions
            .iter()
            .find(|s| {
                agent
                    .statements(s)
                    .iter()
                    .any(|st| st.mcp.as_ref().and_then(|m| m.tool.as_deref()) == Some(tool))
            })
            .unwrap_or_else(|| panic!("the connection of the {tool} call"))
            .id
            .clone()
    };
    let (refused, allowed) = (carrying("drop_table"), carrying("echo"));
    let console =
        tollgate_e2e::console::Console::start_args(&agent, None, &["--dev-insecure-local"]);
    let listed = console.client().get("/api/v1/sessions?limit=500").json();
    let replay = |id: &str| {
        let host = listed["sessions"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["id"] == id))
            .and_then(|r| r["host"].as_str())
            .unwrap_or_else(|| panic!("the session {id} in the console: {listed}"));
        format!("/sessions/{host}/{id}")
    };
    let mut artifacts = workspace.join("target/test-artifacts/console");
    if std::fs::create_dir_all(&artifacts).is_err() || tempfile::tempfile_in(&artifacts).is_err() {
        artifacts = std::env::temp_dir().join("tollgate-test-artifacts/console");
    }
    let out = output(
        std::process::Command::new("node")
            .arg("replay_mcp.mjs")
            .current_dir(workspace.join("tests/browser"))
            .env("CONSOLE_URL", &console.url)
            .env(
                "TIMEOUT_MS",
                tollgate_e2e::scaled(std::time::Duration::from_secs(20))
                    .as_millis()
                    .to_string(),
            )
            .env("REFUSED", replay(&refused))
            .env("ALLOWED", replay(&allowed))
            .env("ARTIFACTS", &artifacts)
            .env("CHROMIUM", "/usr/bin/chromium"),
    );
    let text = stdout(&out);
    assert!(
        text.lines().last() == Some("done"),
        "in Chromium: {text}{}\n--- console log ---\n{}",
        stderr(&out),
        console.log()
    );
    assert_eq!(text.matches("ok ").count(), 3, "{text}");
}
