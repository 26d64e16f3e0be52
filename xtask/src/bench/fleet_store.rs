//! The console benchmark's central store: a PostgreSQL cluster of its own in
//! target/bench/console/central, loaded once with the same records as the local store
//! (`tollgate bench-store --copy-records` into `COPY tollgate.records`, so the schema's
//! trigger fills the typed tables as shipping does) and kept between runs.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::env::{as_postgres, free_port, pg_bin_dir};

/// The central schema version the store is loaded at (agent/src/central/schema.rs).
const CENTRAL_SCHEMA: u32 = 2;
const DB: &str = "fleet";
/// What loading needs on the disk: the cluster was 37 GB with its WAL for the 2.5M
/// statement store, plus room for the checkpoints in flight.
const LOAD_NEEDS_GB: u64 = 45;

pub struct FleetStore {
    dir: PathBuf,
    pg_bin: PathBuf,
    port: u16,
}

fn ok(what: &str, status: std::io::Result<std::process::ExitStatus>) -> anyhow::Result<()> {
    let status = status.with_context(|| what.to_owned())?;
    if !status.success() {
        bail!("{what}: {status}");
    }
    Ok(())
}

impl FleetStore {
    /// Starts the cluster, loading it first if it is missing or of another shape
    /// (`shape`: the local store's).
    pub fn start(root: &Path, bin: &Path, db: &Path, shape: &str) -> anyhow::Result<Self> {
        let dir = root.join("target/bench/console/central");
        let stamp = dir.join("loaded");
        let shape = format!("{shape}central schema {CENTRAL_SCHEMA}\n");
        let loaded = fs::read_to_string(&stamp).is_ok_and(|s| s == shape);
        if !loaded {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)?;
            let free = free_gb(&dir)?;
            if free < LOAD_NEEDS_GB {
                let _ = fs::remove_dir_all(&dir);
                bail!(
                    "the console bench's central store needs about {LOAD_NEEDS_GB} GB free \
                     under {} and {free} GB are; free some space (say target/debug) and \
                     run it again",
                    dir.display()
                );
            }
            ok(
                "chown",
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&dir)
                    .status(),
            )?;
        }
        let store = Self {
            pg_bin: pg_bin_dir()?,
            port: free_port()?,
            dir,
        };
        if !loaded {
            ok(
                "initdb",
                as_postgres(&store.pg_bin.join("initdb"))
                    .arg("-D")
                    .arg(store.dir.join("pgdata"))
                    .args(["--auth=trust", "-U", "postgres", "--no-sync"])
                    .stdout(Stdio::null())
                    .status(),
            )?;
        }
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c shared_buffers=2GB \
             -c fsync=off -c synchronous_commit=off -c max_wal_size=2GB \
             -c maintenance_work_mem=1GB -c work_mem=64MB",
            store.port,
            store.dir.display()
        );
        ok(
            "pg_ctl start",
            as_postgres(&store.pg_bin.join("pg_ctl"))
                .arg("-D")
                .arg(store.dir.join("pgdata"))
                .arg("-l")
                .arg(store.dir.join("pg.log"))
                .args(["-w", "-o", &options, "start"])
                .stdout(Stdio::null())
                .status(),
        )?;
        if !loaded {
            store.load(bin, db)?;
            fs::write(&stamp, shape)?;
        }
        Ok(store)
    }

    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{DB}?sslmode=disable",
            self.port
        )
    }

    fn psql(&self, db: &str) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-d", db]);
        cmd
    }

    fn load(&self, bin: &Path, db: &Path) -> anyhow::Result<()> {
        eprintln!("xtask: bench: console: loading the central store (once)");
        let started = Instant::now();
        ok(
            "createdb",
            self.psql("postgres")
                .args(["-c", &format!("CREATE DATABASE {DB}")])
                .status(),
        )?;
        ok(
            "tollgate central migrate",
            Command::new(bin)
                .args(["central", "migrate", "--url", &self.url()])
                .stdout(Stdio::null())
                .status(),
        )?;
        ok(
            "the partition",
            self.psql(DB)
                .args([
                    "-c",
                    "CREATE TABLE tollgate.records_bench PARTITION OF tollgate.records DEFAULT",
                ])
                .status(),
        )?;
        let mut records = Command::new(bin)
            .args(["bench-store", "--copy-records", "bench-1", "--out"])
            .arg(db)
            .stdout(Stdio::piped())
            .spawn()
            .context("tollgate bench-store --copy-records")?;
        let stdout = records.stdout.take().context("its stdout")?;
        let copied = self
            .psql(DB)
            .args([
                "-c",
                "COPY tollgate.records (host, seq, at, kind, record_id, body, prev, hash) \
                 FROM STDIN",
            ])
            .stdin(stdout)
            .status();
        ok("tollgate bench-store --copy-records", records.wait())?;
        ok("COPY tollgate.records", copied)?;
        ok("ANALYZE", self.psql(DB).args(["-c", "ANALYZE"]).status())?;
        eprintln!(
            "xtask: bench: console: central store loaded in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The space free on the file system that holds `path`, in GB (`df`, as statvfs
/// would need unsafe code or another dependency here).
fn free_gb(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .args(["--block-size=1G", "--output=avail"])
        .arg(path)
        .output()
        .context("df")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df's answer for {}: {text:?}", path.display()))
}

impl Drop for FleetStore {
    fn drop(&mut self) {
        let _ = as_postgres(&self.pg_bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("pgdata"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
        eprintln!(
            "xtask: bench: console: the central store stays in {} for the next run \
             (tens of GB); remove the directory to free the space",
            self.dir.display()
        );
    }
}
