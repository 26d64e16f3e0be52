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
    install: Install,
    /// The server's options, to start it again.
    options: String,
}

/// A server of one test's own, for tests that stop and start it; stopped and removed
/// when dropped.
pub struct OwnPostgres(Postgres);

impl std::ops::Deref for OwnPostgres {
    type Target = Postgres;

    fn deref(&self) -> &Postgres {
        &self.0
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.0.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        let _ = fs::remove_dir_all(&self.0.data_dir);
    }
}

static OWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A PostgreSQL server of the calling test's own (this host's installation).
pub fn own_postgres() -> OwnPostgres {
    let n = OWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    OwnPostgres(start_tagged(
        Install {
            root: None,
            bin_dir: bin_dir(),
        },
        &format!("own{n}"),
    ))
}

static SERVER: OnceLock<Postgres> = OnceLock::new();
static SERVER_17: OnceLock<Postgres> = OnceLock::new();
/// The servers to stop at exit: how to run their programs, and their scratch dirs.
static TO_STOP: Mutex<Vec<(Install, PathBuf)>> = Mutex::new(Vec::new());

/// Where a server's programs are: on this host, or in a Debian root of another release
/// (run with chroot; it shares this host's network).
#[derive(Clone)]
struct Install {
    root: Option<PathBuf>,
    /// As the server sees it.
    bin_dir: PathBuf,
}

impl Install {
    /// A server program run as the `postgres` user.
    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = match &self.root {
            Some(root) => {
                let mut cmd = Command::new("chroot");
                cmd.arg(root).arg("runuser");
                cmd
            }
            None => Command::new("runuser"),
        };
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin_dir.join(program));
        cmd
    }

    /// `path` (on this host) as the server sees it.
    fn inner(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => Path::new("/").join(path.strip_prefix(root).unwrap_or(path)),
            None => path.to_owned(),
        }
    }

    fn chown_postgres(&self, path: &Path) {
        let mut cmd = match &self.root {
            Some(root) => {
                let mut cmd = Command::new("chroot");
                cmd.arg(root).arg("chown");
                cmd
            }
            None => Command::new("chown"),
        };
        let out = output(cmd.arg("postgres:postgres").arg(self.inner(path)));
        assert!(out.status.success(), "chown: {}", stderr(&out));
    }

    fn scratch(&self, tag: &str) -> PathBuf {
        let base = match &self.root {
            Some(root) => root.join("var/tmp"),
            None => PathBuf::from("/tmp"),
        };
        base.join(format!("tollgate-e2e-pg{tag}-{}", std::process::id()))
    }
}

extern "C" fn stop_at_exit() {
    let taken = TO_STOP
        .lock()
        .map(|mut guard| std::mem::take(&mut *guard))
        .unwrap_or_default();
    for (install, scratch) in taken {
        let _ = install
            .as_postgres("pg_ctl")
            .args(["-D"])
            .arg(install.inner(&scratch.join("data")))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = fs::remove_dir_all(&scratch);
    }
}

/// The Debian trixie root with PostgreSQL 17 that `cargo xtask setup` makes
/// (`TOLLGATE_PG17_ROOT`, default `target/trixie-root`).
pub fn pg17_root() -> PathBuf {
    std::env::var_os("TOLLGATE_PG17_ROOT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/trixie-root"),
        PathBuf::from,
    )
}

/// A PostgreSQL 17 server (trixie's, in a chroot), for features of newer servers and
/// clients (direct TLS). Started on first use; stopped when the test binary exits.
pub fn postgres17() -> &'static Postgres {
    SERVER_17.get_or_init(|| {
        let root = pg17_root();
        let bin_dir = PathBuf::from("/usr/lib/postgresql/17/bin");
        assert!(
            root.join(bin_dir.strip_prefix("/").unwrap_or(&bin_dir))
                .join("postgres")
                .exists(),
            "no PostgreSQL 17 in {}: run `cargo xtask setup`",
            root.display()
        );
        start(Install {
            root: Some(root),
            bin_dir,
        })
    })
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
    SERVER.get_or_init(|| {
        start(Install {
            root: None,
            bin_dir: bin_dir(),
        })
    })
}

fn start(install: Install) -> Postgres {
    let tag = if install.root.is_some() { "17" } else { "" };
    start_tagged(install, tag)
}

fn start_tagged(install: Install, tag: &str) -> Postgres {
    let port = ephemeral_port();
    let data_dir = install.scratch(tag);
    let _ = fs::remove_dir_all(&data_dir);
    fs::create_dir_all(&data_dir).expect("pg data dir");
    install.chown_postgres(&data_dir);
    let as_postgres = |program: &str| install.as_postgres(program);
    let inner = |path: &Path| install.inner(path);
    let init = output(
        as_postgres("initdb")
            .arg("-D")
            .arg(inner(&data_dir.join("data")))
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
    install.chown_postgres(&cert);
    install.chown_postgres(&key);
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
        dir = inner(&data_dir).display(),
        cert = inner(&cert).display(),
        key = inner(&key).display(),
    );
    let server = Postgres {
        port,
        bin_dir: install.bin_dir.clone(),
        data_dir: data_dir.clone(),
        install: install.clone(),
        options,
    };
    server.start_again();
    if let Ok(mut guard) = TO_STOP.lock() {
        if guard.is_empty() {
            // SAFETY: registering a plain extern "C" function, once.
            unsafe { libc::atexit(stop_at_exit) };
        }
        guard.push((install.clone(), data_dir.clone()));
    }
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

impl Postgres {
    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        output(
            self.install
                .as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.install.inner(&self.data_dir.join("data")))
                .args(args),
        )
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): connections are cut.
    pub fn stop_immediate(&self) {
        let out = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop: {}", stderr(&out));
    }

    /// `pgbench -i -s 1`, directly (its DDL would need policy in a job).
    pub fn pgbench_init(&self) {
        let init = output(
            Command::new("pgbench")
                .args([
                    "-i",
                    "-q",
                    "-s",
                    "1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-p",
                ])
                .arg(self.port.to_string())
                .arg("postgres"),
        );
        assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
    }

    /// Re-reads the server's configuration and TLS files (`pg_ctl reload`).
    pub fn reload(&self) {
        let out = self.pg_ctl(&["reload"]);
        assert!(out.status.success(), "pg_ctl reload: {}", stderr(&out));
    }

    /// Makes the server present a certificate for 127.0.0.1 issued by a CA of its own,
    /// and returns that CA's PEM file (for `sslmode=verify-full`).
    pub fn issue_certificate(&self) -> PathBuf {
        let dir = self.data_dir.join("ca");
        fs::create_dir_all(&dir).expect("ca dir");
        let openssl = |args: &[&str]| {
            let out = output(Command::new("openssl").current_dir(&dir).args(args));
            assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
        };
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=tollgate-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-new",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ]);
        fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.crt",
        ]);
        for (from, to) in [("leaf.crt", "server.crt"), ("leaf.key", "server.key")] {
            let target = self.data_dir.join(to);
            fs::copy(dir.join(from), &target).expect("copy certificate");
            self.install.chown_postgres(&target);
        }
        self.reload();
        dir.join("ca.pem")
    }

    /// Starts the server (again), on its port.
    pub fn start_again(&self) {
        let log = self.install.inner(&self.data_dir.join("server.log"));
        let log = log.display().to_string();
        let started = self.pg_ctl(&["-l", &log, "-w", "-o", &self.options, "start"]);
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            stdout(&started),
            stderr(&started),
            fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
        );
    }

    /// psql as the superuser on host `host`: unaligned, tuples only (one line per
    /// value), no psqlrc. Without `-c`, it reads statements from stdin.
    /// A `[[targets]]` entry declaring this server a PostgreSQL target: followed at L7
    /// (without a policy directory an undeclared server takes the kernel path).
    pub fn target(&self) -> String {
        format!(
            "[[targets]]\nname = \"pg-{port}\"\ncidrs = [\"127.0.0.1/32\", \"::1/128\"]\n\
             ports = [{port}]\nprotocol = \"postgres\"\n",
            port = self.port
        )
    }

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
