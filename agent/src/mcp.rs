//! MCP at L7: JSON-RPC 2.0 over streamable HTTP (a POST answered with JSON or with an SSE
//! stream) and over the legacy SSE transport (a GET stream, whose first event names the
//! endpoint the client POSTs to, answered on the stream). An MCP connection is an HTTP
//! connection followed by `http::session`; this module is what MCP adds to it: reading
//! the messages, deciding each `tools/call` with `mcp:call`, filtering `tools/list`,
//! noticing a tool that changes under the job, and the records of calls.
//!
//! MCP is followed on connections to targets with `protocol = "mcp"`, and on any HTTP
//! connection of a job once a policy names `mcp:call` (a POST whose body is JSON-RPC is
//! then read as MCP).
use serde::{Deserialize, Serialize};

pub mod jsonrpc;
pub mod metrics;
pub mod sessions;
pub mod sse;
pub mod tools;

/// `[mcp]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// Follow MCP inside followed HTTP. Off: MCP is HTTP like any other.
    pub enabled: bool,
    /// The largest JSON-RPC body or SSE event read (bytes); a larger POST is refused
    /// (413), a larger event ends the stream.
    pub max_message_size: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_message_size: 4 * 1024 * 1024,
        }
    }
}

/// What the agent keeps for MCP: its sessions, metrics and config.
pub struct Mcp {
    pub config: McpConfig,
    pub sessions: sessions::Sessions,
    pub metrics: std::sync::Arc<metrics::McpMetrics>,
}

impl Mcp {
    pub fn new(
        config: McpConfig,
        metrics: std::sync::Arc<metrics::McpMetrics>,
        recorder: crate::record::Recorder,
    ) -> Self {
        Self {
            config,
            sessions: sessions::Sessions::new(recorder),
            metrics,
        }
    }
}
