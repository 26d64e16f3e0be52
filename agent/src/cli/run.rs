//! `tollgate run`: runs a command as a new job. The agent creates the job's cgroup and
//! places the command's process in it before exec, so the job is covered from its first
//! instruction; stdio passes through, signals are forwarded, and the exit status (code or
//! signal) becomes this process's own.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    path::Path,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use nix::{
    errno::Errno,
    sys::signal::{SigHandler, Signal},
    unistd::{Gid, Pid, Uid},
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

use crate::{
    control::{Client, ClientError, Request, Response},
    record::JobExit,
};

/// Signals forwarded to the command.
const FORWARDED: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];
/// How long to keep trying to report the job's end while the agent is unreachable.
const END_RETRY: Duration = Duration::from_secs(30);

fn pipe() -> io::Result<(File, File)> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((File::from(read), File::from(write)))
}

pub fn run(
    socket: &Path,
    user: Option<&str>,
    labels: BTreeMap<String, String>,
    name: Option<String>,
    identity_file: Option<&Path>,
    command: &[String],
) -> anyhow::Result<ExitCode> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command given");
    };
    let identity = identity_file.map(crate::identity::file::read).transpose()?;
    let account = match user {
        Some(user) => {
            if !nix::unistd::geteuid().is_root() {
                bail!(
                    "--user needs root (the command is started as root, placed in its job, then switched)"
                );
            }
            Some(
                crate::accounts::account(user)
                    .with_context(|| format!("looking up user {user}"))?
                    .with_context(|| format!("no such user: {user}"))?,
            )
        }
        None => None,
    };
    let mut client = Client::connect(socket)?;
    let request = Request::CreateJob {
        labels,
        name,
        identity,
    };
    let Response::Job(job) = client.call(&request)? else {
        bail!("unexpected reply to create_job");
    };
    let job_id = job.id.clone();

    let (mut notify_read, notify_write) = pipe().context("pipe")?;
    let (go_read, mut go_write) = pipe().context("pipe")?;
    let enroll_job = job_id.clone();
    let enroller = std::thread::spawn(move || -> Result<(), String> {
        let mut pid = [0u8; 4];
        notify_read
            .read_exact(&mut pid)
            .map_err(|e| format!("the command did not start: {e}"))?;
        let pid = u32::from_ne_bytes(pid);
        let result = client.call(&Request::EnrollPid {
            job_id: enroll_job,
            pid,
        });
        let _ = go_write.write_all(if result.is_ok() { b"1" } else { b"0" });
        result.map(|_| ()).map_err(|e| e.to_string())
    });

    let signals = signal_hook::iterator::Signals::new(FORWARDED).context("signal handlers")?;
    let (notify_fd, go_fd) = (notify_write.as_raw_fd(), go_read.as_raw_fd());
    let mut cmd = Command::new(program);
    cmd.args(args).env("TOLLGATE_JOB_ID", &job_id);
    let ids = account.as_ref().map(|a| {
        cmd.env("HOME", &a.home)
            .env("USER", &a.name)
            .env("LOGNAME", &a.name);
        let groups: Vec<Gid> = a.groups.iter().copied().map(Gid::from_raw).collect();
        (Uid::from_raw(a.uid), Gid::from_raw(a.gid), groups)
    });
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // calls (getpid, write, read, setgroups, setgid, setuid) on descriptors that stay
    // open until exec (the parent closes its copies only after spawn returns) and on
    // memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let (notify, go_pipe) = (
                std::os::fd::BorrowedFd::borrow_raw(notify_fd),
                std::os::fd::BorrowedFd::borrow_raw(go_fd),
            );
            let pid = nix::unistd::getpid().as_raw().to_ne_bytes();
            if nix::unistd::write(notify, &pid)? != pid.len() {
                return Err(Errno::EIO.into());
            }
            let mut go = [0u8];
            loop {
                match nix::unistd::read(go_pipe, &mut go) {
                    Ok(1) => break,
                    Err(Errno::EINTR) => continue,
                    _ => return Err(Errno::EIO.into()),
                }
            }
            if go[0] != b'1' {
                return Err(Errno::EPERM.into());
            }
            // In the job now: drop to the user (groups first, then gid, then uid).
            if let Some((uid, gid, groups)) = &ids {
                nix::unistd::setgroups(groups)?;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // Our copies of the child's ends: closing them lets the enroller see EOF if the
    // child never got as far as pre_exec.
    drop(notify_write);
    drop(go_read);
    let enrolled = enroller
        .join()
        .unwrap_or_else(|_| Err("enrolment thread panicked".to_owned()));

    let mut child = match (spawned, enrolled) {
        (Ok(child), Ok(())) => child,
        (spawned, enrolled) => {
            let reason = match (spawned, enrolled) {
                (_, Err(enroll)) => anyhow!("placing the command in job {job_id}: {enroll}"),
                (Err(spawn), _) => anyhow!("starting `{program}`: {spawn}"),
                (Ok(_), Ok(())) => anyhow!("internal error"),
            };
            end_job(socket, &job_id, None);
            return Err(reason);
        }
    };

    let child_pid = child.id() as i32;
    let interactive = nix::unistd::isatty(io::stdin()).unwrap_or(false);
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        let mut signals = signals;
        for signal in signals.forever() {
            // The terminal already sends SIGINT/SIGQUIT to the whole foreground group.
            if interactive && (signal == SIGINT || signal == SIGQUIT) {
                continue;
            }
            if let Ok(signal) = Signal::try_from(signal) {
                let _ = nix::sys::signal::kill(Pid::from_raw(child_pid), signal);
            }
        }
    });

    let status = child.wait().context("waiting for the command")?;
    handle.close();
    let _ = forwarder.join();
    let exit = match (status.code(), status.signal()) {
        (Some(code), _) => Some(JobExit::Code(code)),
        (None, Some(signal)) => Some(JobExit::Signal(signal)),
        (None, None) => None,
    };
    end_job(socket, &job_id, exit);
    match exit {
        Some(JobExit::Code(code)) => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Some(JobExit::Signal(signal)) => {
            // Die the same way, so our parent sees what the command did.
            if let Ok(signal) = Signal::try_from(signal) {
                // SAFETY: SIG_DFL installs no handler of ours, so nothing runs in signal
                // context.
                let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
                let _ = nix::sys::signal::raise(signal);
            }
            Ok(ExitCode::from(128u8.saturating_add(signal as u8)))
        }
        None => Ok(ExitCode::from(1)),
    }
}

/// Reports the job's end; the agent then kills leftovers and removes the cgroup. Retries
/// while the agent is unreachable (for example while it restarts).
fn end_job(socket: &Path, job_id: &str, exit: Option<JobExit>) {
    let request = Request::EndJob {
        job_id: job_id.to_owned(),
        exit,
    };
    let start = Instant::now();
    loop {
        match Client::connect(socket).and_then(|mut client| client.call(&request)) {
            Ok(_) => return,
            Err(
                error @ (ClientError::Connect { .. }
                | ClientError::NoReply
                | ClientError::Io { .. }),
            ) if start.elapsed() < END_RETRY => {
                tracing::debug!(%error, "agent unreachable; retrying");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(error) => {
                eprintln!("tollgate: warning: could not end job {job_id}: {error}");
                return;
            }
        }
    }
}
