//! `tollgate run`: runs a command as a new job. The agent creates the job's cgroup and
//! places the command's process in it before exec, so the job is covered from its first
//! instruction; stdio passes through, signals are forwarded, and the exit status (code or
//! signal) becomes this process's own.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    path::Path,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    control::{Client, ClientError, Request, Response},
    record::JobExit,
};

/// Signals forwarded to the command.
const FORWARDED: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];
/// How long to keep trying to report the job's end while the agent is unreachable.
const END_RETRY: Duration = Duration::from_secs(30);

fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
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
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
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
        (a.uid, a.gid, a.groups.clone())
    });
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (getpid, write, read, setgroups, setgid, setuid) on descriptors that stay
    // open until exec and memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let pid = (libc::getpid() as u32).to_ne_bytes();
            if libc::write(notify_fd, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(io::Error::last_os_error());
            }
            let mut go = 0u8;
            loop {
                let n = libc::read(go_fd, (&raw mut go).cast(), 1);
                if n == 1 {
                    break;
                }
                if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            if go != b'1' {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            // In the job now: drop to the user (groups first, then gid, then uid).
            if let Some((uid, gid, groups)) = &ids
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0)
            {
                return Err(io::Error::last_os_error());
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
    // SAFETY: isatty has no preconditions.
    let interactive = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        let mut signals = signals;
        for signal in signals.forever() {
            // The terminal already sends SIGINT/SIGQUIT to the whole foreground group.
            if interactive && (signal == libc::SIGINT || signal == libc::SIGQUIT) {
                continue;
            }
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(child_pid, signal) };
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
            // SAFETY: resetting a disposition and raising a signal in our own process.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
                libc::raise(signal);
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
