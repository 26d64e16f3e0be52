//! `tollgate-vm-init`: PID 1 of a `cargo xtask vm-test` guest.
//!
//! The initramfs that xtask builds holds this binary as `/init`, the kernel modules the
//! guest needs as `/modules/NN-name.ko` (loaded in name order, dependencies first), and
//! the command to run as `/cmd`. The init mounts what a runner host has (proc, sysfs,
//! devtmpfs, bpffs, cgroup2, securityfs, tracefs), mounts the host's root read-only over
//! 9p as `/host` with fresh tmpfs on its writable directories, holds the cgroup-BPF
//! static keys on (keys.rs), and runs `/cmd` with `/bin/sh` chrooted there. It prints `init: success` or `init: failure` (the line the
//! host reads) and powers the guest off.
use std::{fs, io::Write as _, os::unix::process::CommandExt as _, path::Path, process::Command};

mod keys;
mod sys;

/// Mounts below the host's root, in order: (source, target, fstype, options).
const HOST_MOUNTS: &[(&str, &str, &str, &str)] = &[
    ("proc", "/host/proc", "proc", ""),
    ("sysfs", "/host/sys", "sysfs", ""),
    ("devtmpfs", "/host/dev", "devtmpfs", ""),
    ("devpts", "/host/dev/pts", "devpts", ""),
    ("shm", "/host/dev/shm", "tmpfs", ""),
    ("tmpfs", "/host/tmp", "tmpfs", "mode=1777"),
    ("tmpfs", "/host/var/tmp", "tmpfs", "mode=1777"),
    ("tmpfs", "/host/run", "tmpfs", "mode=755"),
    ("tmpfs", "/host/root", "tmpfs", "mode=700"),
    ("bpf", "/host/sys/fs/bpf", "bpf", ""),
    ("cgroup2", "/host/sys/fs/cgroup", "cgroup2", ""),
    ("securityfs", "/host/sys/kernel/security", "securityfs", ""),
    ("tracefs", "/host/sys/kernel/tracing", "tracefs", ""),
];

fn main() {
    let ok = match run() {
        Ok(ok) => ok,
        Err(error) => {
            println!("init: {error}");
            false
        }
    };
    println!("init: {}", if ok { "success" } else { "failure" });
    let _ = std::io::stdout().flush();
    sys::power_off();
}

fn run() -> Result<bool, String> {
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        mount(source, target, fstype, "", 0)?;
    }
    load_modules(Path::new("/modules"))?;
    mount(
        "hostroot",
        "/host",
        "9p",
        "trans=virtio,version=9p2000.L,msize=262144,cache=loose",
        libc::MS_RDONLY,
    )?;
    // The workspace (`/keep.path`), held at /keep while tmpfs covers the host's
    // writable directories, then bound back where it was: a checkout under /tmp or
    // /root stays visible.
    let keep = fs::read_to_string("/keep.path").unwrap_or_default();
    let keep = keep.trim();
    let kept =
        !keep.is_empty() && mount(&format!("/host{keep}"), "/keep", "", "", libc::MS_BIND).is_ok();
    for (source, target, fstype, options) in HOST_MOUNTS {
        // A file system this kernel lacks (tracefs on an old one) is the tests' to find.
        if let Err(error) = mount(source, target, fstype, options, 0) {
            println!("init: {error}");
        }
    }
    // Held until the suite ends (see keys.rs: the emulator's race with the kernel's
    // text rewriting).
    let (held, refused) = keys::hold("/host/sys/fs/cgroup");
    println!(
        "init: cgroup-BPF static keys held on for {} attach types{}",
        held.len(),
        if refused.is_empty() {
            String::new()
        } else {
            format!(" (refused: {})", refused.join("; "))
        }
    );
    if kept {
        // On a tmpfs the directory is made; on the read-only host root it exists.
        mount("/keep", &format!("/host{keep}"), "", "", libc::MS_BIND)?;
    }
    let cmd = fs::read_to_string("/cmd").map_err(|e| format!("reading /cmd: {e}"))?;
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("init: kernel {}", release.trim());
    let mut child = Command::new("/bin/sh");
    child.arg("-c").arg(&cmd).current_dir("/");
    // SAFETY: chroot is async-signal-safe, and runs in the child before exec.
    unsafe {
        child.pre_exec(|| sys::chroot("/host"));
    }
    let child = child.spawn().map_err(|e| format!("running /cmd: {e}"))?;
    let ok = sys::reap_until(child.id());
    report_traps();
    Ok(ok)
}

/// Prints what the kernel logged of processes it killed for a fault (an invalid opcode,
/// a segfault, ...): the console's `quiet` level hides those lines, and they name the
/// instruction's address in its binary.
fn report_traps() {
    use std::io::{ErrorKind, Read as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(mut kmsg) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return;
    };
    // One record per read; EAGAIN at the end of the buffer.
    let mut record = vec![0_u8; 8192];
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => return,
            Ok(n) => {
                let line = String::from_utf8_lossy(&record[..n]);
                let text = line.split_once(';').map_or(line.as_ref(), |(_, t)| t);
                if is_trap(text) {
                    println!("init: kernel: {}", text.trim_end());
                }
            }
            // A record overwritten while reading: go on with the next.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => return,
        }
    }
}

/// A kernel line about a user process killed for a fault.
fn is_trap(text: &str) -> bool {
    text.starts_with("traps: ") || text.contains(" segfault at ") || text.contains("invalid opcode")
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    options: &str,
    flags: libc::c_ulong,
) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    sys::mount(source, target, fstype, options, flags)
        .map_err(|e| format!("mounting {fstype} on {target}: {e}"))
}

/// Loads `dir`'s modules in name order (xtask numbers them dependencies first).
fn load_modules(dir: &Path) -> Result<(), String> {
    let mut names: Vec<_> = match fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(_) => return Ok(()),
    };
    names.sort();
    for path in names {
        let file = fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        match sys::finit_module(&file) {
            Ok(()) => {}
            // Built into this kernel, or loaded as another's dependency.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(format!("loading {}: {e}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn fault_lines_are_told_from_others() {
        assert!(super::is_trap(
            "traps: tollgate[231] trap invalid opcode ip:55d0c0a1b2c3 sp:7ffd0 error:0 in tollgate[55d0c0000000+1000000]"
        ));
        assert!(super::is_trap(
            "python3[77]: segfault at 0 ip 00007f sp 00007ffe error 4 in libc.so.6"
        ));
        assert!(!super::is_trap("virtio_net virtio0: eth0: renamed"));
    }
}
