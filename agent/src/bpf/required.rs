//! The programs that the fail-closed guarantee needs: attaching one, and what each needs
//! of the kernel, for the error that stops the agent where it cannot.
use std::{fs, path::PathBuf};

use aya::programs::{CgroupSkbAttachType, Program, links::FdLink};

use super::{ATTACH_MODE, BpfError};

/// Loads `program` and attaches it to `cgroup`, handing back its link for pinning.
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
    // The aya program types share no trait for load, attach and take_link.
    macro_rules! attached {
        ($p:expr) => {{
            $p.load().map_err(err)?;
            let id = $p.attach(cgroup, ATTACH_MODE).map_err(err)?;
            link(FdLink::try_from($p.take_link(id).map_err(err)?))
        }};
    }
    match program {
        Program::CgroupSockAddr(p) => attached!(p),
        Program::CgroupSock(p) => attached!(p),
        Program::SockOps(p) => attached!(p),
        Program::CgroupSkb(p) => {
            p.load().map_err(err)?;
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
