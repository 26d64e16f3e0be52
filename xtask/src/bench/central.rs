//! The recording workload: `pgbench -S -c8` through an L7 agent that ships its records
//! to a central store (a database of the bench's own PostgreSQL server). It measures the
//! statements shipped per second, the lag while pgbench runs (sampled every 100 ms), how
//! long the backlog takes to drain after, what was lost (the local chain against the
//! central copy) and the agent's CPU per shipped record and per transaction.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{env::Environment, median, process_cpu};

const PORT: u16 = 972;
const HOST: &str = "bench";

pub struct Sample {
    pub tps: f64,
    pub statements_per_s: f64,
    pub max_lag_s: f64,
    pub drain_s: f64,
    pub lost: i64,
    pub agent_us_per_record: f64,
    pub agent_us_per_txn: f64,
    /// The central store's bytes (table, indexes, TOAST) per record.
    pub bytes_per_record: f64,
}

fn psql(env: &Environment, db: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(env.pg_port.to_string())
        .args(["-d", db, "-c", sql])
        .output()
        .context("psql")?;
    if !out.status.success() {
        bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn metric(admin: u16, name: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-s", "-m", "2"])
        .arg(format!("http://127.0.0.1:{admin}/metrics"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

fn local_records(db: &Path) -> anyhow::Result<i64> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from chain').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .context("python3")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("the local chain's count")
}

pub fn run(
    env: &Environment,
    scratch: &Path,
    round: usize,
    seconds: u64,
) -> anyhow::Result<Sample> {
    let db = format!("tollgate_central_{round}");
    psql(env, "postgres", &format!("DROP DATABASE IF EXISTS {db}"))?;
    psql(env, "postgres", &format!("CREATE DATABASE {db}"))?;
    let url = format!(
        "postgresql://postgres@127.0.0.1:{}/{db}?sslmode=disable",
        env.pg_port
    );
    let migrated = Command::new(&env.bin)
        .args(["central", "migrate", "--url", &url])
        .output()?;
    if !migrated.status.success() {
        bail!(
            "central migrate: {}",
            String::from_utf8_lossy(&migrated.stderr)
        );
    }
    let dir = scratch.join(format!("central-{round}"));
    fs::create_dir_all(&dir)?;
    let name = format!("central-bench-{}-{round}", std::process::id());
    let socket = dir.join("control.sock");
    let admin = super::env::free_port()?;
    let config = dir.join("agent.toml");
    fs::write(
        &config,
        format!(
            "[proxy]\nport = {PORT}\nkernel_verdicts = false\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n[control]\nsocket = \"{socket}\"\n\
             [cgroup]\nparent = \"{name}\"\n[bpf]\npin_dir = \"/sys/fs/bpf/{name}\"\n\
             [state]\ndir = \"{state}\"\n[log]\nlevel = \"warn\"\n\
             [central]\nurl = \"{url}\"\nhost = \"{HOST}\"\n\
             [[targets]]\nname = \"bench\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{pg}]\n\
             protocol = \"postgres\"\n",
            socket = socket.display(),
            state = dir.join("state").display(),
            pg = env.pg_port,
        ),
    )?;
    let log = fs::File::create(dir.join("agent.log"))?;
    let mut agent = Command::new(&env.bin)
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let result = measure(env, &db, &socket, admin, agent.id(), &dir, seconds);
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();
    let _ = Command::new(&env.bin)
        .args(["agent", "--cleanup", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .status();
    result
}

fn measure(
    env: &Environment,
    db_name: &str,
    socket: &Path,
    admin: u16,
    pid: u32,
    dir: &Path,
    seconds: u64,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    while metric(admin, "tollgate_central_up").is_none_or(|up| up < 1.0) {
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "the central agent did not start shipping; see {}",
                dir.display()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    let shipped =
        || metric(admin, "tollgate_central_shipped_total{what=\"records\"}").unwrap_or(0.0);
    let (cpu_before, shipped_before) = (process_cpu(pid)?, shipped());
    let port = env.pg_port.to_string();
    let secs = seconds.to_string();
    let mut pgbench = Command::new(&env.bin)
        .env("TOLLGATE_CONTROL_SOCKET", socket)
        .args([
            "run",
            "--label",
            "bench=central",
            "--",
            "pgbench",
            "-n",
            "-S",
            "-M",
            "simple",
        ])
        .args([
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &secs,
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ])
        .args(["-U", "postgres", "postgres"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut max_lag: f64 = 0.0;
    while pgbench.try_wait()?.is_none() {
        max_lag = max_lag.max(metric(admin, "tollgate_central_lag_seconds").unwrap_or(0.0));
        thread::sleep(Duration::from_millis(100));
    }
    let out = pgbench.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no tps from pgbench: {text}"))?;
    let drained = Instant::now();
    while metric(admin, "tollgate_central_backlog_records").unwrap_or(1.0) > 0.0 {
        if drained.elapsed() > Duration::from_secs(120) {
            bail!("the backlog did not drain in 120 s");
        }
        max_lag = max_lag.max(metric(admin, "tollgate_central_lag_seconds").unwrap_or(0.0));
        thread::sleep(Duration::from_millis(100));
    }
    let drain_s = drained.elapsed().as_secs_f64();
    let cpu = process_cpu(pid)?.saturating_sub(cpu_before);
    let records = (shipped() - shipped_before).max(1.0);
    let central: i64 = psql(
        env,
        db_name,
        &format!("SELECT count(*) FROM tollgate.records WHERE host = '{HOST}'"),
    )?
    .parse()?;
    let statements: f64 = psql(
        env,
        db_name,
        &format!(
            "SELECT count(*) FROM tollgate.records WHERE host = '{HOST}' AND kind = 'statement'"
        ),
    )?
    .parse()?;
    let local = local_records(&dir.join("state/recordings.db"))?;
    let bytes: f64 = psql(
        env,
        db_name,
        "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits \
         WHERE inhparent = 'tollgate.records'::regclass",
    )?
    .parse()?;
    let transactions = (tps * seconds as f64).max(1.0);
    Ok(Sample {
        tps,
        statements_per_s: statements / seconds as f64,
        max_lag_s: max_lag,
        drain_s,
        lost: local - central,
        agent_us_per_record: cpu.as_secs_f64() * 1e6 / records,
        agent_us_per_txn: cpu.as_secs_f64() * 1e6 / transactions,
        bytes_per_record: bytes / (central.max(1) as f64),
    })
}

pub fn report(samples: &[Sample], seconds: u64) {
    if samples.is_empty() {
        return;
    }
    let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    println!();
    println!(
        "recording to a central store: pgbench -S -c8 at L7 for {seconds} s, {} rounds (medians)",
        samples.len()
    );
    println!(
        "{:>10} {:>14} {:>12} {:>10} {:>6} {:>16} {:>14} {:>14}",
        "tps",
        "statements/s",
        "max lag s",
        "drain s",
        "lost",
        "agent us/record",
        "agent us/txn",
        "bytes/record"
    );
    println!(
        "{:>10.1} {:>14.1} {:>12.2} {:>10.2} {:>6} {:>16.2} {:>14.1} {:>14.0}",
        m(|s| s.tps),
        m(|s| s.statements_per_s),
        samples.iter().map(|s| s.max_lag_s).fold(0.0, f64::max),
        m(|s| s.drain_s),
        samples.iter().map(|s| s.lost).sum::<i64>(),
        m(|s| s.agent_us_per_record),
        m(|s| s.agent_us_per_txn),
        m(|s| s.bytes_per_record),
    );
}
