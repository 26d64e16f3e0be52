//! Sockets from outside the job: an IPv4 or IPv6 socket created outside every job and
//! brought in (over a unix socket with SCM_RIGHTS, or taken with pidfd_getfd) would
//! carry the job's traffic past the proxy, because the kernel runs a socket's hooks for
//! the cgroup it was created in. The scan finds the process that holds one, kills it and
//! records it; the same process's own sockets, made in the job, work.
use std::{process::Command, time::Duration};

use tollgate::{control::OutsideSockets, record::EventRecord};
use tollgate_e2e::{Agent, require_root, servers::Server, stderr, stdout, wait_for};

/// Outside the job: connects a TCP and a UDP socket to the server, then hands both to
/// whoever connects to the unix socket at argv[1], and prints its pid.
const GIVER: &str = r#"
import os, socket, sys, time
path, port = sys.argv[1], int(sys.argv[2])
tcp = socket.create_connection(("127.0.0.1", port))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(("127.0.0.1", port))
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
print(os.getpid(), tcp.fileno(), flush=True)
conn, _ = srv.accept()
socket.send_fds(conn, [b"x"], [tcp.fileno(), udp.fileno()])
time.sleep(30)
"#;

/// In the job: its own connection to the server works; then it takes the giver's
/// sockets (argv[3] picks how) and, a while later, would use one.
const TAKER: &str = r#"
import ctypes, os, socket, sys, time
path, port, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
own = socket.create_connection(("127.0.0.1", port))
own.sendall(b"GET / HTTP/1.0\r\n\r\n")
print("own:", own.recv(100).split(b"\r\n")[0].decode(), flush=True)
if how == "scm_rights":
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    _, fds, _, _ = socket.recv_fds(c, 10, 2)
else:
    pid, fd = (int(x) for x in how.split(":"))
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    fds = [libc.syscall(438, pidfd, fd, 0)]
    assert fds[0] >= 0, ctypes.get_errno()
print("taken", len(fds), flush=True)
time.sleep(3)
s = socket.socket(fileno=fds[0])
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print("foreign:", s.recv(100).split(b"\r\n")[0].decode(), flush=True)
"#;

fn events(agent: &Agent) -> Vec<EventRecord> {
    agent.events(&[])
}

#[test]
fn a_socket_from_outside_the_job_gets_its_holder_killed() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let port = http.port().to_string();
    let agent = Agent::start();
    assert_eq!(
        agent.status().coverage.outside_sockets,
        OutsideSockets::DetectedAndKilled
    );
    // Where unix sockets are decided, the giver's connect is allowed; elsewhere it is
    // not seen at all. Either way, the agent says which.
    assert_eq!(
        agent.status().coverage.unix_sockets,
        agent.gap("unix_sockets").is_none()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for (n, how) in ["scm_rights", "pidfd_getfd"].into_iter().enumerate() {
        let path = dir.path().join(format!("give-{n}.sock"));
        let path = path.to_string_lossy().into_owned();
        let mut giver = Command::new("python3")
            .args(["-c", GIVER, &path, &port])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("giver");
        let line = tollgate_e2e::first_line(&mut giver);
        let (pid, fd) = line.split_once(' ').expect("pid and fd");
        let how = if how == "scm_rights" {
            how.to_owned()
        } else {
            format!("{pid}:{fd}")
        };
        let out = agent.run_job(
            &[("repository", "acme/api")],
            &["python3", "-c", TAKER, &path, &port, &how],
        );
        let _ = giver.kill();
        let _ = giver.wait();
        let text = stdout(&out);
        // The paired control: its own connection went through the proxy.
        assert!(
            text.contains("own: HTTP/1.1 200 OK"),
            "{how}: {text}{}",
            stderr(&out)
        );
        assert!(text.contains("taken"), "{how}: {text}{}", stderr(&out));
        assert!(
            !text.contains("foreign:"),
            "{how}: the foreign socket was used: {text}"
        );
        assert!(!out.status.success(), "{how}: killed");
    }
    let found = wait_for("both findings on record", Duration::from_secs(10), || {
        let found: Vec<EventRecord> = events(&agent)
            .into_iter()
            .filter(|e| e.kind == "socket_from_outside")
            .collect();
        (found.len() >= 2).then_some(found)
    });
    for event in &found {
        assert_eq!(event.action, "killed", "{event:?}");
        assert_eq!(event.comm, "python3", "{event:?}");
        assert!(event.job_id.is_some(), "{event:?}");
        assert!(event.detail.starts_with("inet/"), "{event:?}");
    }
    // Only the two takers were found: the job's own sockets are its own.
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(
        agent.metric("tollgate_job_events_total{action=\"killed\",kind=\"socket_from_outside\"}"),
        2.0
    );
}

#[test]
fn sockets_a_process_brings_into_its_job_stay_its_own() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let agent = Agent::start();
    // A connection made before the job, inherited by `tollgate run` and its command (as
    // a runner's own connections are when its worker is enrolled).
    let stream = std::net::TcpStream::connect(http.addr).expect("connect");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let script = format!(
        "import socket, time\nimport os\ntime.sleep(1)\ns = socket.socket(fileno={fd})\n\
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nprint('inherited:', \
         s.recv(100).split(b'\\r\\n')[0].decode())\n"
    );
    let mut cmd = agent.run_command(&[("repository", "acme/api")], &["python3", "-c", &script]);
    // SAFETY: fcntl on an open descriptor, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let out = tollgate_e2e::output(&mut cmd);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert_eq!(text.trim(), "inherited: HTTP/1.1 200 OK");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        events(&agent)
            .iter()
            .all(|e| e.kind != "socket_from_outside"),
        "{:#?}",
        events(&agent)
    );
    drop(stream);
}
