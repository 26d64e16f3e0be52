//! The programs that the fail-closed guarantee needs: loading them (in parallel) and
//! attaching one, and what each needs
//! of the kernel, for the error that stops the agent where it cannot.
use std::{fs, path::PathBuf};

use aya::programs::{CgroupSkbAttachType, Program, links::FdLink};

use super::{ATTACH_MODE, BpfError};

/// Loads every program of `names` (the verifier's work, most of an agent's start: about
/// a second on a fast host, far more under emulation), on as many threads as there are
/// CPUs: the verifier runs on the loading thread, one program at a time. Nothing is
/// attached yet; [`attach`] does that in order.
pub(super) fn load_all(ebpf: &mut aya::Ebpf, names: &[&'static str]) -> Result<(), BpfError> {
    let mut queue = Vec::with_capacity(names.len());
    for (found, program) in ebpf.programs_mut() {
        if let Some(name) = names.iter().find(|n| **n == found) {
            queue.push((*name, program));
        }
    }
    if let Some(missing) = names.iter().find(|n| !queue.iter().any(|(q, _)| q == *n)) {
        return Err(BpfError::Missing(missing));
    }
    // The slowest to verify first, so that no thread starts one of them last.
    queue.sort_by_key(|(name, _)| {
        SLOWEST_FIRST
            .iter()
            .position(|slow| slow == name)
            .unwrap_or(SLOWEST_FIRST.len())
    });
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(queue.len());
    let queue = std::sync::Mutex::new(queue.into_iter());
    let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).next();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    while let Some((name, program)) = next() {
                        load(program, name)?;
                    }
                    Ok(())
                })
            })
            .collect();
        // Every worker is joined; the first error is the one reported.
        let mut result = Ok(());
        for worker in workers {
            let done = worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(done);
        }
        result
    })
}

/// The programs whose verification takes longest (on 6.18: sockops 0.35 s, sock_create
/// 0.24 s, connect4 0.08 s, connect6, sendmsg6 and sendmsg4 0.04-0.06 s; the others
/// under a millisecond).
const SLOWEST_FIRST: [&str; 6] = [
    "tollgate_sockops",
    "sock_create",
    "connect4",
    "connect6",
    "sendmsg6",
    "sendmsg4",
];

/// Loads one required program.
fn load(program: &mut Program, name: &'static str) -> Result<(), BpfError> {
    match program {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
    }
    .map_err(|source| BpfError::Program { name, source })
}

/// Attaches `program`, loaded by [`load_all`], to `cgroup`, handing back its link for
/// pinning.
pub(super) fn attach(
    program: &mut Program,
    name: &'static str,
    cgroup: &fs::File,
) -> Result<FdLink, BpfError> {
    let err = |source| BpfError::Program { name, source };
    let link = |link: Result<FdLink, aya::programs::links::LinkError>| {
        link.map_err(|source| BpfError::Link {
            path: PathBuf::from(name),
            source,
        })
    };
    // The aya program types share no trait for attach and take_link.
    macro_rules! attached {
        ($p:expr) => {{
            let id = $p.attach(cgroup, ATTACH_MODE).map_err(err)?;
            link(FdLink::try_from($p.take_link(id).map_err(err)?))
        }};
    }
    match program {
        Program::CgroupSockAddr(p) => attached!(p),
        Program::CgroupSock(p) => attached!(p),
        Program::SockOps(p) => attached!(p),
        Program::CgroupSkb(p) => {
            let id = p
                .attach(cgroup, CgroupSkbAttachType::Egress, ATTACH_MODE)
                .map_err(err)?;
            link(FdLink::try_from(p.take_link(id).map_err(err)?))
        }
        _ => Err(err(aya::programs::ProgramError::UnexpectedProgramType)),
    }
}

/// What the kernel needs for program `name` (by its function name).
pub(super) fn needs(name: &str) -> &'static str {
    match name {
        "connect4" | "connect6" => {
            "cgroup/connect4 and connect6 programs (Linux 4.17+), attached by bpf_link (5.7+)"
        }
        "sendmsg4" | "sendmsg6" => "cgroup/sendmsg4 and sendmsg6 programs (Linux 4.18+)",
        "recvmsg4" | "recvmsg6" => "cgroup/recvmsg4 and recvmsg6 programs (Linux 5.2+)",
        "udp_egress" => "a cgroup_skb egress program (Linux 4.10+)",
        "getpeername4" | "getpeername6" => {
            "cgroup/getpeername4 and getpeername6 programs (Linux 5.8+)"
        }
        "sock_release" => "a cgroup/sock_release program (Linux 5.9+)",
        "tollgate_sockops" => "a sock_ops program with its state callbacks (Linux 4.16+)",
        "sock_create" => "a cgroup/sock_create program (Linux 4.10+)",
        _ => "a cgroup eBPF program type this kernel may not have",
    }
}

#[cfg(test)]
mod tests {
    use super::{BpfError, needs};

    #[test]
    fn a_required_program_that_fails_stops_the_agent_naming_the_feature_and_kernel() {
        let error = BpfError::Required {
            name: "getpeername4",
            needs: needs("getpeername4"),
            release: "5.4.0-1-amd64".to_owned(),
            source: Box::new(BpfError::Program {
                name: "getpeername4",
                source: aya::programs::ProgramError::UnexpectedProgramType,
            }),
        };
        let text = error.to_string();
        for part in [
            "5.4.0-1-amd64",
            "getpeername4",
            "Linux 5.8+",
            "does not start",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }

    #[test]
    fn every_required_program_names_what_it_needs() {
        for (name, _) in super::super::PROGRAMS {
            assert!(needs(name).contains("Linux"), "{name}: {}", needs(name));
        }
    }
}
