//! A stand-in for GitHub's Runner.Worker: the tests copy it to a file named
//! `Runner.Worker` (so that its comm is that), and it does what the real worker does for a
//! job: run the job-started hook, run each step (argv) through `sh -c`, run the
//! job-completed hook. It prints its pid first and its cgroup at the end.
use std::process::{Command, ExitCode};

fn hook(var: &str) -> bool {
    let Ok(script) = std::env::var(var) else {
        println!("{var} not set");
        return true;
    };
    match Command::new("sh").arg(&script).status() {
        Ok(status) if status.success() => true,
        Ok(status) => {
            println!("hook {var} failed: {status}");
            false
        }
        Err(error) => {
            println!("hook {var}: {error}");
            false
        }
    }
}

fn main() -> ExitCode {
    println!("{}", std::process::id());
    let mut ok = hook("ACTIONS_RUNNER_HOOK_JOB_STARTED");
    if ok {
        for (n, step) in std::env::args().skip(1).enumerate() {
            let status = Command::new("sh").arg("-c").arg(&step).status();
            println!("step {n}: {status:?}");
            ok &= status.is_ok_and(|s| s.success());
        }
    }
    ok &= hook("ACTIONS_RUNNER_HOOK_JOB_COMPLETED");
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let v2 = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("?");
    println!("worker-cgroup: {v2}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
