//! The control socket: callers are authorized by SO_PEERCRED, jobs by their owner, and a
//! job whose owner disappears is ended.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};
use tollgate_e2e::{
    Agent, NOBODY, agent_as_nobody, output, require_root, servers::Server, stderr, wait_for,
};

#[test]
fn callers_are_authorized_by_their_kernel_credentials() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    // The control socket lives in a private temp dir: let nobody reach it.
    let denied_agent = Agent::start();
    denied_agent.open_dir();
    let denied = output(agent_as_nobody(&denied_agent).args(["jobs"]));
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stderr(&denied).contains(&format!("permission denied: uid {NOBODY}")),
        "{}",
        stderr(&denied)
    );
    assert_eq!(
        denied_agent.metric("tollgate_control_requests_total{op=\"list_jobs\",result=\"denied\"}"),
        1.0
    );
    drop(denied_agent);

    let agent = Agent::start_with_control(&format!("allowed_uids = [{NOBODY}]"));
    agent.open_dir();
    let url = format!("http://127.0.0.1:{}/", http.port());
    let run = output(agent_as_nobody(&agent).args([
        "run",
        "--label",
        "who=nobody",
        "--",
        "curl",
        "-sS",
        &url,
    ]));
    assert!(run.status.success(), "run as nobody: {}", stderr(&run));
    let sessions = agent.wait_sessions(None, 1);
    assert_eq!(sessions[0].uid, Some(NOBODY));
    assert_eq!(sessions[0].gid, Some(NOBODY));
    assert_eq!(sessions[0].job_labels["who"], "nobody");
}

/// A string of a raw control-protocol reply (these tests speak the wire format itself,
/// malformed requests included, so they read its replies untyped).
fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{key}` in {value}"))
}

fn call(stream: &mut BufReader<UnixStream>, request: Value) -> Value {
    let mut line = request.to_string();
    line.push('\n');
    stream.get_mut().write_all(line.as_bytes()).expect("write");
    let mut reply = String::new();
    stream.read_line(&mut reply).expect("read");
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply {reply}: {e}"))
}

#[test]
fn enrolling_a_process_that_is_not_the_callers_child_is_refused() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let mut stranger = Command::new("sleep").arg("300").spawn().expect("sleep");
    let mut stream = BufReader::new(UnixStream::connect(&agent.socket).expect("connect"));
    let job = call(
        &mut stream,
        json!({"op": "create_job", "labels": {"a": "b"}, "name": null}),
    );
    assert_eq!(job["reply"], "job", "{job}");
    let job_id = str_field(&job, "id").to_owned();
    // The caller is this test process: pid 1 and our own parent are not its children.
    for pid in [1, std::os::unix::process::parent_id()] {
        let reply = call(
            &mut stream,
            json!({"op": "enroll_pid", "job_id": job_id, "pid": pid}),
        );
        assert_eq!(reply["reply"], "error", "{reply}");
        assert!(
            str_field(&reply, "message").contains("is not a child"),
            "{reply}"
        );
    }
    // Both refusals are on the audit trail.
    wait_for(
        "refused enrolments on the audit trail",
        Duration::from_secs(5),
        || {
            let refused = agent
                .audit(&[])
                .iter()
                .filter(|e| {
                    e.action == "enroll"
                        && e.outcome == "refused"
                        && e.detail.contains("is not a child")
                })
                .count();
            (refused == 2).then_some(())
        },
    );
    let malformed = call(&mut stream, json!({"op": "enroll_pid", "job_id": job_id}));
    assert!(
        str_field(&malformed, "message").contains("malformed request"),
        "{malformed}"
    );
    let ok = call(
        &mut stream,
        json!({"op": "enroll_pid", "job_id": job_id, "pid": stranger.id()}),
    );
    assert_eq!(ok["reply"], "done", "our own child may be enrolled: {ok}");
    let again = call(
        &mut stream,
        json!({"op": "enroll_pid", "job_id": job_id, "pid": stranger.id()}),
    );
    assert!(
        str_field(&again, "message").contains("already in a job"),
        "{again}"
    );
    let end = call(
        &mut stream,
        json!({"op": "end_job", "job_id": job_id, "exit": null}),
    );
    assert_eq!(end["reply"], "done", "{end}");
    let status = stranger.wait().expect("sleep");
    assert!(
        !status.success(),
        "ending the job killed the enrolled process"
    );
    let _ = stranger.kill();
}

#[test]
fn a_job_whose_owner_is_killed_is_ended() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let (mut owner, sleep_pid) = agent.start_sleeping_job(&[("repo", "acme/orphan")]);
    assert_eq!(agent.jobs().len(), 1);
    owner.kill().expect("SIGKILL tollgate run");
    let _ = owner.wait();
    wait_for("the orphaned job to end", Duration::from_secs(10), || {
        agent.jobs().is_empty().then_some(())
    });
    wait_for("its command to die", Duration::from_secs(10), || {
        let stat = std::fs::read_to_string(format!("/proc/{sleep_pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.contains(") Z")).then_some(())
    });
    assert!(agent.job_cgroups().is_empty());
    assert_eq!(
        agent.metric("tollgate_jobs_ended_total{reason=\"owner_gone\"}"),
        1.0
    );
}
