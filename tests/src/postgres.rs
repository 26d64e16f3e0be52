//! One real PostgreSQL server per test binary, started on first use in a scratch
//! directory and stopped (and removed) when the test binary exits.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
};

use crate::{ephemeral_port, output, stderr, stdout};

/// A role that authenticates with SCRAM-SHA-256 (password [`SCRAM_PASSWORD`]).
pub const SCRAM_USER: &str = "tollgate_scram";
pub const SCRAM_PASSWORD: &str = "scram-secret";

pub struct Postgres {
    pub port: u16,
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
}

static SERVER: OnceLock<Postgres> = OnceLock::new();
/// (bin dir, scratch dir): the server's data directory is `<scratch>/data`.
static TO_STOP: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);

extern "C" fn stop_at_exit() {
    let taken = TO_STOP.lock().ok().and_then(|mut guard| guard.take());
    if let Some((bin_dir, scratch)) = taken {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin_dir.join("pg_ctl"))
            .args(["-D"])
            .arg(scratch.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = fs::remove_dir_all(&scratch);
    }
}

/// The newest PostgreSQL server installation under /usr/lib/postgresql.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (run `cargo xtask setup`)")
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

pub fn postgres() -> &'static Postgres {
    SERVER.get_or_init(start)
}

fn start() -> Postgres {
    let bin_dir = bin_dir();
    let port = ephemeral_port();
    let data_dir = PathBuf::from(format!("/tmp/tollgate-e2e-pg-{}", std::process::id()));
    let _ = fs::remove_dir_all(&data_dir);
    fs::create_dir_all(&data_dir).expect("pg data dir");
    chown_postgres(&data_dir);
    let as_postgres = |program: &str| {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(bin_dir.join(program));
        cmd
    };
    let init = output(
        as_postgres("initdb")
            .arg("-D")
            .arg(data_dir.join("data"))
            .args(["--auth=trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]),
    );
    assert!(
        init.status.success(),
        "initdb failed: {}{}",
        stdout(&init),
        stderr(&init)
    );
    // TLS with a throwaway certificate, and one role that must use SCRAM.
    let (cert, key) = (data_dir.join("server.crt"), data_dir.join("server.key"));
    let made = output(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-x509",
                "-days",
                "2",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1,IP:::1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    assert!(made.status.success(), "openssl: {}", stderr(&made));
    chown_postgres(&cert);
    chown_postgres(&key);
    let hba = data_dir.join("data/pg_hba.conf");
    let trusting = fs::read_to_string(&hba).expect("pg_hba.conf");
    fs::write(
        &hba,
        format!(
            "host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
             host all {SCRAM_USER} ::1/128 scram-sha-256\n{trusting}"
        ),
    )
    .expect("pg_hba.conf");
    let options = format!(
        "-p {port} -k {dir} -c listen_addresses='127.0.0.1,::1' -c fsync=off \
         -c max_connections=200 -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}",
        dir = data_dir.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let started = output(
        as_postgres("pg_ctl")
            .arg("-D")
            .arg(data_dir.join("data"))
            .arg("-l")
            .arg(data_dir.join("server.log"))
            .args(["-w", "-o", &options, "start"]),
    );
    assert!(
        started.status.success(),
        "pg_ctl start failed: {}{}\n{}",
        stdout(&started),
        stderr(&started),
        fs::read_to_string(data_dir.join("server.log")).unwrap_or_default()
    );
    if let Ok(mut guard) = TO_STOP.lock() {
        *guard = Some((bin_dir.clone(), data_dir.clone()));
    }
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(stop_at_exit) };
    let server = Postgres {
        port,
        bin_dir,
        data_dir,
    };
    let args = server.psql_args(
        "127.0.0.1",
        &format!("CREATE ROLE {SCRAM_USER} LOGIN SUPERUSER PASSWORD '{SCRAM_PASSWORD}'"),
    );
    let role = output(Command::new(&args[0]).args(&args[1..]));
    assert!(
        role.status.success(),
        "creating the SCRAM role: {}",
        stderr(&role)
    );
    server
}

fn chown_postgres(path: &Path) {
    let out = output(Command::new("chown").arg("postgres:postgres").arg(path));
    assert!(out.status.success(), "chown: {}", stderr(&out));
}

impl Postgres {
    /// psql arguments for host `host`: unaligned, tuples only, no psqlrc.
    pub fn psql_args(&self, host: &str, sql: &str) -> Vec<String> {
        vec![
            "psql".to_owned(),
            "-X".to_owned(),
            "-A".to_owned(),
            "-t".to_owned(),
            "-h".to_owned(),
            host.to_owned(),
            "-p".to_owned(),
            self.port.to_string(),
            "-U".to_owned(),
            "postgres".to_owned(),
            "-d".to_owned(),
            "postgres".to_owned(),
            "-c".to_owned(),
            sql.to_owned(),
        ]
    }
}
