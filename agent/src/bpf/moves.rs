//! The cgroup-move tracepoint: reports every task moved between cgroups while the agent
//! runs, so that a job's process that leaves its job is killed at once.
use std::{io, path::Path};

use aya::{EbpfLoader, programs::Program};

use super::EBPF_OBJECT;

/// The tracepoint program that reports cgroup moves, attached for as long as the agent
/// runs (it is not pinned: without the agent there is no one to act on its events).
pub struct MovesWatch {
    _ebpf: aya::Ebpf,
}

/// Loads and attaches the cgroup-move tracepoint; None (with a warning) where the kernel
/// or its tracefs does not allow it.
pub fn watch_moves(pin_dir: &Path) -> Option<MovesWatch> {
    let attach = || -> Result<aya::Ebpf, String> {
        ensure_tracefs()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(EBPF_OBJECT)
            .map_err(|e| e.to_string())?;
        let program = ebpf
            .program_mut("cgroup_attach_task")
            .ok_or("no cgroup_attach_task program")?;
        let Program::TracePoint(tp) = program else {
            return Err("cgroup_attach_task is not a tracepoint program".to_owned());
        };
        tp.load().map_err(|e| e.to_string())?;
        tp.attach("cgroup", "cgroup_attach_task")
            .map_err(|e| e.to_string())?;
        Ok(ebpf)
    };
    match attach() {
        Ok(ebpf) => Some(MovesWatch { _ebpf: ebpf }),
        Err(error) => {
            crate::features::missing(
                "cgroup_moves",
                "a BPF tracepoint program on cgroup:cgroup_attach_task, and tracefs",
                "a process that leaves its job is found by the job watcher's next scan, \
                 not at once",
                error,
            );
            None
        }
    }
}

/// Mounts tracefs at /sys/kernel/tracing when nothing is mounted there.
fn ensure_tracefs() -> Result<(), String> {
    let path = Path::new("/sys/kernel/tracing");
    if path.join("events").exists() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        path,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| {
        format!(
            "mounting tracefs at {}: {}",
            path.display(),
            io::Error::from(errno)
        )
    })
}
