//! The kernel path: once the proxy found a connect's decision final at connect time, the
//! kernel lets the next connect with the same key (job cgroup, uid, gid, comm,
//! destination) go straight to its destination, and records it from its own events.
//! Without a policy directory, every job's connects go straight from the first.
mod ring;

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use tollgate::record::DecisionLabel;
use tollgate::{control::Assurance, record::ConnectionRecord};
use tollgate_e2e::{Agent, ephemeral_port, require_root, servers::Server, stderr, stdout};

/// `n` HTTP GETs, one connection each, from one process; prints each status line and
/// the bytes received.
const GETS: &str = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    print(data.split(b"\r\n")[0].decode(), len(data), flush=True)
"#;

const PERMIT_ALL: &str = r#"permit(principal, action == Action::"connect", resource);"#;

fn gets(agent: Option<&Agent>, port: u16, n: usize) -> String {
    let (port, n) = (port.to_string(), n.to_string());
    let out = tollgate_e2e::output(&mut Agent::direct_or_in_job(
        agent,
        &[("repository", "acme/api")],
        &["python3", "-c", GETS, &port, &n],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn with_policy(policy: &str) -> Agent {
    let policy = policy.to_owned();
    Agent::start_with_policy("", "", move |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("base.cedar"), policy).expect("policy");
    })
}

/// How many of `sessions` took the proxy path and how many the kernel path.
fn paths<'a>(sessions: impl IntoIterator<Item = &'a ConnectionRecord>) -> (usize, usize) {
    sessions
        .into_iter()
        .fold((0, 0), |(proxy, kernel), s| match s.path.as_deref() {
            Some("proxy") => (proxy + 1, kernel),
            Some("kernel") => (proxy, kernel + 1),
            _ => (proxy, kernel),
        })
}

#[test]
fn after_the_first_connection_the_kernel_takes_the_key_and_records_it() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let direct = gets(None, http.port(), 4);
    let agent = with_policy(PERMIT_ALL);
    if !agent.covers("kernel_path") {
        return;
    }
    let in_job = gets(Some(&agent), http.port(), 4);
    assert_eq!(in_job, direct, "the same output as directly");
    let sessions = agent.wait_sessions(None, 4);
    assert_eq!(paths(&sessions), (1, 3), "{sessions:#?}");
    // The proxy accepted only the first.
    assert_eq!(agent.metric("tollgate_proxy_intercepted_total"), 1.0);
    let proxied = sessions
        .iter()
        .find(|s| s.path.as_deref() == Some("proxy"))
        .expect("the proxied one");
    for s in sessions
        .iter()
        .filter(|s| s.path.as_deref() == Some("kernel"))
    {
        assert_eq!(s.decision, DecisionLabel::Allow, "{s:?}");
        assert_eq!(s.job_id, proxied.job_id, "{s:?}");
        assert_eq!(s.pid, proxied.pid, "{s:?}");
        assert_eq!(s.uid, proxied.uid, "{s:?}");
        assert_eq!(s.comm.as_deref(), Some("python3"), "{s:?}");
        assert_eq!(s.destination, Some(format!("127.0.0.1:{}", http.port())));
        assert_eq!(s.bytes_up, proxied.bytes_up, "{s:?}");
        assert_eq!(s.bytes_down, proxied.bytes_down, "{s:?}");
        assert!(s.bytes_down > 0, "{s:?}");
        assert!(s.source.starts_with("127.0.0.1:"), "{s:?}");
        assert!(s.ended_at.is_some(), "{s:?}");
        assert!(s.error.is_none(), "{s:?}");
    }
    assert_eq!(
        agent.metric("tollgate_kernel_verdicts_installed_total"),
        1.0
    );
    assert_eq!(
        agent.metric("tollgate_kernel_verdicts_connects_total{outcome=\"hit\"}"),
        3.0
    );
    // The job has ended: its verdict is gone from the kernel.
    let status = agent.status();
    assert_eq!(status.kernel_path.exact_verdicts, 0, "{status:?}");
    assert_eq!(status.kernel_path.live_connections, 0, "{status:?}");
    crate::assert_metrics_match_records(&agent);
}

#[test]
fn a_policy_that_reads_the_exe_keeps_every_connection_on_the_proxy_path() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let agent = with_policy(
        r#"permit(principal, action == Action::"connect", resource)
           when { principal.process.exe like "*python*" };"#,
    );
    let out = gets(Some(&agent), http.port(), 3);
    assert_eq!(out.lines().count(), 3, "{out}");
    let sessions = agent.wait_sessions(None, 3);
    assert_eq!(paths(&sessions), (3, 0), "{sessions:#?}");
    assert_eq!(agent.metric("tollgate_proxy_intercepted_total"), 3.0);
    let status = agent.status();
    assert!(
        status
            .kernel_path
            .blind
            .as_deref()
            .is_some_and(|why| why.contains("principal.process.exe")),
        "{status:?}"
    );
    assert_eq!(status.kernel_path.exact_verdicts, 0, "{status:?}");
}

/// Connects once (and closes), then holds a second connection, printing "open", and
/// prints what its blocked recv() ends with; then tries a third connect.
const HOLD: &str = r#"
import socket, sys, time
port = int(sys.argv[1])
socket.create_connection(("127.0.0.1", port)).close()
time.sleep(0.2)
s = socket.create_connection(("127.0.0.1", port))
print("open", flush=True)
start = time.time()
# Bounded: a connection the agent fails to destroy makes the test fail, not hang.
s.settimeout(30)
try:
    got = s.recv(100)
    print("recv", len(got), flush=True)
except OSError as e:
    print("error", type(e).__name__, "%.2f" % (time.time() - start), flush=True)
try:
    t = socket.create_connection(("127.0.0.1", port))
    t.settimeout(3)
    print("next", len(t.recv(100)), flush=True)
except OSError as e:
    print("next", type(e).__name__, flush=True)
"#;

#[test]
fn a_reload_that_forbids_the_destination_destroys_a_live_kernel_path_connection() {
    if !require_root() {
        return;
    }
    let sink = Server::sink("127.0.0.1:0");
    let agent = with_policy(PERMIT_ALL);
    if !agent.covers("kernel_path") {
        return;
    }
    let port = sink.port().to_string();
    let mut child = agent
        .run_command(
            &[("repository", "acme/api")],
            &["python3", "-u", "-c", HOLD, &port],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("tollgate run");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("open"));
    let open = agent.wait_recorded(None, 2);
    assert_eq!(paths(&open), (1, 1), "{open:#?}");
    let forbid = format!(
        "{PERMIT_ALL}\nforbid(principal, action == Action::\"connect\", resource) when {{ resource.port == {port} }};"
    );
    let reloaded = Instant::now();
    std::fs::write(agent.policy_dir().join("base.cedar"), forbid).expect("policy");
    let ended = lines.next().and_then(Result::ok).unwrap_or_default();
    let elapsed = reloaded.elapsed();
    assert!(ended.starts_with("error ConnectionAbortedError"), "{ended}");
    assert!(elapsed < Duration::from_secs(2), "killed after {elapsed:?}");
    // The next connect goes to the proxy, which refuses it.
    let next = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        next == "next 0" || next == "next ConnectionResetError",
        "{next}"
    );
    assert!(child.wait().expect("job").success());
    let sessions = agent.wait_sessions(None, 3);
    let revoked: Vec<&ConnectionRecord> = sessions
        .iter()
        .filter(|s| s.decision == DecisionLabel::Revoked)
        .collect();
    assert_eq!(revoked.len(), 1, "{sessions:#?}");
    assert_eq!(revoked[0].path.as_deref(), Some("kernel"));
    assert!(
        sessions
            .iter()
            .any(|s| s.decision == DecisionLabel::Deny && s.path.as_deref() == Some("proxy")),
        "{sessions:#?}"
    );
    assert_eq!(agent.status().kernel_path.exact_verdicts, 0);
}

#[test]
fn without_a_policy_directory_a_jobs_first_connect_is_exact() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    if !agent.covers("kernel_path") {
        return;
    }
    let closed = ephemeral_port();
    let script = format!("</dev/tcp/127.0.0.1/{closed}");
    let direct = tollgate_e2e::output(std::process::Command::new("bash").args(["-c", &script]));
    let in_job = agent.run_job(&[("repository", "acme/api")], &["bash", "-c", &script]);
    assert_eq!(
        in_job.status.code(),
        direct.status.code(),
        "the job's connect took the proxy path; the kernel path's counters:\n{}",
        agent
            .metrics()
            .lines()
            .filter(|l| l.starts_with("tollgate_kernel_verdicts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(stderr(&in_job), stderr(&direct), "the first attempt too");
    assert!(stderr(&in_job).contains("Connection refused"));
    // A wait-for-port loop returns once the server listens, not before.
    let wait = format!(
        "echo waiting; start=$(date +%s%N); until </dev/tcp/127.0.0.1/{closed}; do sleep 0.05; \
         done 2>/dev/null; echo $(( ($(date +%s%N) - start) / 1000000 ))"
    );
    let mut child = agent
        .run_command(&[("repository", "acme/api")], &["bash", "-c", &wait])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tollgate run");
    // 2 s from the loop's start (a job starts slowly in a TCG guest).
    assert_eq!(tollgate_e2e::first_line(&mut child), "waiting");
    thread::sleep(Duration::from_secs(2));
    let http = Server::http(&format!("127.0.0.1:{closed}"));
    let out = child.wait_with_output().expect("wait loop");
    let waited: u64 = stdout(&out).trim().parse().unwrap_or(0);
    assert!(
        waited >= 1_900,
        "returned after {waited} ms, before the server listened"
    );
    // Everything went straight through: the proxy accepted nothing, yet all is recorded.
    assert_eq!(agent.metric("tollgate_proxy_intercepted_total"), 0.0);
    let hits = agent.metric("tollgate_kernel_verdicts_connects_total{outcome=\"hit\"}");
    assert!(hits >= 3.0, "{hits}");
    let sessions = agent.wait_sessions(None, hits as usize);
    assert!(
        sessions.iter().all(|s| s.path.as_deref() == Some("kernel")),
        "{sessions:#?}"
    );
    assert!(
        sessions.iter().any(|s| s
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no connection was established"))),
        "{sessions:#?}"
    );
    assert_eq!(http.accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    let status = agent.status();
    assert!(status.kernel_path.everything, "{status:?}");
    crate::assert_metrics_match_records(&agent);
}

#[test]
fn a_target_that_opts_out_stays_on_the_proxy_path() {
    if !require_root() {
        return;
    }
    let kept = Server::http("127.0.0.1:0");
    let other = Server::http("127.0.0.1:0");
    let targets = format!(
        "[[targets]]\nname = \"kept\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{}]\nkernel_verdicts = false\n",
        kept.port()
    );
    let agent = Agent::start_with(&targets);
    assert_eq!(gets(Some(&agent), kept.port(), 2).lines().count(), 2);
    assert_eq!(gets(Some(&agent), other.port(), 2).lines().count(), 2);
    let sessions = agent.wait_sessions(None, 4);
    let on = |port: u16| -> Vec<&ConnectionRecord> {
        sessions
            .iter()
            .filter(|s| s.destination == Some(format!("127.0.0.1:{port}")))
            .collect()
    };
    assert!(
        on(kept.port())
            .iter()
            .all(|s| s.path.as_deref() == Some("proxy")),
        "{sessions:#?}"
    );
    assert!(
        on(other.port())
            .iter()
            .all(|s| s.path.as_deref() == Some("kernel")),
        "{sessions:#?}"
    );
    let status = agent.status();
    assert!(
        status
            .kernel_path
            .proxied
            .iter()
            .any(|n| n.contains("kept")),
        "{status:?}"
    );
}

#[test]
fn two_jobs_of_5000_short_connections_are_all_attributed_and_the_maps_empty_after() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let agent = with_policy(PERMIT_ALL);
    if !agent.covers("kernel_path") {
        return;
    }
    let port = http.port().to_string();
    let jobs: Vec<_> = ["acme/one", "acme/two"]
        .iter()
        .map(|repo| {
            agent
                .run_command(
                    &[("repository", repo)],
                    &["python3", "-c", GETS, &port, "5000"],
                )
                .stdout(Stdio::piped())
                .spawn()
                .expect("tollgate run")
        })
        .collect();
    for job in jobs {
        let out = job.wait_with_output().expect("job");
        assert!(out.status.success());
        let answered = stdout(&out)
            .lines()
            .filter(|l| l.starts_with("HTTP/1.1 200"))
            .count();
        assert_eq!(answered, 5_000);
    }
    let sessions = agent.wait_sessions(None, 10_000);
    assert_eq!(sessions.len(), 10_000);
    // A verdict's connect falls back to the proxy only when the event ring is full or
    // the heartbeat late (a slow guest in `cargo xtask vm-test`): counted, and recorded.
    let fallbacks = (agent.metric("tollgate_kernel_verdicts_connects_total{outcome=\"fallback\"}")
        + agent.metric("tollgate_kernel_verdicts_connects_total{outcome=\"stale\"}"))
        as usize;
    let mut proxied = 0;
    // Each job's connections carry that job's one process.
    for repo in ["acme/one", "acme/two"] {
        let mine: Vec<&ConnectionRecord> = sessions
            .iter()
            .filter(|s| s.job_labels["repository"] == repo)
            .collect();
        assert_eq!(mine.len(), 5_000, "{repo}");
        let pid = &mine[0].pid;
        assert!(mine.iter().all(|s| &s.pid == pid), "{repo}: misattributed");
        let (proxy, kernel) = paths(mine.iter().copied());
        // The first took the proxy path; its verdict took the rest (but fallbacks).
        assert!(
            proxy >= 1 && proxy + kernel == 5_000,
            "{repo}\n{}",
            agent.metrics()
        );
        proxied += proxy;
        assert!(
            mine.iter().all(|s| s.bytes_up == mine[0].bytes_up
                && s.bytes_down == mine[0].bytes_down
                && s.error.is_none()),
            "{repo}: bytes"
        );
    }
    assert_eq!(proxied, 2 + fallbacks, "{}", agent.metrics());
    assert_eq!(
        agent.metric("tollgate_kernel_verdicts_connects_total{outcome=\"events_lost\"}"),
        0.0
    );
    crate::assert_metrics_match_records(&agent);
    // The jobs have ended: their verdicts are gone, and so is every connection entry.
    let status = agent.status();
    assert_eq!(status.kernel_path.exact_verdicts, 0, "{status:?}");
    assert_eq!(status.kernel_path.live_connections, 0, "{status:?}");
    for map in ["VERDICTS", "KERNEL_CONNS", "JOB_VERDICTS"] {
        let dump = tollgate_e2e::output(
            std::process::Command::new("bpftool")
                .args(["--json", "map", "dump", "pinned"])
                .arg(agent.pin_dir.join(map)),
        );
        assert_eq!(stdout(&dump).trim(), "[]", "{map}: {}", stderr(&dump));
    }
}

#[test]
fn an_attest_that_changes_the_principal_drops_the_jobs_verdicts() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let issuer = tollgate_e2e::oidc::Issuer::start();
    let policy = PERMIT_ALL.to_owned();
    let agent = Agent::start_with_policy(
        "",
        &crate::identity::identity_config(&issuer, "[0]"),
        move |dir| {
            std::fs::create_dir_all(dir).expect("policy dir");
            std::fs::write(dir.join("base.cedar"), policy).expect("policy");
        },
    );
    if !agent.covers("kernel_path") {
        return;
    }
    let file = crate::identity::identity_file(agent.dir.path(), "7001");
    let token = issuer.sign(&issuer.github_claims("acme/api", "7001", "1"));
    // Two connections, an attest, two more: the attest drops the verdict, so the first
    // connection after it is decided by the proxy again.
    let script = format!(
        "python3 -c \"$GETS\" {port} 2 && '{bin}' attest && python3 -c \"$GETS\" {port} 2",
        port = http.port(),
        bin = tollgate_e2e::agent::tollgate_bin().display()
    );
    let out = tollgate_e2e::output(
        agent
            .tollgate()
            .arg("run")
            .arg("--identity-file")
            .arg(&file)
            .args(["--", "sh", "-c", &script])
            .env("GETS", GETS)
            .env("TOLLGATE_ID_TOKEN", &token)
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let sessions = agent.wait_sessions(None, 4);
    // One python before the attest and one after: each had its first connection proxied.
    for assurance in [Assurance::HostAsserted, Assurance::OidcVerified] {
        let mine: Vec<&ConnectionRecord> = sessions
            .iter()
            .filter(|s| s.assurance == Some(assurance))
            .collect();
        assert_eq!(
            paths(mine.iter().copied()),
            (1, 1),
            "{assurance:?}: {sessions:#?}"
        );
        assert_eq!(mine[0].pid, mine[1].pid, "{sessions:#?}");
    }
    assert!(agent.metric("tollgate_kernel_verdicts_dropped_total{reason=\"job\"}") >= 2.0);
}
