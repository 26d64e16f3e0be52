//! Unix sockets (`unix:connect`, cgroup/connect_unix and sendmsg_unix, kernel 6.7+): a
//! job's connect to a container engine's socket is refused (EPERM) unless a policy
//! permits it, other paths work, a policy can forbid one, and every connect is recorded.
//! The sockets are real servers the test binds in a directory of its own; the clients
//! are curl and python, run the same way directly and in a job.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tollgate::record::{DecisionLabel, UnixRecord};
use tollgate_e2e::{Agent, require_root, stderr, stdout, wait_for};

/// Binds a stream server at each path given (answering HTTP 200 "pong from NAME"), a
/// datagram server at each `dgram:PATH` and `@NAME` abstract stream names; prints ready.
const SERVERS: &str = r#"
import os, socket, sys, threading
def serve(s, name):
    while True:
        c, _ = s.accept()
        try:
            c.recv(4096)
            body = ("pong from " + name).encode()
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass
        c.close()
def drain(s):
    while True:
        s.recv(4096)
for arg in sys.argv[1:]:
    if arg.startswith("dgram:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(arg[6:])
        threading.Thread(target=drain, args=(s,), daemon=True).start()
        continue
    s = socket.socket(socket.AF_UNIX)
    s.bind("\0" + arg[1:] if arg.startswith("@") else arg)
    s.listen(16)
    threading.Thread(target=serve, args=(s, os.path.basename(arg)), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// Connects (or, with `dgram:`, sends) to each path given and prints what came of it:
/// `PATH ok REPLY` or `PATH errno N`.
const CLIENT: &str = r#"
import socket, sys
for arg in sys.argv[1:]:
    dgram = arg.startswith("dgram:")
    path = arg[6:] if dgram else arg
    addr = "\0" + path[1:] if path.startswith("@") else path
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM if dgram else socket.SOCK_STREAM)
    try:
        if dgram:
            s.sendto(b"hello", addr)
            print(arg, "ok sent", flush=True)
        else:
            s.connect(addr)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            print(arg, "ok", s.recv(4096).split(b"\r\n\r\n")[1].decode(), flush=True)
    except OSError as e:
        print(arg, "errno", e.errno, flush=True)
"#;

struct Servers {
    child: Child,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Servers {
    fn start(names: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-unix-")
            .tempdir()
            .expect("tempdir");
        let path = dir.path().to_owned();
        let args: Vec<String> = names
            .iter()
            .map(|n| match (n.strip_prefix("dgram:"), n.starts_with('@')) {
                (Some(name), _) => format!("dgram:{}", path.join(name).display()),
                (None, true) => (*n).to_owned(),
                (None, false) => path.join(n).display().to_string(),
            })
            .collect();
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(SERVERS)
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 unix servers");
        assert_eq!(tollgate_e2e::first_line(&mut child), "ready");
        Self {
            child,
            _dir: dir,
            dir: path,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client's lines, direct (`None`) or in a job with `repository`.
fn connect(agent: Option<&Agent>, repository: &str, targets: &[String]) -> Vec<String> {
    let mut cmd: Vec<&str> = vec!["python3", "-c", CLIENT];
    cmd.extend(targets.iter().map(String::as_str));
    let out = tollgate_e2e::output(&mut Agent::direct_or_in_job(
        agent,
        &[("repository", repository)],
        &cmd,
    ));
    assert!(out.status.success(), "client: {}", stderr(&out));
    stdout(&out).lines().map(str::to_owned).collect()
}

fn unix_rows(agent: &Agent) -> Vec<UnixRecord> {
    agent.unix_connects(&[])
}

/// A path's record with this decision (one row per job): the first, and the connects
/// of all.
fn row<'a>(
    rows: &'a [UnixRecord],
    path: &str,
    decision: DecisionLabel,
) -> Option<(&'a UnixRecord, u64)> {
    let matching: Vec<&UnixRecord> = rows
        .iter()
        .filter(|r| r.path == path && r.decision == decision)
        .collect();
    let connects = matching.iter().map(|r| r.connects).sum();
    matching.first().map(|r| (*r, connects))
}

#[test]
fn an_engine_socket_is_refused_in_a_job_and_other_unix_sockets_work() {
    if !require_root() {
        return;
    }
    let servers = Servers::start(&["docker.sock", "app.sock", "@tollgate-e2e-abstract"]);
    let docker = servers.path("docker.sock");
    let app = servers.path("app.sock");
    let targets = vec![
        docker.clone(),
        app.clone(),
        "@tollgate-e2e-abstract".to_owned(),
    ];
    // Direct, everything answers.
    let direct = connect(None, "acme/api", &targets);
    assert_eq!(
        direct,
        vec![
            format!("{docker} ok pong from docker.sock"),
            format!("{app} ok pong from app.sock"),
            "@tollgate-e2e-abstract ok pong from @tollgate-e2e-abstract".to_owned(),
        ]
    );
    let agent = Agent::start();
    if !agent.covers("unix_sockets") {
        assert!(!agent.status().coverage.unix_sockets);
        return;
    }
    assert!(agent.status().coverage.unix_sockets);
    assert!(!agent.log().contains("feature=unix_sockets"));
    // In a job: the engine's socket is refused with EPERM; the others answer as direct.
    let in_job = connect(Some(&agent), "acme/api", &targets);
    assert_eq!(in_job[0], format!("{docker} errno 1"), "{in_job:?}");
    assert_eq!(in_job[1..], direct[1..], "{in_job:?}");
    // curl, the same.
    let curl = |path: &str| {
        tollgate_e2e::output(&mut agent.run_command(
            &[("repository", "acme/api")],
            &["curl", "-sS", "--unix-socket", path, "http://localhost/"],
        ))
    };
    let refused = curl(&docker);
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    let allowed = curl(&app);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert_eq!(stdout(&allowed), "pong from app.sock");

    // Recorded, with why; counted; logged.
    let rows = wait_for(
        "the unix connects on record",
        Duration::from_secs(10),
        || {
            let rows = unix_rows(&agent);
            (row(&rows, &docker, DecisionLabel::Deny).is_some_and(|(_, n)| n == 2)
                && row(&rows, &app, DecisionLabel::Allow).is_some_and(|(_, n)| n == 2)
                && row(&rows, "@tollgate-e2e-abstract", DecisionLabel::Allow).is_some())
            .then_some(rows)
        },
    );
    let (denied, _) = row(&rows, &docker, DecisionLabel::Deny).expect("denied row");
    assert_eq!(denied.engine.as_deref(), Some("docker"), "{denied:?}");
    assert!(
        denied.reason.contains("docker engine") && denied.reason.contains("unix:connect"),
        "{denied:?}"
    );
    assert!(denied.job_id.is_some(), "{denied:?}");
    assert_eq!(
        agent.metric(r#"tollgate_unix_connects_total{decision="deny",socket="engine"}"#),
        2.0
    );
    assert!(
        agent.metric(r#"tollgate_unix_connects_total{decision="allow",socket="other"}"#) >= 3.0
    );
    assert!(agent.log().contains("unix connect refused"));
}

#[test]
fn a_policy_permits_an_engine_to_one_repository_and_forbids_paths() {
    if !require_root() {
        return;
    }
    let servers = Servers::start(&[
        "docker.sock",
        "app.sock",
        "dgram:secret.sock",
        "dgram:log.sock",
        "@tollgate-e2e-secret",
    ]);
    let docker = servers.path("docker.sock");
    let app = servers.path("app.sock");
    let secret = format!("dgram:{}", servers.path("secret.sock"));
    let log = format!("dgram:{}", servers.path("log.sock"));
    let policy = r#"
@id("everything-else")
permit(principal, action == Action::"connect", resource);

@id("infra-docker")
permit(principal, action == Action::"unix:connect", resource)
when { resource.engine == "docker" && principal.repository == "acme/infra" };

@id("no-secrets")
forbid(principal, action == Action::"unix:connect", resource)
when { resource.path like "*secret*" };
"#;
    let agent = Agent::start_with_policy("", "", |dir: &Path| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("unix.cedar"), policy).unwrap();
    });
    if !agent.covers("unix_sockets") {
        assert!(!agent.status().coverage.unix_sockets);
        return;
    }
    let targets = vec![
        docker.clone(),
        app.clone(),
        secret.clone(),
        log.clone(),
        "@tollgate-e2e-secret".to_owned(),
    ];
    let infra = connect(Some(&agent), "acme/infra", &targets);
    assert_eq!(
        infra,
        vec![
            format!("{docker} ok pong from docker.sock"),
            format!("{app} ok pong from app.sock"),
            format!("{secret} errno 1"),
            format!("{log} ok sent"),
            "@tollgate-e2e-secret errno 1".to_owned(),
        ]
    );
    let api = connect(Some(&agent), "acme/api", &targets);
    assert_eq!(api[0], format!("{docker} errno 1"), "{api:?}");
    assert_eq!(api[1..], infra[1..], "{api:?}");
    let rows = wait_for(
        "the policy's decisions on record",
        Duration::from_secs(10),
        || {
            let rows = unix_rows(&agent);
            (rows.iter().filter(|r| r.path == docker.as_str()).count() == 2
                && row(&rows, "@tollgate-e2e-secret", DecisionLabel::Deny)
                    .is_some_and(|(_, n)| n == 2))
            .then_some(rows)
        },
    );
    let (permitted, _) = row(&rows, &docker, DecisionLabel::Allow).expect("permitted row");
    assert_eq!(permitted.policy_ids[0], "infra-docker", "{permitted:?}");
    let (forbidden, _) =
        row(&rows, &servers.path("secret.sock"), DecisionLabel::Deny).expect("forbidden row");
    assert_eq!(forbidden.policy_ids[0], "no-secrets", "{forbidden:?}");
    assert!(forbidden.send, "{forbidden:?}");
}

#[test]
fn a_job_that_reaches_an_engine_socket_by_another_path_is_killed() {
    if !require_root() {
        return;
    }
    let servers = Servers::start(&["docker.sock"]);
    let docker = servers.path("docker.sock");
    let link = servers.path("innocent.sock");
    std::os::unix::fs::symlink(&docker, &link).expect("symlink");
    let agent = Agent::start();
    if !agent.covers("unix_sockets") {
        assert!(!agent.status().coverage.unix_sockets);
        return;
    }
    // Connects by the symlink, then would use the connection a while later.
    let script = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.connect({link:?})\n\
         print('connected', flush=True)\n\
         time.sleep(5)\n\
         print('survived', flush=True)\n"
    );
    let out = agent.run_job(&[("repository", "acme/api")], &["python3", "-c", &script]);
    let text = stdout(&out);
    // The kill may come before the job's print: only surviving is a failure here (the
    // event below shows the connect reached the socket).
    assert!(
        !text.contains("survived"),
        "not killed: {text}{}",
        stderr(&out)
    );
    assert!(!out.status.success());
    let event = wait_for("the alias on record", Duration::from_secs(10), || {
        agent
            .events(&[])
            .into_iter()
            .find(|e| e.kind == "unix_alias")
    });
    assert_eq!(event.action, "killed", "{event:?}");
    assert!(
        event.detail.contains(&docker) && event.detail.contains(&link),
        "{event:?}"
    );
    assert_eq!(agent.metric("tollgate_unix_aliases_killed_total"), 1.0);
    // The paired control: the same script by a path of its own is not killed.
    let plain = Servers::start(&["plain.sock"]);
    let script = script.replace(&link, &plain.path("plain.sock"));
    let out = agent.run_job(&[("repository", "acme/api")], &["python3", "-c", &script]);
    assert!(stdout(&out).contains("survived"), "{}", stderr(&out));
}

#[test]
fn unix_verdicts_hold_and_are_recorded_while_the_agent_is_down() {
    if !require_root() {
        return;
    }
    let servers = Servers::start(&["docker.sock", "app.sock"]);
    let docker = servers.path("docker.sock");
    let app = servers.path("app.sock");
    let mut agent = Agent::start();
    if !agent.covers("unix_sockets") {
        assert!(!agent.status().coverage.unix_sockets);
        return;
    }
    let go = servers.path("go");
    // Waits for the go file, then runs the client on both paths.
    let script = format!(
        "import os, subprocess, sys, time\n\
         print('waiting', flush=True)\n\
         while not os.path.exists({go:?}):\n    time.sleep(0.05)\n\
         out = subprocess.run([sys.executable, '-c', sys.argv[1], {docker:?}, {app:?}], \
         capture_output=True, text=True).stdout\n\
         print(out, end='', flush=True)\n"
    );
    let mut job = agent
        .run_command(
            &[("repository", "acme/api")],
            &["python3", "-c", &script, CLIENT],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("job");
    assert_eq!(tollgate_e2e::first_line(&mut job), "waiting");
    agent.kill9();
    std::fs::write(&go, "").expect("go");
    let out = job.wait_with_output().expect("job output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The kernel kept deciding while the agent was down.
    assert!(text.contains(&format!("{docker} errno 1")), "{text}");
    assert!(
        text.contains(&format!("{app} ok pong from app.sock")),
        "{text}"
    );
    agent.start_again();
    assert!(agent.status().coverage.unix_sockets);
    // What the kernel reported meanwhile is on record after the restart.
    wait_for(
        "the connects made while down",
        Duration::from_secs(15),
        || {
            let rows = unix_rows(&agent);
            (row(&rows, &docker, DecisionLabel::Deny).is_some()
                && row(&rows, &app, DecisionLabel::Allow).is_some())
            .then_some(())
        },
    );
}
