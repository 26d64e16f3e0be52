//! Fail closed: a killed agent leaves job connects refused, never direct; a restarted
//! agent adopts its pins and the running jobs.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{ChildStdin, ChildStdout, Stdio},
    sync::atomic::Ordering,
    time::Duration,
};

use tollgate::record::DecisionLabel;
use tollgate_e2e::{Agent, require_root, servers::Server, wait_for};

/// A job running a small Python client that connects on request.
const CONTROLLER: &str = "\
import os, socket, sys
print(os.environ['TOLLGATE_JOB_ID'], flush=True)
held = []
for line in sys.stdin:
    verb, host, port = line.split()
    if verb == 'hold':
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b'x')
        held.append(s)
        print('held', flush=True)
        continue
    try:
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
        data = s.recv(4096)
        s.close()
        print('ok', len(data), flush=True)
    except OSError as e:
        print('err', e.errno, flush=True)
";

struct Controller {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Controller {
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading the job's output");
        line.trim().to_owned()
    }

    fn connect(&mut self, port: u16) -> String {
        writeln!(self.stdin, "connect 127.0.0.1 {port}").expect("writing to the job");
        self.line()
    }

    fn hold(&mut self, port: u16) -> String {
        writeln!(self.stdin, "hold 127.0.0.1 {port}").expect("writing to the job");
        self.line()
    }
}

#[test]
fn sigkill_fails_closed_and_restart_resumes_interception() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let sink = Server::sink("127.0.0.1:0");
    let mut agent = Agent::start();
    let mut child = agent
        .run_command(
            &[("repo", "acme/long")],
            &["python3", "-u", "-c", CONTROLLER],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("tollgate run");
    let mut job = Controller {
        stdin: child.stdin.take().expect("stdin"),
        stdout: BufReader::new(child.stdout.take().expect("stdout")),
    };
    let job_id = job.line();
    assert!(
        job.connect(http.port()).starts_with("ok "),
        "before the kill"
    );
    assert_eq!(http.accepted.load(Ordering::Relaxed), 1);
    agent.wait_sessions(Some(&job_id), 1);
    // A connection that is open when the agent dies is on record, and closed as cut
    // when the agent is back.
    assert_eq!(job.hold(sink.port()), "held");
    let open = agent.wait_recorded(Some(&job_id), 2);
    assert!(
        open[0].ended_at.is_none(),
        "the held connection is on record as open"
    );

    // Verdicts are loaded: without a policy directory the job's connects go straight.
    assert_eq!(agent.status().kernel_path.job_verdicts, 1);
    agent.kill9();
    assert!(
        agent.pin_dir.join("link_connect4").exists(),
        "pins survive SIGKILL"
    );
    let refused = job.connect(http.port());
    assert_eq!(
        refused,
        format!("err {}", libc::ECONNREFUSED),
        "connect while the agent is down"
    );
    assert_eq!(
        http.accepted.load(Ordering::Relaxed),
        1,
        "a connection went direct while the agent was down"
    );

    agent.start_again();
    // The kernel had the job's verdict and did not use it: the agent was gone.
    wait_for(
        "the ignored verdict counted",
        Duration::from_secs(10),
        || {
            (agent.metric("tollgate_kernel_verdicts_connects_total{outcome=\"stale\"}") >= 1.0)
                .then_some(())
        },
    );
    let jobs = agent.jobs();
    assert_eq!(jobs.len(), 1, "the job survives the restart: {jobs:?}");
    assert_eq!(jobs[0].id, job_id.as_str());
    assert_eq!(jobs[0].labels["repo"], "acme/long");
    assert_eq!(agent.status().attachment, "adopted");
    assert!(
        job.connect(http.port()).starts_with("ok "),
        "after the restart"
    );
    assert_eq!(http.accepted.load(Ordering::Relaxed), 2);

    drop(job);
    let status = child.wait().expect("tollgate run");
    assert!(status.success(), "tollgate run: {status}");
    let sessions = agent.wait_sessions(Some(&job_id), 3);
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert!(sessions.iter().all(|s| s.job_labels["repo"] == "acme/long"));
    assert!(
        sessions.iter().all(|s| s.ended_at.is_some()),
        "all closed: {sessions:?}"
    );
    let cut: Vec<_> = sessions
        .iter()
        .filter(|s| {
            s.error
                .as_deref()
                .is_some_and(|e| e.contains("agent stopped"))
        })
        .collect();
    assert_eq!(
        cut.len(),
        1,
        "the held connection is recorded as cut: {sessions:?}"
    );
    assert_eq!(
        cut[0].destination.as_deref(),
        Some(format!("127.0.0.1:{}", sink.port()).as_str())
    );
    assert!(agent.jobs().is_empty());
    assert!(agent.job_cgroups().is_empty());
}

#[test]
fn cleanup_detaches_everything_and_refuses_while_the_agent_runs() {
    if !require_root() {
        return;
    }
    let mut agent = Agent::start();
    let running = tollgate_e2e::output(
        std::process::Command::new(tollgate_e2e::agent::tollgate_bin())
            .args(["agent", "--cleanup", "--config"])
            .arg(&agent.config_path),
    );
    assert!(
        !running.status.success(),
        "cleanup must refuse while the agent runs"
    );
    assert!(
        tollgate_e2e::stderr(&running).contains("stop it"),
        "{}",
        tollgate_e2e::stderr(&running)
    );
    let second = tollgate_e2e::output(
        std::process::Command::new(tollgate_e2e::agent::tollgate_bin())
            .args(["agent", "--config"])
            .arg(&agent.config_path),
    );
    assert!(
        !second.status.success(),
        "a second agent must refuse to start"
    );
    assert!(
        tollgate_e2e::stderr(&second).contains("already running"),
        "{}",
        tollgate_e2e::stderr(&second)
    );
    // A job left running when the agent stops is killed by the cleanup.
    let (mut child, sleep_pid) = agent.start_sleeping_job(&[("repo", "acme/left")]);
    assert_eq!(agent.jobs().len(), 1);
    let parent = agent.cgroup_parent.clone();
    let attached = attached_to(&parent);
    for (hook, link_type) in [
        ("connect4", "inet4_connect"),
        ("connect6", "inet6_connect"),
        ("getpeername4", "inet4_getpeername"),
        ("getpeername6", "inet6_getpeername"),
        ("sock_release", "sock_release"),
        ("sock_ops", "sock_ops"),
    ] {
        assert!(
            attached.contains(hook) || attached.contains(link_type),
            "{hook} not attached to {}: {attached}",
            parent.display()
        );
    }
    agent.cleanup();
    tollgate_e2e::wait_for(
        "the job's command to be killed by the cleanup",
        std::time::Duration::from_secs(10),
        || (!std::path::Path::new(&format!("/proc/{sleep_pid}")).exists()).then_some(()),
    );
    // `tollgate run` would keep trying to report the end to an agent that is gone.
    let _ = child.kill();
    let _ = child.wait();
}

/// What the kernel has attached to `cgroup`, as bpftool reports it: `bpftool cgroup
/// show`, or, where that query is newer than the kernel (on 5.10 it prints only its
/// header),
/// the attach types of the cgroup links whose cgroup id is this cgroup's.
fn attached_to(cgroup: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let shown = tollgate_e2e::output(
        std::process::Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(cgroup),
    );
    let text = tollgate_e2e::stdout(&shown);
    // More than its header line.
    if text.lines().filter(|l| !l.trim().is_empty()).count() > 1 {
        return text;
    }
    let id = std::fs::metadata(cgroup).expect("the cgroup").ino();
    let links =
        tollgate_e2e::output(std::process::Command::new("bpftool").args(["-j", "link", "show"]));
    let links: serde_json::Value =
        serde_json::from_str(&tollgate_e2e::stdout(&links)).unwrap_or_default();
    let types: Vec<String> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["cgroup_id"].as_u64() == Some(id))
        .filter_map(|l| l["attach_type"].as_str().map(str::to_owned))
        .collect();
    format!(
        "(bpftool cgroup show: nothing; {}) links: {}",
        tollgate_e2e::stderr(&shown).trim(),
        types.join(" ")
    )
}

/// A job making short connections as fast as it can (about a thousand a second here)
/// for `secs` seconds, then printing how many got through and how many failed.
const STREAM: &str = "\
import os, socket, sys, time
print(os.environ['TOLLGATE_JOB_ID'], flush=True)
port, stop = int(sys.argv[1]), sys.argv[2]
ok = err = 0
end = time.monotonic() + 300
while time.monotonic() < end and not os.path.exists(stop):
    try:
        s = socket.create_connection(('127.0.0.1', port), timeout=2)
        s.sendall(b'x')
        s.close()
        ok += 1
    except OSError:
        err += 1
        time.sleep(0.001)
print(ok, err, flush=True)
";
#[test]
fn sigkill_during_a_stream_of_connections_loses_no_record() {
    if !require_root() {
        return;
    }
    let sink = Server::sink("127.0.0.1:0");
    let mut agent = Agent::start();
    let port = sink.port().to_string();
    // The stream runs until the test has seen it carry on after the restart (however
    // slow the machine is: a fixed length ran out before a TCG guest's agent was back).
    let scratch = tempfile::tempdir().expect("tempdir");
    let stop = scratch.path().join("stop");
    let stop_arg = stop.display().to_string();
    let mut child = agent
        .run_command(
            &[("repo", "acme/stream")],
            &["python3", "-u", "-c", STREAM, &port, &stop_arg],
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("tollgate run");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut job_id = String::new();
    stdout.read_line(&mut job_id).expect("job id");
    let job_id = job_id.trim().to_owned();
    // Kill the agent in the middle of the stream, then bring it back.
    tollgate_e2e::wait_for(
        "the stream to run",
        tollgate_e2e::scaled(std::time::Duration::from_secs(10)),
        || (sink.accepted.load(Ordering::Relaxed) >= 300).then_some(()),
    );
    agent.kill9();
    let seen_at_kill = sink.accepted.load(Ordering::Relaxed);
    agent.start_again();
    let resumed = tollgate_e2e::wait_for(
        "the stream to go on after the restart",
        tollgate_e2e::scaled(std::time::Duration::from_secs(30)),
        || {
            let seen = sink.accepted.load(Ordering::Relaxed);
            (seen >= seen_at_kill + 100).then_some(seen)
        },
    );
    std::fs::write(&stop, b"").expect("stop the stream");
    let status = child.wait().expect("tollgate run");
    assert!(status.success(), "tollgate run: {status}");
    let mut summary = String::new();
    stdout.read_line(&mut summary).expect("summary");
    let seen = sink.accepted.load(Ordering::Relaxed);
    assert!(
        seen >= resumed,
        "the upstream's count went back: {seen} < {resumed} ({summary})"
    );

    // Every connection the upstream saw is on record, with its job. A connection still
    // in the sink's accept queue when the stream stopped has its client's side closed
    // only once the sink reads and closes it, or after the kernel's FIN_WAIT2 timeout
    // (`tcp_fin_timeout`, 60 s) for the orphan it left: its record ends then. A slow
    // guest's sink falls far behind the stream (a 7.2 single-threaded TCG guest left
    // 269 records open at 60 s), so the wait grows with the guest.
    let deadline = std::time::Instant::now()
        + tollgate_e2e::scaled(std::time::Duration::from_secs(60))
            .max(std::time::Duration::from_secs(90));
    let sessions = loop {
        let sessions = agent.sessions(Some(&job_id));
        let allowed = sessions
            .iter()
            .filter(|s| s.decision == DecisionLabel::Allow)
            .count();
        // (The sink may still be draining the last connections.)
        let open = sessions.iter().filter(|s| s.ended_at.is_none()).count();
        if allowed >= seen && open == 0 {
            break sessions;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for every connection on record: {allowed} allowed on record \
             ({} in all, {open} not ended), the upstream saw {seen} ({summary})",
            sessions.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let allowed = sessions
        .iter()
        .filter(|s| s.decision == DecisionLabel::Allow)
        .count();
    assert!(
        allowed >= seen,
        "{allowed} allowed connections on record, the upstream saw {seen} ({summary})"
    );
    let cut = sessions
        .iter()
        .filter(|s| {
            s.error
                .as_deref()
                .is_some_and(|e| e.contains("agent stopped"))
        })
        .count();
    eprintln!(
        "upstream saw {seen} ({seen_at_kill} before the kill); on record: {allowed} allowed, \
         {cut} cut by the kill; job: {summary}"
    );
}

#[test]
fn tampering_with_the_programs_is_detected_within_a_second() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let agent = Agent::start();
    let events = |agent: &Agent| agent.events(&[]);
    let wait = |what: &str, check: &dyn Fn() -> bool| {
        tollgate_e2e::wait_for(what, std::time::Duration::from_millis(1500), || {
            check().then_some(())
        })
    };
    // Control: ready, nothing recorded.
    assert_eq!(agent.admin_get("/readyz").0, 200);
    assert!(events(&agent).is_empty());

    // A removed pin detaches nothing (the agent holds the link) and is put back.
    let pin = agent.pin_dir.join("link_sock_release");
    std::fs::remove_file(&pin).expect("removing a pin");
    wait("the pin to be put back", &|| pin.exists());
    wait("the repair on record", &|| {
        events(&agent)
            .iter()
            .any(|e| e.kind == "tampering" && e.action == "repaired")
    });
    assert_eq!(agent.admin_get("/readyz").0, 200, "still intercepting");
    let url = format!("http://127.0.0.1:{}/", http.port());
    let out = agent.run_job(&[("repo", "acme/api")], &["curl", "-sS", &url]);
    assert!(out.status.success(), "{}", tollgate_e2e::stderr(&out));
    assert_eq!(agent.wait_sessions(None, 1).len(), 1, "intercepted");

    // A detached link fails readiness and is recorded.
    let link = agent.pin_dir.join("link_getpeername4");
    let show = tollgate_e2e::output(
        std::process::Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(&link),
    );
    let id = serde_json::from_slice::<serde_json::Value>(&show.stdout).expect("bpftool json")["id"]
        .as_u64()
        .expect("link id");
    let detach = tollgate_e2e::output(std::process::Command::new("bpftool").args([
        "link",
        "detach",
        "id",
        &id.to_string(),
    ]));
    assert!(detach.status.success(), "{}", tollgate_e2e::stderr(&detach));
    wait("readiness to fail", &|| agent.admin_get("/readyz").0 == 503);
    let (_, body) = agent.admin_get("/readyz");
    assert!(body.contains("getpeername4: detached"), "{body}");
    wait("the detach on record", &|| {
        events(&agent).iter().any(|e| {
            e.kind == "tampering"
                && e.action == "recorded"
                && e.detail.contains("getpeername4: detached")
        })
    });
    assert!(agent.metric("tollgate_bpf_tampering_total") >= 2.0);
}

#[test]
fn a_root_job_that_moves_itself_out_is_killed_and_recorded() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    // A cgroup of the test's own, outside every job, to escape to (removed on every exit).
    struct Escape(std::path::PathBuf);
    impl Drop for Escape {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let escape = Escape(
        tollgate_e2e::agent::cgroup2_mount()
            .join(format!("tollgate-e2e-escape-{}", std::process::id())),
    );
    std::fs::create_dir_all(&escape.0).expect("escape cgroup");
    let procs = escape.0.join("cgroup.procs");
    // Control: a root job that stays lives on.
    let stays = agent.run_job(
        &[("repo", "acme/root")],
        &["sh", "-c", "sleep 1; echo survived"],
    );
    assert_eq!(tollgate_e2e::stdout(&stays), "survived\n");
    let moves = agent.run_job(
        &[("repo", "acme/root")],
        &[
            "sh",
            "-c",
            &format!(
                "echo $$ > {}; echo moved; sleep 5; echo survived",
                procs.display()
            ),
        ],
    );
    use std::os::unix::process::ExitStatusExt as _;
    // Killed as it moved: it may not even get to say so.
    let said = tollgate_e2e::stdout(&moves);
    assert!(
        !said.contains("survived"),
        "it went on outside its job: {said}"
    );
    assert_eq!(
        moves.status.signal(),
        Some(libc::SIGKILL),
        "{:?}",
        moves.status
    );
    let events = tollgate_e2e::wait_for(
        "the escape on record",
        std::time::Duration::from_secs(5),
        || Some(agent.events(&[])).filter(|events| !events.is_empty()),
    );
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].kind, "left_job");
    assert_eq!(events[0].action, "killed");
    assert!(
        events[0].detail.contains("tollgate-e2e-escape"),
        "{:?}",
        events[0]
    );
    assert!(events[0].job_id.is_some());
}
