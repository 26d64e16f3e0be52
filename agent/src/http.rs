//! HTTP at L7: a job's HTTP/1.1 and HTTP/2 (prior knowledge) connections are served by
//! hyper on the client's side and carried to the destination by a hyper client of the
//! same version. Each request is decided with `http:request` before it is forwarded; a
//! denied one gets a 403 whose JSON body names the policy, and the connection stays
//! usable (keep-alive, the other streams). Each request is recorded on its connection,
//! as a PostgreSQL statement is: method, host, path, status, bytes, duration, decision.
//!
//! A connection is followed when its target declares `protocol = "http"`, or when its
//! first bytes are HTTP and a policy names `http:request`.
use serde::{Deserialize, Serialize};

mod approval;
pub mod body;
mod decided;
pub mod detect;
#[cfg(any(test, feature = "fuzzing"))]
pub mod harness;
pub mod io;
mod masking;
mod mcp;
pub mod metrics;
mod record;
pub mod request;
pub mod session;
pub mod tls;

/// `[http]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Follow HTTP at L7. Off: HTTP connections are relayed at L4 like any other.
    pub enabled: bool,
    /// The request headers policies read as `context.headers` (lowercase names).
    pub headers: Vec<String>,
    /// Record each request's query string (off: the path only; a query often carries
    /// tokens).
    pub record_query: bool,
    /// The largest request or response head (request line or status, and headers).
    pub max_header_size: usize,
    /// `[http.tls]`: TLS to targets with `tls = "terminate"`.
    pub tls: tls::HttpTlsConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            headers: Vec::new(),
            record_query: false,
            max_header_size: 64 * 1024,
            tls: tls::HttpTlsConfig::default(),
        }
    }
}
