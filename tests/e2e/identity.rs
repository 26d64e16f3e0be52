//! Pipeline identity: the GitHub runner hooks with a simulated Runner.Worker, the GitLab
//! hook, identity files, OIDC verification against a local issuer, and refusals.
mod oidc;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use tollgate::{
    control::{Assurance, JobKind},
    record::{AuditRecord, ConnectionRecord, DecisionLabel},
};
use tollgate_e2e::{
    Agent, NOBODY, agent::tollgate_bin, agent_as_nobody, oidc::Issuer, output, postgres,
    require_root, servers::Server, stderr, stdout, wait_for,
};

/// `[identity.*]` for an agent that trusts root as the runner account and `issuer`.
pub(crate) fn identity_config(issuer: &Issuer, runner_uids: &str) -> String {
    format!(
        "[identity]\njwks_refetch_interval = \"1h\"\n\n\
         [identity.github]\nrunner_uids = {runner_uids}\nissuer = \"{url}\"\n\n\
         [identity.gitlab]\nrunner_uids = {runner_uids}\nissuer = \"{url}\"\n",
        url = issuer.url
    )
}

/// A runner directory with a `bin/Runner.Worker` (the fake worker) and the two hook
/// scripts, as `tollgate install github-runner` writes them.
struct Runner {
    dir: tempfile::TempDir,
}

impl Runner {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-runner-")
            .tempdir()
            .expect("tempdir");
        fs::create_dir(dir.path().join("bin")).expect("bin dir");
        fs::copy(
            tollgate_e2e::helper(env!("CARGO_BIN_EXE_fake-runner-worker")),
            dir.path().join("bin/Runner.Worker"),
        )
        .expect("copying the fake worker");
        for (file, event) in [
            ("started.sh", "job-started"),
            ("completed.sh", "job-completed"),
        ] {
            fs::write(
                dir.path().join(file),
                format!(
                    "#!/bin/sh\nexec '{}' hook github {event}\n",
                    tollgate_bin().display()
                ),
            )
            .expect("hook script");
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The worker for one job, with `GITHUB_*` variables for `run_id` and `steps`.
    fn worker(&self, agent: &Agent, run_id: &str, steps: &[String]) -> Command {
        let mut cmd = Command::new(self.path("bin/Runner.Worker"));
        cmd.args(steps)
            .env("TOLLGATE_CONTROL_SOCKET", &agent.socket)
            .env("ACTIONS_RUNNER_HOOK_JOB_STARTED", self.path("started.sh"))
            .env(
                "ACTIONS_RUNNER_HOOK_JOB_COMPLETED",
                self.path("completed.sh"),
            )
            .env("GITHUB_REPOSITORY", "acme/api")
            .env("GITHUB_RUN_ID", run_id)
            .env("GITHUB_RUN_ATTEMPT", "1")
            .env("GITHUB_JOB", "deploy")
            .env("GITHUB_WORKFLOW", "Deploy")
            .env("GITHUB_REF", "refs/heads/main")
            .env("GITHUB_REF_TYPE", "branch")
            .env("GITHUB_SHA", "0123abcd")
            .env("GITHUB_ACTOR", "octocat")
            .env("GITHUB_EVENT_NAME", "push")
            .env("RUNNER_NAME", "runner-1")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_TOKEN");
        cmd
    }
}

fn audit(agent: &Agent) -> Vec<AuditRecord> {
    agent.audit(&[])
}

/// Whether a refusal of `action` whose detail contains `detail` reaches the audit trail
/// (written asynchronously) within a few seconds.
fn refused(agent: &Agent, action: &str, detail: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found = audit(agent)
            .iter()
            .any(|e| e.action == action && e.outcome == "refused" && e.detail.contains(detail));
        if found || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every job has ended and its cgroup is gone (a hook job ends when its
/// worker exits; the reaper looks every second).
fn wait_jobs_gone(agent: &Agent) {
    wait_for("the jobs to end", Duration::from_secs(10), || {
        (agent.jobs().is_empty() && agent.job_cgroups().is_empty()).then_some(())
    });
}

fn job_of_run<'a>(sessions: &'a [ConnectionRecord], run_id: &str) -> Vec<&'a ConnectionRecord> {
    sessions
        .iter()
        .filter(|s| s.job_identity.run_id == run_id)
        .collect()
}

#[test]
fn github_hooks_enroll_the_runner_worker_and_attribute_its_steps() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let http = Server::http("127.0.0.1:0");
    let issuer = Issuer::start();
    let agent = Agent::start_with(&identity_config(&issuer, "[0]"));
    let runner = Runner::new();
    let url = format!("http://127.0.0.1:{}/", http.port());
    let psql = pg.psql_args("127.0.0.1", "select 1").join("' '");
    let leftover = runner.path("leftover.pid");
    let steps = |tag: &str| {
        vec![
            format!("'{psql}'"),
            format!("curl -sS {url} >/dev/null && curl -sS {url} >/dev/null"),
            // Overlap with the other runner's job.
            "sleep 1".to_owned(),
            format!("sleep 300 & echo $! > {}.{tag}", leftover.display()),
        ]
    };

    // Runner A gets an OIDC token through the hook; runner B stays host-asserted.
    issuer.set_endpoint_claims(issuer.github_claims("acme/api", "5001", "1"));
    let mut a = runner.worker(&agent, "5001", &steps("a"));
    a.env("ACTIONS_ID_TOKEN_REQUEST_URL", issuer.request_url())
        .env(
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            tollgate_e2e::oidc::REQUEST_TOKEN,
        );
    let a = a
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker a");
    let b = runner
        .worker(&agent, "5002", &steps("b"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker b");
    let a = a.wait_with_output().expect("worker a");
    let b = b.wait_with_output().expect("worker b");
    for (name, out) in [("a", &a), ("b", &b)] {
        assert!(
            out.status.success(),
            "worker {name}: {}\n{}\n{}",
            stdout(out),
            stderr(out),
            agent.log()
        );
        // The worker stayed in its job (intercepted) until it exited.
        assert!(
            stdout(out).contains(&format!("worker-cgroup: /{}/job-", agent.name)),
            "worker {name} left its job: {}",
            stdout(out)
        );
        assert!(
            stderr(out).contains("enrolled: github acme/api run"),
            "{}",
            stderr(out)
        );
        // The step's background process was killed when the job completed.
        let pid = fs::read_to_string(format!("{}.{name}", leftover.display()))
            .expect("leftover pid")
            .trim()
            .to_owned();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "leftover step process {pid} survived the job"
        );
    }
    assert!(stderr(&a).contains("(oidc-verified)"), "{}", stderr(&a));
    assert!(stderr(&b).contains("(host-asserted)"), "{}", stderr(&b));
    // Each job ends when its worker exits.
    wait_jobs_gone(&agent);

    let sessions = agent.wait_sessions(None, 6);
    assert_eq!(sessions.len(), 6, "3 connections per runner: {sessions:#?}");
    for (run_id, assurance, other) in [
        ("5001", Assurance::OidcVerified, "5002"),
        ("5002", Assurance::HostAsserted, "5001"),
    ] {
        let mine = job_of_run(&sessions, run_id);
        assert_eq!(mine.len(), 3, "run {run_id}: {sessions:#?}");
        let job = &mine[0].job_id;
        assert!(job.is_some(), "{mine:#?}");
        for s in &mine {
            assert_eq!(&s.job_id, job, "one job per run");
            assert_eq!(s.decision, DecisionLabel::Allow);
            assert_eq!(s.assurance, Some(assurance));
            assert_eq!(s.job_identity.provider, "github");
            assert_eq!(s.job_identity.repository, "acme/api");
            assert_eq!(s.job_identity.job, "deploy");
            assert_eq!(s.job_identity.runner, "runner-1");
        }
        let comms: Vec<&str> = mine.iter().filter_map(|s| s.comm.as_deref()).collect();
        assert!(
            comms.contains(&"psql") && comms.contains(&"curl"),
            "{comms:?}"
        );
        assert!(
            job_of_run(&sessions, other)
                .iter()
                .all(|s| &s.job_id != job),
            "runs share a job"
        );
    }
    // The verified job carries the token's claims.
    let verified = job_of_run(&sessions, "5001");
    assert_eq!(verified[0].job_identity.environment, "production");
    assert_eq!(issuer.token_requests(), 1);

    let entries = wait_for("the audit trail", Duration::from_secs(5), || {
        let entries = audit(&agent);
        (entries.len() >= 5).then_some(entries)
    });
    let count = |action: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.outcome == "ok")
            .count()
    };
    assert_eq!(count("github_job_started"), 2);
    assert_eq!(count("github_job_completed"), 2);
    assert_eq!(count("attest"), 1);
    assert_eq!(
        agent.metric("tollgate_jobs_ended_total{reason=\"completed\"}"),
        2.0
    );
}

#[test]
fn a_step_that_runs_the_completion_hook_itself_stays_intercepted() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let issuer = Issuer::start();
    let agent = Agent::start_with(&identity_config(&issuer, "[0]"));
    let runner = Runner::new();
    let url = format!("http://127.0.0.1:{}/", http.port());
    let cgroup = "sed -n 's/^0:://p' /proc/self/cgroup";
    let steps = [
        // A hostile step: ends the job itself, then goes on.
        format!(
            "sh {} && echo \"step0-cgroup: $({cgroup})\" && curl -sS -o /dev/null {url}",
            runner.path("completed.sh").display()
        ),
        // A later step.
        format!("echo \"step1-cgroup: $({cgroup})\" && curl -sS -o /dev/null {url}"),
    ];
    let out = output(
        runner
            .worker(&agent, "7001", &steps)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    let job_prefix = format!("/{}/job-", agent.name);
    for step in ["step0", "step1"] {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{step}-cgroup: ")))
            .unwrap_or_else(|| panic!("no {step} cgroup in {text}"));
        assert!(
            line.starts_with(&job_prefix),
            "{step} escaped its job: {line}"
        );
    }
    // Both steps' connections went through Tollgate, attributed to the one job.
    let sessions = agent.wait_sessions(None, 2);
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    let job = &sessions[0].job_id;
    assert!(job.is_some(), "{sessions:#?}");
    for s in &sessions {
        assert_eq!(&s.job_id, job);
        assert_eq!(s.job_identity.run_id, "7001");
        assert_eq!(s.comm.as_deref(), Some("curl"));
    }
    assert_eq!(
        http.accepted.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "both requests were served (control)"
    );
    // The job ends as completed once the worker exits, and nothing is left behind.
    wait_jobs_gone(&agent);
    assert_eq!(
        agent.metric("tollgate_jobs_ended_total{reason=\"completed\"}"),
        1.0
    );
}

#[test]
fn a_restarted_agent_keeps_a_runner_job_and_its_verified_identity() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let issuer = Issuer::start();
    let mut agent = Agent::start_with(&identity_config(&issuer, "[0]"));
    let runner = Runner::new();
    let (ready, go) = (runner.path("ready"), runner.path("go"));
    let url = format!("http://127.0.0.1:{}/", http.port());
    let steps = [
        format!(
            "touch {}; while [ ! -e {} ]; do sleep 0.1; done",
            ready.display(),
            go.display()
        ),
        format!("curl -sS -o /dev/null {url}"),
    ];
    issuer.set_endpoint_claims(issuer.github_claims("acme/api", "9001", "1"));
    let worker = runner
        .worker(&agent, "9001", &steps)
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", issuer.request_url())
        .env(
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            tollgate_e2e::oidc::REQUEST_TOKEN,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");
    wait_for("the first step", Duration::from_secs(20), || {
        ready.exists().then_some(())
    });
    agent.kill9();
    agent.start_again();
    let jobs = agent.jobs();
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    assert_eq!(jobs[0].kind, JobKind::GithubHook);
    assert_eq!(jobs[0].assurance, Assurance::OidcVerified);
    assert_eq!(jobs[0].identity.run_id, "9001");
    fs::write(&go, "").expect("go");
    let out = worker.wait_with_output().expect("worker");
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        stdout(&out),
        stderr(&out),
        agent.log()
    );
    assert!(
        stdout(&out).contains(&format!("worker-cgroup: /{}/job-", agent.name)),
        "{}",
        stdout(&out)
    );
    let sessions = agent.wait_sessions(None, 1);
    assert_eq!(sessions[0].assurance, Some(Assurance::OidcVerified));
    assert_eq!(sessions[0].job_identity.run_id, "9001");
    wait_jobs_gone(&agent);
}

#[test]
fn forged_github_enrolment_is_refused_and_recorded() {
    if !require_root() {
        return;
    }
    let issuer = Issuer::start();
    let agent = Agent::start_with(&identity_config(&issuer, "[0]"));
    agent.open_dir();
    let runner = Runner::new();
    let github_env = [
        ("GITHUB_REPOSITORY", "acme/api"),
        ("GITHUB_RUN_ID", "6001"),
        ("GITHUB_RUN_ATTEMPT", "1"),
    ];

    // A caller whose uid is not a runner account.
    let mut nobody = agent_as_nobody(&agent);
    nobody
        .args(["hook", "github", "job-started"])
        .envs(github_env);
    let out = output(&mut nobody);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("uid {NOBODY} is not a github runner account")),
        "{}",
        stderr(&out)
    );
    assert!(refused(
        &agent,
        "github_job_started",
        "not a github runner account"
    ));

    // A runner account without a Runner.Worker above it.
    let out = output(
        agent
            .tollgate()
            .args(["hook", "github", "job-started"])
            .envs(github_env),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no Runner.Worker process among the ancestors"),
        "{}",
        stderr(&out)
    );
    assert!(refused(&agent, "github_job_started", "no Runner.Worker"));

    // The request cannot name a pid to enroll.
    let forged = r#"{"op":"github_job_started","identity":{"repository":"acme/api","run_id":"1"},"token":null,"pid":1}"#;
    let reply = raw_request(&agent, forged);
    assert!(reply.contains("unknown field `pid`"), "{reply}");

    // A hook for a job that is already enrolled (a step re-runs the started hook).
    let again = format!("sh {}", runner.path("started.sh").display());
    let out = output(
        runner
            .worker(&agent, "6002", &[again])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    assert!(!out.status.success(), "re-enrolment succeeded");
    assert!(
        stderr(&out).contains("is already enrolled in job"),
        "{}",
        stderr(&out)
    );
    assert!(refused(&agent, "github_job_started", "already enrolled"));
    wait_jobs_gone(&agent);

    // A Runner.Worker of another user: the runner account's hook may not enroll it.
    let agent2 = Agent::start_with(&identity_config(&issuer, &format!("[0, {NOBODY}]")));
    agent2.open_dir();
    fs::set_permissions(
        runner.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let as_nobody_hook = format!(
        "#!/bin/sh\nexec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- '{}' hook github job-started\n",
        tollgate_bin().display()
    );
    fs::write(runner.path("started-nobody.sh"), as_nobody_hook).expect("hook");
    let out = output(
        runner
            .worker(&agent2, "6003", &[])
            .env(
                "ACTIONS_RUNNER_HOOK_JOB_STARTED",
                runner.path("started-nobody.sh"),
            )
            .env_remove("ACTIONS_RUNNER_HOOK_JOB_COMPLETED"),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("not as the caller's uid {NOBODY}")),
        "{}",
        stderr(&out)
    );
    assert!(refused(
        &agent2,
        "github_job_started",
        "not as the caller's uid"
    ));
    assert_eq!(
        agent2.metric(
            "tollgate_identity_events_total{action=\"github_job_started\",result=\"refused\"}"
        ),
        1.0
    );
}

fn raw_request(agent: &Agent, line: &str) -> String {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut stream =
        std::os::unix::net::UnixStream::connect(&agent.socket).expect("control socket");
    stream
        .write_all(format!("{line}\n").as_bytes())
        .expect("write");
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .expect("read reply");
    reply
}

pub(crate) fn identity_file(dir: &Path, run_id: &str) -> PathBuf {
    let path = dir.join(format!("identity-{run_id}.toml"));
    fs::write(
        &path,
        format!(
            "provider = \"github\"\nrepository = \"acme/api\"\nrun_id = \"{run_id}\"\n\
             run_attempt = \"1\"\njob = \"deploy\"\n"
        ),
    )
    .expect("identity file");
    path
}
