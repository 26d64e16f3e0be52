//! An agent under test.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{ephemeral_port, free_port, output, stderr};

mod readings;

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static REAPED: Once = Once::new();

/// The name of a test agent's cgroup parent and pin directory, and the test process it
/// belongs to.
const PREFIX: &str = "tollgate-test-";

/// Removes what test processes that no longer run left behind: a test binary killed
/// (SIGKILL, a timeout) runs no `Drop`, so its agents' cgroups and pinned programs stay.
/// Each is taken down by the agent's own `--cleanup`, as a test's `Drop` does.
fn reap_stale() {
    let mut names: Vec<String> = [cgroup2_mount(), PathBuf::from("/sys/fs/bpf")]
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let Ok(dir) = tempfile::tempdir() else {
            return;
        };
        let config = dir.path().join("agent.toml");
        let body = format!(
            "[control]\nsocket = \"{socket}\"\n[cgroup]\nparent = \"{name}\"\n\
             [bpf]\npin_dir = \"/sys/fs/bpf/{name}\"\n[state]\ndir = \"{state}\"\n",
            socket = dir.path().join("control.sock").display(),
            state = dir.path().join("state").display(),
        );
        if fs::write(&config, body).is_err() {
            continue;
        }
        let out = Command::new(tollgate_bin())
            .args(["agent", "--cleanup", "--config"])
            .arg(&config)
            .output();
        match out {
            Ok(out) if out.status.success() => eprintln!("removed what a dead test left: {name}"),
            Ok(out) => eprintln!("could not remove {name}: {}", stderr(&out)),
            Err(error) => eprintln!("could not remove {name}: {error}"),
        }
    }
}

/// The tollgate binary under test (`TOLLGATE_BIN`, else target/debug/tollgate).
pub fn tollgate_bin() -> PathBuf {
    std::env::var_os("TOLLGATE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tollgate"),
        PathBuf::from,
    )
}

/// The cgroup2 mount, from /proc/mounts.
pub fn cgroup2_mount() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount")
}

/// Keys added to the test config's tables; `extra` is appended as whole tables.
#[derive(Default)]
pub struct Tables<'a> {
    pub proxy: &'a str,
    pub control: &'a str,
    pub bpf: &'a str,
    pub policy: &'a str,
    pub extra: &'a str,
}

pub struct Agent {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub proxy_port: u16,
    pub admin_port: u16,
    pub cgroup_parent: PathBuf,
    pub pin_dir: PathBuf,
    pub db_path: PathBuf,
    child: Option<Child>,
}

/// Uid and gid of `nobody`.
pub const NOBODY: u32 = 65534;

/// `tollgate` as uid/gid 65534 (nobody), talking to `agent`.
pub fn agent_as_nobody(agent: &Agent) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(tollgate_bin())
        .env("TOLLGATE_CONTROL_SOCKET", &agent.socket);
    cmd
}

impl Agent {
    /// Lets other users reach the control socket (the agent's temp dir is private).
    pub fn open_dir(&self) {
        let out = output(Command::new("chmod").arg("755").arg(self.dir.path()));
        assert!(out.status.success());
    }

    /// The agent's policy directory (absent unless the test creates it).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }
}

impl Agent {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Starts an agent whose config has `extra` appended (whole TOML tables).
    pub fn start_with(extra: &str) -> Self {
        Self::start_configured("", "", extra)
    }

    /// Starts an agent with `control` added to its `[control]` table.
    pub fn start_with_control(control: &str) -> Self {
        Self::start_configured(control, "", "")
    }

    /// Starts an agent whose `[policy]` table has `policy` added (its `dir` is
    /// [`Agent::policy_dir`]) and whose config ends with `extra` (e.g. `[[targets]]`).
    /// `setup` runs before the agent starts, to write policies.
    pub fn start_with_policy(policy: &str, extra: &str, setup: impl FnOnce(&Path)) -> Self {
        let dir = Self::prepare();
        setup(&dir.path().join("policies"));
        Self::start_in(dir, "", policy, extra)
    }

    fn prepare() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("tollgate-e2e-")
            .tempdir()
            .expect("tempdir")
    }

    fn start_configured(control: &str, policy: &str, extra: &str) -> Self {
        Self::start_in(Self::prepare(), control, policy, extra)
    }

    /// Starts an agent with `proxy` added to its `[proxy]` table.
    pub fn start_with_proxy(proxy: &str) -> Self {
        Self::start_tables(Tables {
            proxy,
            ..Tables::default()
        })
    }

    /// Starts an agent with keys added to its tables (see [`Tables`]).
    pub fn start_tables(tables: Tables<'_>) -> Self {
        Self::start_full(Self::prepare(), tables)
    }

    fn start_in(dir: tempfile::TempDir, control: &str, policy: &str, extra: &str) -> Self {
        Self::start_full(
            dir,
            Tables {
                control,
                policy,
                extra,
                ..Tables::default()
            },
        )
    }

    fn start_full(dir: tempfile::TempDir, tables: Tables<'_>) -> Self {
        let Tables {
            proxy,
            control,
            bpf,
            policy,
            extra,
        } = tables;
        REAPED.call_once(reap_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        let proxy_port = free_port(900..1000);
        let admin_port = ephemeral_port();
        let socket = dir.path().join("control.sock");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{name}"));
        let state = dir.path().join("state");
        let config = format!(
            "[proxy]\nport = {proxy_port}\nconnect_timeout = \"3s\"\n{proxy}\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
             [control]\nsocket = \"{socket}\"\n{control}\n\n\
             [cgroup]\nparent = \"{name}\"\n\n\
             [bpf]\npin_dir = \"{pins}\"\n{bpf}\n\n\
             [state]\ndir = \"{state}\"\n\n\
             [policy]\ndir = \"{policies}\"\nreload_interval = \"200ms\"\n{policy}\n\n{extra}\n",
            policies = dir.path().join("policies").display(),
            socket = socket.display(),
            pins = pin_dir.display(),
            state = state.display(),
        );
        let config_path = dir.path().join("agent.toml");
        fs::write(&config_path, config).expect("writing config");
        let mut agent = Self {
            cgroup_parent: cgroup2_mount().join(&name),
            db_path: state.join("recordings.db"),
            dir,
            name,
            config_path,
            socket,
            proxy_port,
            admin_port,
            pin_dir,
            child: None,
        };
        agent.spawn();
        agent
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The agent's log without its terminal colours (`key=value` fields as written).
    pub fn plain_log(&self) -> String {
        strip_ansi(&self.log())
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let child = Command::new(tollgate_bin())
            .args(["agent", "--config"])
            .arg(&self.config_path)
            .env("TOLLGATE_LOG", "info,access=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", tollgate_bin().display()));
        self.child = Some(child);
        let ready = wait_for_ready(self, crate::scaled(Duration::from_secs(30)));
        assert!(ready, "agent did not become ready; log:\n{}", self.log());
    }

    /// Sends a signal to the running agent.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("the agent is running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// SIGKILLs the agent (no cleanup of any kind can run).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the agent and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            // A guest under TCG runs the agent's drain and last commit several times
            // slower (a 5.10 guest's agent had not exited 15 s after its SIGTERM).
            let exited = wait_for_exit(&mut child, crate::scaled(Duration::from_secs(15)));
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent did not exit on SIGTERM; log:\n{}", self.log());
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "agent is still running");
        self.spawn();
    }

    /// `tollgate` with this agent's control socket.
    pub fn tollgate(&self) -> Command {
        let mut cmd = Command::new(tollgate_bin());
        cmd.env("TOLLGATE_CONTROL_SOCKET", &self.socket);
        cmd
    }

    /// `tollgate run --label k=v ... -- cmd...`, to completion.
    pub fn run_job(&self, labels: &[(&str, &str)], cmd: &[&str]) -> Output {
        let mut command = self.run_command(labels, cmd);
        output(&mut command)
    }

    /// Starts `tollgate run -- sleep 300` (through a shell that prints its pid, then
    /// execs) and returns the running `tollgate run` and the sleep's pid.
    pub fn start_sleeping_job(&self, labels: &[(&str, &str)]) -> (Child, u32) {
        let mut child = self
            .run_command(labels, &["sh", "-c", "echo $$; exec sleep 300"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tollgate run");
        let pid = crate::first_line(&mut child)
            .parse()
            .expect("the job's pid");
        (child, pid)
    }

    /// `cmd` in a job of `agent` (`tollgate run`), or direct without one: the two sides
    /// of a differential test.
    pub fn direct_or_in_job(
        agent: Option<&Agent>,
        labels: &[(&str, &str)],
        cmd: &[&str],
    ) -> Command {
        match agent {
            Some(agent) => agent.run_command(labels, cmd),
            None => {
                let mut direct = Command::new(cmd[0]);
                direct.args(&cmd[1..]);
                direct
            }
        }
    }

    pub fn run_command(&self, labels: &[(&str, &str)], cmd: &[&str]) -> Command {
        let mut command = self.tollgate();
        command.arg("run");
        for (k, v) in labels {
            command.arg("--label").arg(format!("{k}={v}"));
        }
        command.arg("--").args(cmd);
        command
    }

    /// GET a path on the admin listener: (status code, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_port, path)
    }

    /// The agent's local CA (`tollgate ca export`), written to a file in its directory,
    /// for clients that verify the certificates it presents.
    pub fn export_ca(&self) -> PathBuf {
        let ca = output(
            self.tollgate()
                .args(["ca", "export", "--config"])
                .arg(&self.config_path),
        );
        assert!(ca.status.success(), "{}", crate::stderr(&ca));
        let file = self.dir.path().join("tollgate-ca.pem");
        std::fs::write(&file, crate::stdout(&ca)).expect("CA file");
        file
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.admin_get("/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    /// The value of one series, e.g. `tollgate_proxy_decisions_total{decision="allow"}`;
    /// 0 when the series is absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// The job cgroup directories currently below this agent's parent.
    pub fn job_cgroups(&self) -> Vec<String> {
        fs::read_dir(&self.cgroup_parent)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops the agent, runs `tollgate agent --cleanup`, and checks nothing is left.
    pub fn cleanup(&mut self) {
        self.stop();
        let out = output(
            Command::new(tollgate_bin())
                .args(["agent", "--cleanup", "--config"])
                .arg(&self.config_path),
        );
        assert!(out.status.success(), "cleanup failed: {}", stderr(&out));
        assert!(
            !self.pin_dir.exists(),
            "{} left behind",
            self.pin_dir.display()
        );
        assert!(
            !self.cgroup_parent.exists(),
            "{} left behind",
            self.cgroup_parent.display()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_none() && !self.pin_dir.exists() && !self.cgroup_parent.exists() {
            return;
        }
        if std::thread::panicking() {
            // Clean up as well as we can without masking the original failure.
            self.kill9();
            let _ = Command::new(tollgate_bin())
                .args(["agent", "--cleanup", "--config"])
                .arg(&self.config_path)
                .output();
            eprintln!("--- agent log ---\n{}", self.log());
        } else {
            self.cleanup();
        }
    }
}

fn wait_for_exit(child: &mut Child, timeout: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn wait_for_ready(agent: &mut Agent, timeout: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if let Some(child) = agent.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "agent exited during startup ({status}); log:\n{}",
                agent.log()
            );
        }
        if let Ok((200, _)) = try_http_get(agent.admin_port, "/readyz") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn try_http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

pub fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The text of a log without its terminal colours.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ending in a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
