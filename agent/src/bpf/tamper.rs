//! Watching Tollgate's own links: a root job could detach them (BPF_LINK_DETACH),
//! replace their programs (BPF_LINK_UPDATE) or remove their pins. The agent holds every
//! link open, so a removed pin detaches nothing and is pinned again; a detached or
//! replaced link is reported (an event, a metric, and `/readyz` fails).
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    path::PathBuf,
};

use tollgate_bpf_sys::{obj_get, obj_pin, raw_bpf};

use super::{BpfError, OPTIONAL_PROGRAMS, PROGRAMS};

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The head of `struct bpf_link_info` with the cgroup member of its union.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _pad2: u32,
    _rest: [u64; 4],
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut info = LinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<LinkInfo>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: the BPF_OBJ_GET_INFO_BY_FD variant, whose info buffer outlives the call and
    // is info_len bytes long; the kernel writes at most that much.
    unsafe { raw_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    Ok(info)
}

struct Watched {
    name: &'static str,
    pin: PathBuf,
    link: OwnedFd,
    prog_id: u32,
}

pub struct Guard {
    links: Vec<Watched>,
    cgroup_id: u64,
}

impl Guard {
    /// Opens every pinned link of this install and notes its program.
    pub fn new(pin_dir: &std::path::Path, cgroup_id: u64) -> Result<Self, BpfError> {
        let names = PROGRAMS
            .iter()
            .map(|(name, pin)| (*name, *pin))
            .chain(OPTIONAL_PROGRAMS.iter().map(|(name, pin, _)| (*name, *pin)))
            .chain(super::UNIX_PROGRAMS.iter().map(|p| (p.name, p.pin)));
        let mut links = Vec::new();
        for (name, pin) in names {
            let path = pin_dir.join(pin);
            if !path.exists() {
                continue;
            }
            let link = obj_get(&path).map_err(|source| BpfError::Io {
                path: path.clone(),
                source,
            })?;
            let prog_id = link_info(link.as_fd()).map(|i| i.prog_id).unwrap_or(0);
            links.push(Watched {
                name,
                pin: path,
                link,
                prog_id,
            });
        }
        Ok(Self { links, cgroup_id })
    }

    /// What is wrong now (empty when all is well). A removed pin is pinned again.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for watched in &self.links {
            if !watched.pin.exists() {
                match obj_pin(watched.link.as_fd(), &watched.pin) {
                    Ok(()) => {
                        problems.push(format!("{}: pin removed (pinned again)", watched.name))
                    }
                    Err(error) => problems.push(format!("{}: pin removed ({error})", watched.name)),
                }
            }
            match link_info(watched.link.as_fd()) {
                Ok(info) if info.cgroup_id != self.cgroup_id => {
                    problems.push(format!("{}: detached", watched.name));
                }
                Ok(info) if info.prog_id != watched.prog_id => {
                    problems.push(format!(
                        "{}: program replaced ({} -> {})",
                        watched.name, watched.prog_id, info.prog_id
                    ));
                }
                Ok(_) => {}
                Err(error) => problems.push(format!("{}: {error}", watched.name)),
            }
        }
        problems
    }
}
