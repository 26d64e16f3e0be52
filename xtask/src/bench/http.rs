//! The HTTP workload: wrk with keep-alive against a local origin (nginx answering
//! `200 ok`), through four paths in the same round: direct; Tollgate at L7 (a
//! `protocol = "http"` target, 100 `http:request` policies, every request recorded);
//! nginx as a reverse proxy (keep-alive to the origin, no access log), the peer; and the
//! same nginx writing its access log, a line per request as Tollgate records a row per
//! request. Reported as requests per second, the ratio to direct, p50 and p99 latency,
//! host CPU per request, and the proxy's own CPU per request (agent or nginx, every
//! thread). It has an environment of its own (its agent, the nginx), stopped on every
//! exit path.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::env::free_port;

pub const PATHS: [&str; 4] = ["direct", "tollgate-l7", "nginx", "nginx-logged"];
/// wrk's connections and threads.
const CONNECTIONS: &str = "32";
const THREADS: &str = "2";
/// The policies the agent decides every request with.
const POLICIES: usize = 100;

pub struct Sample {
    pub round: usize,
    pub path: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Host CPU time per request, in microseconds.
    pub cpu_us: f64,
    /// The proxy's own CPU time per request (none for direct).
    pub proxy_us: f64,
}

/// An nginx reverse proxy in front of the origin: the path it serves, and its port.
struct Peer {
    path: &'static str,
    port: u16,
    nginx: Child,
}

/// The origin, the reverse proxies and the agent.
struct Http {
    scratch: PathBuf,
    bin: PathBuf,
    origin_port: u16,
    /// The origin nginx.
    origin: Option<Child>,
    /// The nginx reverse proxies: the peer paths.
    peers: Vec<Peer>,
    agent: Option<Child>,
    config: PathBuf,
    socket: PathBuf,
}

impl Drop for Http {
    fn drop(&mut self) {
        let peers = self.peers.drain(..).map(|peer| peer.nginx);
        for mut child in self.origin.take().into_iter().chain(peers) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut agent) = self.agent.take() {
            let _ = Command::new("kill").arg(agent.id().to_string()).status();
            let _ = agent.wait();
            let _ = Command::new(&self.bin)
                .args(["agent", "--cleanup", "--config"])
                .arg(&self.config)
                .stdout(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.scratch);
    }
}

/// The 100 policies: one permits GETs of the origin, 99 forbid other paths (each is
/// evaluated for every request).
fn policies() -> String {
    let mut text = String::from(
        "@id(\"connect\")\npermit(principal, action == Action::\"connect\", resource);\n\
         @id(\"reads\")\npermit(principal, action == Action::\"http:request\", resource)\n\
         when { context.method == \"GET\" };\n",
    );
    for i in 1..POLICIES {
        text.push_str(&format!(
            "@id(\"no-area-{i}\")\nforbid(principal, action == Action::\"http:request\", \
             resource)\nwhen {{ context.path like \"/area-{i}/*\" }};\n"
        ));
    }
    text
}

fn nginx(scratch: &Path, name: &str, server: &str) -> anyhow::Result<Child> {
    let dir = scratch.join(name);
    fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {dir};\n proxy_temp_path {dir};\n\
             fastcgi_temp_path {dir};\n uwsgi_temp_path {dir};\n scgi_temp_path {dir};\n\
             keepalive_requests 1000000;\n{server}\n}}\n",
            dir = dir.display()
        ),
    )?;
    Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (cargo xtask setup installs it)")
}

impl Http {
    /// `workers`: the agent's `proxy.workers` (0: its default).
    fn start(bin: &Path, workers: usize) -> anyhow::Result<Self> {
        let scratch = PathBuf::from(format!("/tmp/tollgate-bench-http-{}", std::process::id()));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch)?;
        let origin_port = free_port()?;
        let dir = scratch.join("agent");
        fs::create_dir_all(dir.join("policies"))?;
        fs::write(dir.join("policies/http.cedar"), policies())?;
        let mut http = Self {
            config: dir.join("agent.toml"),
            socket: dir.join("control.sock"),
            scratch,
            bin: bin.to_owned(),
            origin_port,
            origin: None,
            peers: Vec::new(),
            agent: None,
        };
        http.origin = Some(nginx(
            &http.scratch,
            "origin",
            &format!(
                " server {{ listen 127.0.0.1:{origin_port}; \
                 location / {{ return 200 \"ok\\n\"; }} }}"
            ),
        )?);
        for (path, log) in [
            ("nginx", String::new()),
            (
                "nginx-logged",
                format!(" access_log {};", http.scratch.join("access.log").display()),
            ),
        ] {
            let port = free_port()?;
            let nginx = nginx(
                &http.scratch,
                path,
                &format!(
                    " upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; }}\n \
                     server {{ listen 127.0.0.1:{port};{log} location / {{ proxy_pass \
                     http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
                     }} }}"
                ),
            )?;
            http.peers.push(Peer { path, port, nginx });
        }
        let name = format!("http-bench-{}", std::process::id());
        fs::write(
            &http.config,
            format!(
                "[proxy]\nport = 972\nworkers = {workers}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [control]\nsocket = \"{socket}\"\n[cgroup]\nparent = \"{name}\"\n\
                 [bpf]\npin_dir = \"/sys/fs/bpf/{name}\"\n[state]\ndir = \"{state}\"\n\
                 [log]\nlevel = \"warn\"\n[policy]\ndir = \"{policies}\"\n\
                 [[targets]]\nname = \"origin\"\ncidrs = [\"127.0.0.1/32\"]\n\
                 ports = [{origin_port}]\nprotocol = \"http\"\n",
                admin = free_port()?,
                socket = http.socket.display(),
                state = dir.join("state").display(),
                policies = dir.join("policies").display(),
            ),
        )?;
        let log = fs::File::create(dir.join("agent.log"))?;
        http.agent = Some(
            Command::new(bin)
                .arg("agent")
                .arg("--config")
                .arg(&http.config)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting the agent")?,
        );
        let start = Instant::now();
        while !http.socket.exists() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("the agent did not start; see {}/agent.log", dir.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Every path answers before measuring.
        for path in 0..PATHS.len() {
            http.wrk(path, 1)?;
        }
        Ok(http)
    }

    /// The nginx proxy that serves `path`, if one does.
    fn peer(&self, path: usize) -> Option<&Peer> {
        self.peers.iter().find(|peer| peer.path == PATHS[path])
    }

    /// The process that proxies `path` (none for direct).
    fn proxy_pid(&self, path: usize) -> Option<u32> {
        match PATHS[path] {
            "tollgate-l7" => self.agent.as_ref().map(Child::id),
            _ => self.peer(path).map(|peer| peer.nginx.id()),
        }
    }

    /// wrk for `seconds` on `path`: (requests/s, p50 ms, p99 ms, requests).
    fn wrk(&self, path: usize, seconds: u64) -> anyhow::Result<(f64, f64, f64, f64)> {
        let port = self.peer(path).map_or(self.origin_port, |peer| peer.port);
        let url = format!("http://127.0.0.1:{port}/");
        let duration = format!("{seconds}s");
        let wrk = [
            "wrk",
            "-t",
            THREADS,
            "-c",
            CONNECTIONS,
            "-d",
            &duration,
            "--latency",
            &url,
        ];
        let mut cmd = if PATHS[path] == "tollgate-l7" {
            let mut cmd = Command::new(&self.bin);
            cmd.env("TOLLGATE_CONTROL_SOCKET", &self.socket)
                .args(["run", "--label", "bench=http", "--"])
                .args(wrk);
            cmd
        } else {
            let mut cmd = Command::new(wrk[0]);
            cmd.args(&wrk[1..]);
            cmd
        };
        let out = cmd.output().context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
            bail!(
                "wrk ({}) failed: {text}{}",
                PATHS[path],
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let field = |prefix: &str| {
            text.lines()
                .find_map(|l| l.trim_start().strip_prefix(prefix))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
                .with_context(|| format!("no `{prefix}` in wrk's output: {text}"))
        };
        let rps: f64 = field("Requests/sec:")?.parse()?;
        let requests: f64 = text
            .lines()
            .find_map(|l| l.split_once(" requests in "))
            .and_then(|(n, _)| n.trim().parse().ok())
            .with_context(|| format!("no request count in wrk's output: {text}"))?;
        Ok((
            rps,
            millis(&field("50%")?)?,
            millis(&field("99%")?)?,
            requests,
        ))
    }
}

/// wrk's latency (`812.00us`, `1.20ms`, `2.01s`) in milliseconds.
fn millis(text: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("a latency wrk prints: {text}")
    };
    Ok(number.parse::<f64>()? * factor)
}

/// `rounds` rounds of every path, `seconds` each.
pub fn run(bin: &Path, rounds: usize, seconds: u64, workers: usize) -> anyhow::Result<Vec<Sample>> {
    let http = Http::start(bin, workers)?;
    let mut samples = Vec::new();
    for round in 0..rounds {
        for path in 0..PATHS.len() {
            let ((rps, p50_ms, p99_ms, requests), busy, proxy_cpu) =
                super::cpu_over(http.proxy_pid(path), || http.wrk(path, seconds))?;
            samples.push(Sample {
                round,
                path,
                rps,
                p50_ms,
                p99_ms,
                cpu_us: busy.as_secs_f64() * 1e6 / requests.max(1.0),
                proxy_us: proxy_cpu.as_secs_f64() * 1e6 / requests.max(1.0),
            });
        }
    }
    Ok(samples)
}

pub fn report(samples: &[Sample], rounds: usize) {
    if samples.is_empty() {
        return;
    }
    println!();
    println!(
        "http: wrk -t{THREADS} -c{CONNECTIONS} keep-alive to nginx answering 200, {rounds} \
         rounds; tollgate-l7 decides every request with {POLICIES} http:request policies; \
         ratio = path req/s / direct req/s of the same round"
    );
    println!(
        "{:<12} {:>12} {:>13} {:>10} {:>10} {:>14} {:>11} {:>13}",
        "path",
        "median req/s",
        "median ratio",
        "p50 ms",
        "p99 ms",
        "p99 over direct",
        "cpu-us/req",
        "proxy-us/req"
    );
    let of =
        |round: usize, path: usize| samples.iter().find(|s| s.round == round && s.path == path);
    for (index, name) in PATHS.iter().enumerate() {
        let mine = || samples.iter().filter(|s| s.path == index);
        let ratios: Vec<f64> = (0..rounds)
            .filter_map(|r| Some(of(r, index)?.rps / of(r, 0)?.rps))
            .collect();
        let added: Vec<f64> = (0..rounds)
            .filter_map(|r| Some(of(r, index)?.p99_ms - of(r, 0)?.p99_ms))
            .collect();
        println!(
            "{:<12} {:>12.0} {:>13.3} {:>10.3} {:>10.3} {:>14.3} {:>11.1} {:>13.1}",
            name,
            super::median(mine().map(|s| s.rps).collect()),
            super::median(ratios),
            super::median(mine().map(|s| s.p50_ms).collect()),
            super::median(mine().map(|s| s.p99_ms).collect()),
            super::median(added),
            super::median(mine().map(|s| s.cpu_us).collect()),
            super::median(mine().map(|s| s.proxy_us).collect()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latencies_read_in_milliseconds() {
        assert!((millis("812.00us").unwrap() - 0.812).abs() < 1e-9);
        assert!((millis("1.20ms").unwrap() - 1.2).abs() < 1e-9);
        assert!((millis("2.01s").unwrap() - 2010.0).abs() < 1e-9);
        assert!(millis("12").is_err());
        assert_eq!(policies().matches("@id(").count(), POLICIES + 1);
    }
}
