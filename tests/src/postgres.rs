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
    /// psql as the superuser on host `host`: unaligned, tuples only (one line per
    /// value), no psqlrc. Without `-c`, it reads statements from stdin.
    pub fn psql_session_args(&self, host: &str) -> Vec<String> {
        let port = self.port.to_string();
        [
            "psql", "-X", "-A", "-t", "-h", host, "-p", &port, "-U", "postgres", "-d", "postgres",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// psql arguments that run `sql` on host `host` and exit.
    pub fn psql_args(&self, host: &str, sql: &str) -> Vec<String> {
        let mut args = self.psql_session_args(host);
        args.extend(["-c".to_owned(), sql.to_owned()]);
        args
    }

    /// A libpq connection string for the superuser over 127.0.0.1.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

/// A psql session in a job that stays open: statements go in one at a time, and each
/// answer line comes back.
pub struct LiveSession {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl LiveSession {
    pub fn open(agent: &crate::Agent, pg: &Postgres, labels: &[(&str, &str)]) -> Self {
        let args = pg.psql_session_args("127.0.0.1");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = agent
            .run_command(labels, &args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("psql job");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        Self {
            child,
            stdin,
            lines: std::io::BufRead::lines(std::io::BufReader::new(stdout)),
        }
    }

    /// Sends one statement without waiting for an answer.
    pub fn send(&mut self, sql: &str) {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("the session's stdin is open");
        writeln!(stdin, "{sql}").expect("writing to psql");
    }

    /// One statement with a one-line answer.
    pub fn query(&mut self, sql: &str) -> String {
        self.send(sql);
        self.lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no answer to {sql}"))
    }

    /// Closes stdin and waits for psql: its exit status and the lines it still wrote.
    pub fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("psql");
        (status, self.lines.map_while(Result::ok).collect())
    }

    /// Closes stdin and checks that psql exits cleanly.
    pub fn close(self) {
        let (status, rest) = self.finish();
        assert!(status.success(), "psql failed; its last lines: {rest:?}");
    }
}
