//! An upstream resolver for the DNS tests: dnsmasq on loopback, answering only the names
//! it is given (no /etc/hosts, no upstream of its own), and logging each query it gets.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{ephemeral_port, wait_for};

pub struct Upstream {
    pub port: u16,
    child: Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Upstream {
    /// Answers each `(name, address)` (and every name below it) with that address.
    pub fn start(names: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("dnsmasq.log");
        let port = ephemeral_port();
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--log-queries",
            "--user=root",
            "--local-ttl=60",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--log-facility={}", log.display()));
        for (name, address) in names {
            cmd.arg(format!("--address=/{name}/{address}"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (run `cargo xtask setup`)");
        let upstream = Self {
            port,
            child,
            log,
            _dir: dir,
        };
        wait_for("dnsmasq to answer", Duration::from_secs(10), || {
            let out = Command::new("dig")
                .args(["+short", "+tries=1", "+time=1", "-p"])
                .arg(port.to_string())
                .args(["@127.0.0.1", "ready.invalid"])
                .output()
                .ok()?;
            out.status.success().then_some(())
        });
        upstream
    }

    /// How many queries for `name` it has been asked.
    pub fn queries_for(&self, name: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("query[") && l.contains(&format!(" {name} from")))
            .count()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
