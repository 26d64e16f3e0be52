//! A test host in a network namespace the test creates: a veth pair with addresses from
//! the benchmarking range 198.18.0.0/15, and an HTTP server inside the namespace.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{output, stderr, wait_for};

pub struct NetnsHost {
    pub name: String,
    pub host_ip: String,
    pub peer_ip: String,
    host_if: String,
    servers: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = output(Command::new("ip").args(args));
    assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
}

/// A run killed before its cleanup leaves its namespace `tge2e<pid>-<n>` behind, and
/// with it a route to this test's subnet: removed (its veth pair goes with it).
fn remove_stale(n: u8, ours: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let suffix = format!("-{n}");
    for name in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with("tge2e") && name.ends_with(&suffix) && *name != ours)
    {
        eprintln!("removing the network namespace {name} a killed run left");
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
}

impl NetnsHost {
    /// Creates namespace `tg<n>` with 198.18.<n>.2/30 inside and 198.18.<n>.1/30 here.
    pub fn create(n: u8) -> Self {
        let name = format!("tge2e{}-{n}", std::process::id() % 100_000);
        let host_if = format!("tgh{}{n}", std::process::id() % 10_000);
        let peer_if = format!("tgp{}{n}", std::process::id() % 10_000);
        let (host_ip, peer_ip) = (format!("198.18.{n}.1"), format!("198.18.{n}.2"));
        remove_stale(n, &name);
        let host = Self {
            name: name.clone(),
            host_ip: host_ip.clone(),
            peer_ip: peer_ip.clone(),
            host_if: host_if.clone(),
            servers: Vec::new(),
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            &peer_if,
        ]);
        ip(&["-n", &name, "link", "set", &peer_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        host
    }

    /// Serves files from a scratch directory over HTTP inside the namespace.
    pub fn serve_http(&mut self, port: u16, dir: &std::path::Path) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "python3", "-m", "http.server"])
            .args(["--bind", &self.peer_ip, &port.to_string()])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("http server in netns");
        self.servers.push(child);
        let addr = format!("{}:{port}", self.peer_ip);
        wait_for(
            &format!("the server on {addr}"),
            Duration::from_secs(10),
            || std::net::TcpStream::connect(&addr).ok().map(|_| ()),
        );
    }
}

impl NetnsHost {
    /// Runs `program args` inside the namespace until the host is dropped.
    pub fn spawn(&mut self, program: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("a server in the netns");
        self.servers.push(child);
    }
}

impl Drop for NetnsHost {
    fn drop(&mut self) {
        for mut server in self.servers.drain(..) {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
