//! The MCP servers and client of the end-to-end tests: tests/mcp/server.py and
//! tests/mcp/client.py, on the official MCP Python SDK (PyPI `mcp`, in the venv that
//! `cargo xtask setup` makes).
use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

/// One MCP server.
pub struct McpServer {
    pub port: u16,
    /// `streamable-http`, `streamable-http-json` or `sse`.
    pub transport: &'static str,
    calls: tempfile::NamedTempFile,
    child: Child,
}

impl McpServer {
    pub fn start(transport: &'static str) -> Self {
        let port = crate::ephemeral_port();
        let calls = tempfile::NamedTempFile::new().expect("a calls log");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp/server.py");
        let child = Command::new(crate::python())
            .arg(&script)
            .arg(transport)
            .arg(port.to_string())
            .arg(calls.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python runs tests/mcp/server.py");
        let server = Self {
            port,
            transport,
            calls,
            child,
        };
        crate::wait_for(
            "the MCP server to listen",
            crate::scaled(Duration::from_secs(30)),
            || TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()),
        );
        server
    }

    /// The URL its clients open.
    pub fn url(&self) -> String {
        let path = if self.transport == "sse" {
            "sse"
        } else {
            "mcp"
        };
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The client's transport.
    pub fn client_transport(&self) -> &'static str {
        if self.transport == "sse" {
            "sse"
        } else {
            "streamable-http"
        }
    }

    /// The calls the server ran, as (tool, arguments), and forgets them.
    pub fn take_calls(&self) -> Vec<(String, Value)> {
        let text = std::fs::read_to_string(self.calls.path()).unwrap_or_default();
        std::fs::write(self.calls.path(), b"").expect("clear the calls log");
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|v| {
                (
                    v["tool"].as_str().unwrap_or_default().to_owned(),
                    v["arguments"].clone(),
                )
            })
            .collect()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The argv of tests/mcp/client.py taking `steps` against `server`.
pub fn client_argv(server: &McpServer, steps: &Value) -> Vec<String> {
    vec![
        crate::python().display().to_string(),
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("mcp/client.py")
            .display()
            .to_string(),
        server.client_transport().to_owned(),
        server.url(),
        steps.to_string(),
    ]
}
