//! Connect semantics on the proxy path: the proxy accepts a job's connection before it
//! knows whether the destination listens, so a connect to a closed port would succeed
//! and then be reset, where directly it is refused. The refusal is remembered per job
//! and destination, and the job's next connects there are refused at connect() with
//! ECONNREFUSED, as directly, until the destination listens. Only the first connect
//! differs.
use std::{thread, time::Duration};

use tollgate_e2e::{Agent, ephemeral_port, require_root, servers::Server, stderr, stdout};

/// Connects `n` times, 20 ms apart, and prints what each got. A connect that succeeds
/// is followed to its end (the script half-closes and reads until EOF or a reset), as a
/// client learns the outcome of its first attempt before it retries; on a slow kernel
/// (a TCG guest in `cargo xtask vm-test`) 20 ms alone can be less than the proxy takes
/// to learn the refusal.
const ATTEMPTS: &str = r#"
import errno, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        print("connected", flush=True)
        s.settimeout(5)
        try:
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
        except OSError:
            pass
    except OSError as e:
        print(errno.errorcode.get(e.errno, e.errno), flush=True)
    s.close()
    time.sleep(0.02)
"#;

/// One first attempt (which may differ), then a wait-for-port loop (connect only, every
/// 50 ms); prints the loop's time and refusals, and what the server answered.
const WAIT_LOOP: &str = r#"
import socket, sys, time
port = int(sys.argv[1])
s = socket.socket()
s.settimeout(30)
try:
    # The first try is accepted by the proxy (only it differs from a direct connect):
    # wait for its answer, the reset, as a client that reads would. A loop that closes
    # at once may make a second try within the proxy's own connect time, which a slow
    # (TCG) guest stretches past any fixed sleep.
    s.connect(("127.0.0.1", port))
    s.recv(1)
except OSError:
    pass
s.close()
start, refused = time.time(), 0
print("waiting", flush=True)
while True:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        break
    except (ConnectionRefusedError, PermissionError):
        # PermissionError: EPERM, where the kernel cannot set a connect's errno (< 5.19).
        refused += 1
        s.close()
        time.sleep(0.05)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
print("%.2f %d %s" % (time.time() - start, refused, s.recv(100).split(b"\r\n")[0].decode()), flush=True)
"#;

fn attempts(agent: Option<&Agent>, port: u16, n: usize) -> Vec<String> {
    let port = port.to_string();
    let n = n.to_string();
    let out = tollgate_e2e::output(&mut Agent::direct_or_in_job(
        agent,
        &[("repository", "acme/api")],
        &["python3", "-c", ATTEMPTS, &port, &n],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().map(str::to_owned).collect()
}

#[test]
fn a_closed_port_is_refused_in_a_job_as_directly_after_the_first_attempt() {
    if !require_root() {
        return;
    }
    let port = ephemeral_port();
    let direct = attempts(None, port, 6);
    assert_eq!(direct, vec!["ECONNREFUSED"; 6]);
    // The proxy path (the kernel path is exact from the first connect).
    let agent = Agent::start_with_proxy("kernel_verdicts = false");
    let in_job = attempts(Some(&agent), port, 6);
    // The first may differ (the proxy accepted it); every later one is as direct, or,
    // where the agent reports that the kernel cannot set a connect's errno (before
    // 5.19), EPERM.
    let (expected, message) = match agent.gap("connect_errno") {
        None => (direct[1..].to_vec(), "Connection refused"),
        Some(reason) => {
            eprintln!("EPERM instead of ECONNREFUSED: the agent reports that {reason}");
            (vec!["EPERM".to_owned(); 5], "Operation not permitted")
        }
    };
    assert_eq!(in_job[1..], expected, "{in_job:?}");
    assert!(
        agent.metric("tollgate_bpf_events_total{event=\"refused_remembered\"}") >= 5.0,
        "{}",
        agent.metrics()
    );
    // The connects refused at connect() are on the job's record once the memory ends.
    let event = tollgate_e2e::wait_for(
        "the refused connects on record",
        Duration::from_secs(10),
        || {
            agent
                .events(&[])
                .into_iter()
                .find(|e| e.kind == "connect_refused")
        },
    );
    assert!(
        event.detail.starts_with("5 connects to 127.0.0.1:") && event.detail.contains("refused"),
        "{event:?}"
    );
    assert!(event.job_id.is_some(), "{event:?}");
    // bash's /dev/tcp, as in a wait-for-port loop: after a first try, the same message
    // as directly (each job learns for itself: memories are per job).
    let script =
        format!("</dev/tcp/127.0.0.1/{port} 2>/dev/null; sleep 0.1; </dev/tcp/127.0.0.1/{port}");
    let out = agent.run_job(&[("repository", "acme/api")], &["bash", "-c", &script]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(message), "{}", stderr(&out));
    // The paired control: a port that listens is not refused, in the same kind of job.
    let http = Server::http("127.0.0.1:0");
    let open = attempts(Some(&agent), http.port(), 3);
    assert_eq!(open, vec!["connected"; 3]);
}

/// The wait loop against a server that starts listening 2 s after the job.
/// `answered`: whether the loop's request got the answer it should (its first line's
/// words after the loop's figures).
fn wait_loop_returns_once_the_server_listens(
    agent: &Agent,
    port: u16,
    answered: fn(&[&str]) -> bool,
) {
    let job = agent
        .run_command(
            &[("repository", "acme/api")],
            &["python3", "-c", WAIT_LOOP, &port.to_string()],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("job");
    // 2 s from the loop's start (not the job's: a job starts slowly in a TCG guest).
    let mut job = job;
    assert_eq!(tollgate_e2e::first_line(&mut job), "waiting");
    thread::sleep(Duration::from_secs(2));
    let http = Server::http(&format!("127.0.0.1:{port}"));
    let out = job.wait_with_output().expect("job output");
    let text = stdout(&out);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert!(fields.len() >= 4, "{text}{}", stderr(&out));
    let waited: f64 = fields[0].parse().expect("seconds");
    let refused: u32 = fields[1].parse().expect("refusals");
    assert!(
        waited >= 1.5,
        "the loop returned before the server listened: {text}"
    );
    assert!(refused >= 10, "{text}");
    assert!(answered(&fields[2..]), "{text}");
    drop(http);
}

#[test]
fn a_wait_for_port_loop_returns_only_once_the_server_listens() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    wait_loop_returns_once_the_server_listens(&agent, ephemeral_port(), |words| {
        words[..2] == ["HTTP/1.1", "200"]
    });
    // A PostgreSQL target (followed at L7 once connected) waits the same way; once
    // connected, the loop's HTTP request is answered by the PostgreSQL session with a
    // protocol error (ErrorResponse, 'E'), as a declared target's bytes are never
    // relayed blind.
    let pg_port = ephemeral_port();
    let agent = Agent::start_with(&format!(
        "[[targets]]\nname = \"db\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{pg_port}]\nprotocol = \"postgres\"\n"
    ));
    wait_loop_returns_once_the_server_listens(&agent, pg_port, |words| {
        words[0].starts_with('E') && words.iter().any(|w| w.contains("08P01"))
    });
}

#[test]
fn refusal_memory_can_be_turned_off() {
    if !require_root() {
        return;
    }
    let port = ephemeral_port();
    let agent = Agent::start_with_proxy("refusal_memory = \"0s\"\nkernel_verdicts = false");
    let in_job = attempts(Some(&agent), port, 3);
    // Every attempt is accepted by the proxy, then reset: no memory.
    assert_eq!(in_job, vec!["connected"; 3]);
}
