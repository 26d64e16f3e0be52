//! The unix socket programs (cgroup/connect_unix and cgroup/sendmsg_unix, kernel 6.7+).
//! aya cannot parse their sections nor bind kfunc calls, so they are built as an object
//! of their own (ebpf/tollgate-ebpf/src/unix_main.rs) and loaded here: their maps are the
//! main object's pins, their kfunc calls are bound by the kernel's BTF, and their links
//! are pinned beside the others, so they stay attached while the agent is down.
mod elf;
mod rules;

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
};

use aya_obj::btf::BtfKind;
use tollgate_bpf_sys::{self as syscall, obj_get, obj_pin};

use elf::Reference;
pub use rules::UnixRules;

/// The object built by agent/build.rs.
static UNIX_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-unix"));

/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// One unix program: its section, its name (for errors and the tamper guard), its link
/// pin and its attach type.
pub struct UnixProgram {
    pub section: &'static str,
    pub name: &'static str,
    pub pin: &'static str,
    pub attach_type: u32,
}

/// `BPF_CGROUP_UNIX_CONNECT` and `BPF_CGROUP_UNIX_SENDMSG` (kernel 6.7+).
pub const UNIX_PROGRAMS: [UnixProgram; 2] = [
    UnixProgram {
        section: "cgroup/connect_unix",
        name: "connect_unix",
        pin: "link_connect_unix",
        attach_type: 49,
    },
    UnixProgram {
        section: "cgroup/sendmsg_unix",
        name: "sendmsg_unix",
        pin: "link_sendmsg_unix",
        attach_type: 50,
    },
];

#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    #[error("the unix socket object: {0}")]
    Object(String),
    #[error("the pinned map {name} for the unix programs: {source}")]
    Map {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("the kernel has no kfunc {name} in its BTF: {detail}")]
    Kfunc { name: String, detail: String },
    #[error("the kernel refused to load {name}: {source}{}", verifier_log(log))]
    Load {
        name: &'static str,
        #[source]
        source: io::Error,
        log: String,
    },
    #[error("attaching {name}: {source}")]
    Attach {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("pinning the link of {name}: {source}")]
    Pin {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

fn verifier_log(log: &str) -> String {
    let tail: Vec<&str> = log.lines().rev().take(8).collect();
    if tail.is_empty() {
        String::new()
    } else {
        let lines: Vec<&str> = tail.into_iter().rev().collect();
        format!(" (verifier: {})", lines.join(" | "))
    }
}

/// Whether both unix links are pinned and live.
pub fn pinned(pin_dir: &Path) -> bool {
    UNIX_PROGRAMS
        .iter()
        .all(|p| obj_get(&pin_dir.join(p.pin)).is_ok())
}

/// The unix programs, loaded (verified) and not yet attached.
pub struct Loaded {
    programs: Vec<(&'static UnixProgram, OwnedFd)>,
}

/// Loads the unix programs. The maps they use must already be pinned in `pin_dir`.
pub fn load(pin_dir: &Path) -> Result<Loaded, UnixError> {
    let sections: Vec<&str> = UNIX_PROGRAMS.iter().map(|p| p.section).collect();
    let programs = elf::programs(UNIX_OBJECT, &sections)?;
    let mut maps: Vec<(String, OwnedFd)> = Vec::new();
    let mut btf: Option<aya::Btf> = None;
    let mut loaded = Vec::with_capacity(UNIX_PROGRAMS.len());
    for (spec, mut code) in UNIX_PROGRAMS.iter().zip(programs) {
        for (offset, reference) in std::mem::take(&mut code.references) {
            match reference {
                Reference::Map(name) => {
                    let fd = match maps.iter().find(|(n, _)| *n == name) {
                        Some((_, fd)) => fd.as_raw_fd(),
                        None => {
                            let fd =
                                obj_get(&pin_dir.join(&name)).map_err(|source| UnixError::Map {
                                    name: name.clone(),
                                    source,
                                })?;
                            let raw = fd.as_raw_fd();
                            maps.push((name, fd));
                            raw
                        }
                    };
                    elf::bind_map(&mut code.insns, offset, fd)?;
                }
                Reference::Kfunc(name) => {
                    if btf.is_none() {
                        btf = Some(aya::Btf::from_sys_fs().map_err(|e| UnixError::Kfunc {
                            name: name.clone(),
                            detail: e.to_string(),
                        })?);
                    }
                    let id = btf
                        .as_ref()
                        .map(|b| b.id_by_type_name_kind(&name, BtfKind::Func))
                        .transpose()
                        .map_err(|e| UnixError::Kfunc {
                            name: name.clone(),
                            detail: e.to_string(),
                        })?
                        .unwrap_or(0);
                    elf::bind_kfunc(&mut code.insns, offset, id)?;
                }
            }
        }
        let prog = syscall::prog_load(
            PROG_TYPE_CGROUP_SOCK_ADDR,
            spec.attach_type,
            spec.name,
            &code.insns,
        )
        .map_err(|refused| UnixError::Load {
            name: spec.name,
            source: refused.error,
            log: refused.log,
        })?;
        loaded.push((spec, prog));
    }
    Ok(Loaded { programs: loaded })
}

/// Attaches the loaded programs to `cgroup` and pins their links. On error nothing of
/// theirs stays attached.
pub fn attach(loaded: Loaded, pin_dir: &Path, cgroup: &File) -> Result<(), UnixError> {
    let mut links: Vec<(&'static str, &'static str, OwnedFd)> = Vec::new();
    for (spec, prog) in &loaded.programs {
        let link = syscall::link_create(prog.as_fd(), cgroup.as_fd(), spec.attach_type).map_err(
            |source| UnixError::Attach {
                name: spec.name,
                source,
            },
        )?;
        links.push((spec.name, spec.pin, link));
    }
    // Pinned only once both are attached: a half set is not left behind.
    for (name, pin, link) in &links {
        obj_pin(link.as_fd(), &pin_dir.join(pin))
            .map_err(|source| UnixError::Pin { name, source })?;
    }
    Ok(())
}
