//! The benchmark's environment: a scratch PostgreSQL, pgbouncer, dnsmasq and one
//! Tollgate agent per path, all stopped on every exit path.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{AGENTS, Options, PATHS, is_baseline};
use crate::run;

pub(super) struct RunningAgent {
    /// The build it runs (this one, or `--baseline`): its CLI starts its jobs.
    pub(super) bin: PathBuf,
    pub(super) child: Child,
    pub(super) config: PathBuf,
    pub(super) socket: PathBuf,
}

/// PostgreSQL, pgbouncer and a Tollgate agent, all in a scratch directory, stopped on
/// every exit path.
pub(super) struct Environment {
    pub(super) scratch: PathBuf,
    pub(super) bin: PathBuf,
    pg_bin: PathBuf,
    pub(super) pg_port: u16,
    bouncer_port: u16,
    bouncer: Option<Child>,
    /// The DNS workload's upstream resolver.
    pub(super) dns_port: u16,
    dnsmasq: Option<Child>,
    pub(super) agents: Vec<(&'static str, RunningAgent)>,
    pg_started: bool,
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(super) fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (cargo xtask setup)")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL under /usr/lib/postgresql")
}

pub(super) fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(program);
    cmd
}

impl Environment {
    pub(super) fn start(scratch: &Path, bin: &Path, options: &Options) -> anyhow::Result<Self> {
        let _ = fs::remove_dir_all(scratch);
        fs::create_dir_all(scratch)?;
        run(Command::new("chown").arg("postgres:postgres").arg(scratch))?;
        let mut env = Self {
            scratch: scratch.to_owned(),
            bin: bin.to_owned(),
            pg_bin: pg_bin_dir()?,
            pg_port: free_port()?,
            bouncer_port: free_port()?,
            bouncer: None,
            dns_port: free_port()?,
            dnsmasq: None,
            agents: Vec::new(),
            pg_started: false,
        };
        if let Err(error) = env.start_all(options) {
            env.stop();
            return Err(error);
        }
        Ok(env)
    }

    fn start_all(&mut self, options: &Options) -> anyhow::Result<()> {
        let (scale, workers) = (options.scale, options.workers);
        let data = self.scratch.join("pgdata");
        run(as_postgres(&self.pg_bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null()))?;
        let server_options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100 \
             -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off",
            self.pg_port,
            self.scratch.display()
        );
        run(as_postgres(&self.pg_bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.scratch.join("pg.log"))
            .args(["-w", "-o", &server_options, "start"])
            .stdout(Stdio::null()))?;
        self.pg_started = true;
        run(Command::new("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string()])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.pg_port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("postgres")
            .stderr(Stdio::null()))?;

        let ini = format!(
            "[databases]\npostgres = host=127.0.0.1 port={pg} dbname=postgres user=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\n\
             pool_mode = session\nmax_client_conn = 200\ndefault_pool_size = 20\n\
             unix_socket_dir =\nlogfile = {dir}/pgbouncer.log\n",
            pg = self.pg_port,
            port = self.bouncer_port,
            dir = self.scratch.display()
        );
        let ini_path = self.scratch.join("pgbouncer.ini");
        fs::write(&ini_path, ini)?;
        run(Command::new("chown")
            .arg("postgres:postgres")
            .arg(&ini_path))?;
        // setpriv execs pgbouncer itself, so killing the child stops pgbouncer (runuser
        // would stay in between).
        self.bouncer = Some(
            Command::new("setpriv")
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg("/usr/sbin/pgbouncer")
                .arg(&ini_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting pgbouncer")?,
        );

        self.dnsmasq = Some(
            Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--pid-file=",
                    "--user=root",
                    "--local-ttl=300",
                    "--cache-size=0",
                    "--address=/bench.example/127.0.0.1",
                ])
                .arg(format!("--port={}", self.dns_port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting dnsmasq (cargo xtask setup installs it)")?,
        );

        for (path, port, postgres, durable, kernel) in AGENTS {
            let bin = if is_baseline(path) {
                match &options.baseline {
                    Some(baseline) => baseline.clone(),
                    None => continue,
                }
            } else {
                self.bin.clone()
            };
            let name = format!("{path}-bench-{}", std::process::id());
            let dir = self.scratch.join(path);
            fs::create_dir_all(&dir)?;
            let socket = dir.join("control.sock");
            let config_path = dir.join("agent.toml");
            let config = format!(
                "[proxy]\nport = {port}\nkernel_verdicts = {kernel}\nworkers = {workers}\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [control]\nsocket = \"{socket}\"\n[cgroup]\nparent = \"{name}\"\n\
                 [bpf]\npin_dir = \"/sys/fs/bpf/{name}\"\n[state]\ndir = \"{state}\"\n\
                 [log]\nlevel = \"warn\"\n[postgres]\nenabled = {postgres}\n\
                 [recording]\ndurable = {durable}\n\
                 [dns]\nupstreams = [\"127.0.0.1:{dns}\"]\n{target}",
                target = if postgres {
                    format!(
                        "[[targets]]\nname = \"bench\"\ncidrs = [\"127.0.0.1/32\"]\n\
                         ports = [{}]\nprotocol = \"postgres\"\n",
                        self.pg_port
                    )
                } else {
                    String::new()
                },
                dns = self.dns_port,
                admin = free_port()?,
                socket = socket.display(),
                state = dir.join("state").display(),
            );
            fs::write(&config_path, config)?;
            let log = fs::File::create(dir.join("agent.log"))?;
            let child = Command::new(&bin)
                .arg("agent")
                .arg("--config")
                .arg(&config_path)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting the agent")?;
            self.agents.push((
                path,
                RunningAgent {
                    bin,
                    child,
                    config: config_path,
                    socket: socket.clone(),
                },
            ));
            let start = Instant::now();
            while !socket.exists() {
                if start.elapsed() > Duration::from_secs(20) {
                    bail!("the agent did not start; see {}/agent.log", dir.display());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Every path must answer before measuring.
        for path in PATHS {
            if is_baseline(path) && options.baseline.is_none() {
                continue;
            }
            self.pgbench(path, &["-S", "-t", "10"], 0)?;
        }
        Ok(())
    }

    /// Runs pgbench on `path` and returns its TPS.
    /// The process that relays `path`'s connections, if any: its agent, or pgbouncer.
    pub(super) fn proxy_pid(&self, path: &str) -> Option<u32> {
        if path == "pgbouncer" {
            return self.bouncer.as_ref().map(Child::id);
        }
        self.agents
            .iter()
            .find(|(name, _)| *name == path)
            .map(|(_, agent)| agent.child.id())
    }

    pub(super) fn pgbench(&self, path: &str, args: &[&str], seconds: u64) -> anyhow::Result<f64> {
        let port = if path == "pgbouncer" {
            self.bouncer_port
        } else {
            self.pg_port
        };
        let mut pgbench = vec![
            "pgbench".to_owned(),
            "-n".to_owned(),
            "-h".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-U".to_owned(),
            "postgres".to_owned(),
        ];
        pgbench.extend(args.iter().map(|a| (*a).to_owned()));
        if seconds > 0 {
            pgbench.extend(["-T".to_owned(), seconds.to_string()]);
        }
        pgbench.push("postgres".to_owned());
        let agent = self.agents.iter().find(|(name, _)| *name == path);
        let mut cmd = if let Some((_, agent)) = agent {
            let mut cmd = Command::new(&agent.bin);
            cmd.env("TOLLGATE_CONTROL_SOCKET", &agent.socket)
                .args(["run", "--label", "bench=pgbench", "--"])
                .args(&pgbench);
            cmd
        } else {
            let mut cmd = Command::new(&pgbench[0]);
            cmd.args(&pgbench[1..]);
            cmd
        };
        let out = cmd
            .output()
            .with_context(|| format!("running pgbench ({path})"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "pgbench ({path}) failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        text.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|tps| tps.parse().ok())
            .with_context(|| format!("no tps in pgbench output ({path}): {text}"))
    }

    pub(super) fn stop(&mut self) {
        for (_, mut agent) in self.agents.drain(..) {
            let _ = Command::new("kill")
                .arg(agent.child.id().to_string())
                .status();
            let _ = agent.child.wait();
            let _ = Command::new(&agent.bin)
                .args(["agent", "--cleanup", "--config"])
                .arg(&agent.config)
                .stdout(Stdio::null())
                .status();
        }
        for child in [self.bouncer.take(), self.dnsmasq.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.pg_started {
            let _ = as_postgres(&self.pg_bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.scratch.join("pgdata"))
                .args(["-m", "fast", "-w", "stop"])
                .stdout(Stdio::null())
                .status();
            self.pg_started = false;
        }
        let _ = fs::remove_dir_all(&self.scratch);
    }
}
