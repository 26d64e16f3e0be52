//! The HTTP servers of the end-to-end tests (tests/http/server.mjs, on Node): HTTP/1.1
//! with keep-alive and HTTP/2 over cleartext (prior knowledge), answering JSON about
//! each request as it arrived (method, path, query, body length, version, the peer's
//! port, which a reused connection keeps).
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

pub struct HttpServers {
    /// HTTP/1.1.
    pub h1: u16,
    /// HTTP/2 over cleartext (prior knowledge).
    pub h2: u16,
    /// HTTPS offering h2 and http/1.1 ([`HttpServers::with_tls`]), else 0.
    pub tls: u16,
    child: Child,
}

impl HttpServers {
    pub fn start() -> Self {
        Self::spawn(&[])
    }

    /// With an HTTPS server too, presenting `cert` (PEM, with `key`).
    pub fn with_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        Self::spawn(&[cert, key])
    }

    fn spawn(tls: &[&std::path::Path]) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("http/server.mjs");
        let mut child = Command::new("node")
            .arg(&script)
            .args(tls)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs tests/http/server.mjs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the servers' ports");
        let ports: Vec<u16> = line
            .split_whitespace()
            .map(|p| p.parse().expect("a port"))
            .collect();
        assert_eq!(ports.len(), 2 + tls.len() / 2, "the servers said {line:?}");
        Self {
            h1: ports[0],
            h2: ports[1],
            tls: ports.get(2).copied().unwrap_or(0),
            child,
        }
    }
}

impl Drop for HttpServers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
