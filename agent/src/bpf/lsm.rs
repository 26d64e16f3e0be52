//! The optional BPF LSM programs: a job's socket() of a family off its allow list is
//! refused in the kernel where bpf is an active LSM (Linux 6.0+ booted with `bpf` in
//! `lsm=`). Elsewhere the socket scan finds and kills the holders, and the agent
//! reports the gap.
use std::{fs, path::Path};

use aya::programs::{
    Program,
    links::{FdLink, PinnedLink},
};

use super::BpfError;

/// The programs: the function, its link pin and the LSM hook.
pub(super) const OPTIONAL_PROGRAMS: [(&str, &str, &str); 1] = [(
    "socket_post_create",
    "link_socket_post_create",
    "socket_post_create",
)];

/// Attaches and pins every program to `cgroup`; false (with the gap reported) when this
/// kernel cannot run one. An lsm_cgroup program attaches even where bpf is not an
/// active LSM, and then never runs: only the kernel's list of active LSMs says it will.
pub(super) fn attach(
    ebpf: &mut aya::Ebpf,
    cgroup: &fs::File,
    pin_dir: &Path,
) -> Result<bool, BpfError> {
    let active = crate::features::bpf_lsm_active();
    let mut covered = true;
    for (name, pin, hook) in OPTIONAL_PROGRAMS {
        let attached = active
            .clone()
            .and_then(|()| attach_lsm_cgroup(ebpf, name, hook, cgroup).map_err(|e| e.to_string()));
        match attached {
            Ok(link) => {
                link.pin(pin_dir.join(pin))
                    .map_err(|source| BpfError::Pin { name, source })?;
            }
            Err(error) => {
                crate::features::missing(
                    "socket_families",
                    "BPF LSM cgroup programs (lsm_cgroup/socket_post_create): Linux 6.0+ \
                     booted with `bpf` in lsm=",
                    "socket() of families other than IPv4 and IPv6 (AF_PACKET, AF_VSOCK, \
                     raw sockets) is not refused in the kernel; the socket scan finds and \
                     kills their holders instead",
                    format!("{name}: {error}"),
                );
                covered = false;
            }
        }
    }
    Ok(covered)
}

/// Whether an earlier agent's programs are pinned in `pin_dir`, and run here.
pub(super) fn pinned(pin_dir: &Path) -> bool {
    crate::features::bpf_lsm_active().is_ok()
        && OPTIONAL_PROGRAMS.iter().all(|(_, pin, _)| {
            let pin = pin_dir.join(pin);
            pin.exists() && PinnedLink::from_pin(&pin).is_ok()
        })
}

fn attach_lsm_cgroup(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    hook: &str,
    cgroup: &fs::File,
) -> Result<FdLink, BpfError> {
    let err = |source| BpfError::Program { name, source };
    let btf = aya::Btf::from_sys_fs().map_err(|e| err(aya::programs::ProgramError::Btf(e)))?;
    let program = ebpf.program_mut(name).ok_or(BpfError::Missing(name))?;
    let Program::LsmCgroup(p) = program else {
        return Err(err(aya::programs::ProgramError::UnexpectedProgramType));
    };
    p.load(hook, &btf).map_err(err)?;
    let id = p.attach(cgroup).map_err(err)?;
    let link = p.take_link(id).map_err(err)?;
    Ok(FdLink::from(link))
}
