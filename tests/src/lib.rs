//! Harness for Tollgate's end-to-end tests. Every test gets its own agent, with its own
//! job parent cgroup, pin directory, ports and store; the harness removes all of it and
//! checks that nothing is left. Tests panic with a clear message rather than return
//! errors, and run serially (`--test-threads=1`): they share the kernel.
pub mod agent;
pub mod console;
pub mod dns;
pub mod http;
pub mod https;
pub mod mcp;
pub mod netns;
pub mod oidc;
pub mod postgres;
pub mod servers;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

pub use agent::{Agent, NOBODY, Tables, agent_as_nobody};
pub use postgres::postgres;

/// A helper binary of this package, given where cargo built it
/// (`env!("CARGO_BIN_EXE_…")`): under `TOLLGATE_E2E_HELPERS` when that is set. vm-test
/// sets it to its snapshot of the binaries, which a rebuild on the host cannot change
/// under a running guest (the guest reads the host's files over 9p).
pub fn helper(built: &str) -> String {
    match (
        std::env::var_os("TOLLGATE_E2E_HELPERS"),
        std::path::Path::new(built).file_name(),
    ) {
        (Some(dir), Some(name)) => std::path::Path::new(&dir).join(name).display().to_string(),
        _ => built.to_owned(),
    }
}

/// Whether this is CI (`CI=true`), where a missing capability fails instead of skipping.
/// How much slower than the host this machine runs the tests (`TOLLGATE_TEST_TIME_SCALE`,
/// set by vm-test for a guest under TCG; 1 elsewhere).
pub fn time_scale() -> u32 {
    std::env::var("TOLLGATE_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| (1..=20).contains(n))
        .unwrap_or(1)
}

/// A wait or bound that allows for [`time_scale`].
pub fn scaled(duration: Duration) -> Duration {
    duration * time_scale()
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Fails the test unless it runs as root; outside CI, says loudly that it skips.
/// Returns false when the test should return early.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !in_ci(),
        "end-to-end tests need root (CAP_BPF, cgroups) and CI=true forbids skipping"
    );
    eprintln!("SKIPPED: this end-to-end test needs root; run `sudo cargo xtask test`");
    false
}

/// Runs a command to completion, capturing its output.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs a command to completion with `input` on its stdin, capturing its output. The
/// input is written from another thread, so a large one cannot deadlock on a full pipe.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::{io::Write as _, process::Stdio};
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that exits without reading all of it is its own outcome.
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
    let _ = writer.join();
    out
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The first line a child wrote to its piped stdout, trimmed.
pub fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("piped stdout")),
        &mut line,
    )
    .expect("reading the child's first line");
    line.trim().to_owned()
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, timeout, check, String::new)
}

/// [`wait_for`], whose panic adds what `report` says of how far it got.
pub fn wait_for_or<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    report: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}{}", report());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A free TCP port on loopback (IPv4 and IPv6) within `range`.
pub fn free_port(range: std::ops::Range<u16>) -> u16 {
    for port in range.clone() {
        let v4 = std::net::TcpListener::bind(("127.0.0.1", port));
        let v6 = std::net::TcpListener::bind(("::1", port));
        if v4.is_ok() && v6.is_ok() {
            return port;
        }
    }
    panic!("no free port in {range:?}");
}

/// An ephemeral free port on 127.0.0.1.
pub fn ephemeral_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("binding an ephemeral port: {e}"))
}

/// The Python with the tests' PyPI packages (psycopg 3, requests) that `cargo xtask
/// setup` installs (`TOLLGATE_PYTHON` overrides it).
pub fn python() -> std::path::PathBuf {
    std::env::var_os("TOLLGATE_PYTHON").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python"),
        std::path::PathBuf::from,
    )
}
