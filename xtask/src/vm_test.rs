//! `cargo xtask vm-test`: the privileged end-to-end suite on other kernels, each booted
//! under qemu with its Debian package's kernel, the host's root shared read-only over
//! 9p, and `tollgate-vm-init` (vm-tests/) as PID 1.
//!
//! Acceleration: KVM when /dev/kvm can boot a stock kernel. A host whose /dev/kvm is
//! PVM (the `kvm_pvm` module: nested virtualisation for PVM-enabled guest kernels only,
//! on which a Debian kernel hangs right after its boot stub) runs the guests under TCG.
mod initramfs;
mod kernel;

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, run};

/// Guest memory and CPUs (docs/kernels.md says why).
const MEMORY: &str = "4G";
const CPUS: &str = "2";

/// The LSMs of a guest: Debian's list, with bpf.
pub const LSM: &str = "landlock,lockdown,yama,integrity,apparmor,bpf";

pub struct Options {
    /// 5.10, 6.1, 6.12, 7.2 or all.
    pub kernel: String,
    pub filter: Option<String>,
    /// The guests' time limit each.
    pub timeout: Duration,
    /// The guests' `lsm=` (without bpf, the agent runs without BPF LSM and says so).
    pub lsm: String,
    /// Multi-threaded TCG (faster; now and then races a 7.2 guest kernel's live
    /// patching). `--tcg-single` turns it off.
    pub tcg_multi: bool,
}

/// One kernel's outcome.
struct Outcome {
    release: String,
    passed: u64,
    failed: u64,
    skipped: u64,
    /// Tests that skipped on a gap the agent reported: feature -> (count, what it needs).
    skips: std::collections::BTreeMap<String, (u64, String)>,
    /// init: success was printed.
    success: bool,
    /// The guest kernel oopsed or panicked before init started: nothing of ours ran.
    boot_crash: bool,
    note: String,
}

/// How often a guest is booted again when its kernel crashes before init starts. Under
/// TCG a kernel's boot-time code patching (int3 text poking) can race the other vCPU's
/// stale translations: seen once in CI as `Oops: int3` in `sched_clock_cpu` on 7.2.13,
/// which booted cleanly in every run before and after. That crash is the emulator's,
/// not the suite's; a crash once the suite runs is never retried.
const BOOT_ATTEMPTS: u32 = 3;

pub fn vm_test(root: &Path, options: &Options) -> anyhow::Result<()> {
    let pins = kernel::pins(root)?;
    let chosen: Vec<_> = match options.kernel.as_str() {
        "all" => pins.clone(),
        "host" => bail!(
            "--kernel host: this host has no kernel image on disk to boot (its kernel \
             comes from the hypervisor); the host's kernel is what `cargo xtask test` runs on"
        ),
        names => names
            .split(',')
            .map(|name| {
                pins.iter()
                    .find(|p| p.name == name)
                    .cloned()
                    .with_context(|| {
                        let known: Vec<_> = pins.iter().map(|p| p.name.as_str()).collect();
                        format!(
                            "--kernel {name}: not in vm-tests/kernels.toml (known: {}, all; \
                             several: 5.10,7.2)",
                            known.join(", ")
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let init = build_init(root)?;
    let (e2e, agent, helpers) = build_tests(root)?;
    // The guests run copies: they read the host's files over 9p, and a binary rebuilt
    // on the host while a guest runs it is changed under it (seen as segfaults and
    // SIGILLs at garbage addresses in the agent, the CLI and the test binary).
    let snapshot = Snapshot::take(root, [&e2e, &agent].into_iter().chain(&helpers))?;
    let (e2e, agent) = (snapshot.path(&e2e), snapshot.path(&agent));
    let accel = accelerator();
    eprintln!("xtask: vm-test: qemu with {accel}");
    let logs = root.join("target/vm-tests/logs");
    fs::create_dir_all(&logs)?;
    let mut outcomes = Vec::new();
    for pin in &chosen {
        let kernel = kernel::fetch(root, pin)?;
        let image = initrd(
            root,
            &kernel,
            &init,
            &guest_command(root, &e2e, &agent, options, accel),
        )?;
        let log = logs.join(format!("{}.log", pin.name));
        let mut attempt = 1;
        let outcome = loop {
            let mut outcome = boot(&kernel, &image, accel, &log, options)?;
            if !outcome.boot_crash || attempt == BOOT_ATTEMPTS {
                if attempt > 1 {
                    outcome.note = format!(
                        "booted {attempt} times: the kernel crashed before init {} time(s), \
                         logs {}.crash-N.log{}",
                        attempt - 1,
                        pin.name,
                        if outcome.note.is_empty() { "" } else { ", " },
                    ) + &outcome.note;
                }
                break outcome;
            }
            let kept = logs.join(format!("{}.crash-{attempt}.log", pin.name));
            fs::rename(&log, &kept)?;
            eprintln!(
                "xtask: vm-test: {} crashed before init started (log {}); booting again",
                kernel.release,
                kept.display()
            );
            attempt += 1;
        };
        outcomes.push(outcome);
    }
    let mut failed = false;
    for o in &outcomes {
        let ok = o.success && o.failed == 0;
        failed |= !ok;
        println!(
            "kernel {}: {} passed, {} failed, {} skipped{}",
            o.release,
            o.passed,
            o.failed,
            o.skipped,
            if o.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", o.note)
            }
        );
    }
    if failed {
        bail!(
            "vm-test failed on at least one kernel (logs in {})",
            logs.display()
        );
    }
    Ok(())
}

/// The guest init, static so that it runs in an initramfs without a libc.
fn build_init(root: &Path) -> anyhow::Result<PathBuf> {
    let target = "x86_64-unknown-linux-gnu";
    let dir = root.join("target/vm-init");
    run(cargo(root)
        .args([
            "build",
            "--release",
            "--package",
            "tollgate-vm-tests",
            "--target",
            target,
        ])
        .arg("--target-dir")
        .arg(&dir)
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        ))?;
    Ok(dir.join(target).join("release/tollgate-vm-init"))
}

/// The e2e test executable and the agent it tests, built on the host.
/// The binaries a run's guests execute, copied out of the target directory for the run,
/// with the e2e package's helper binaries (`TOLLGATE_E2E_HELPERS`); removed when the
/// run ends.
struct Snapshot {
    dir: PathBuf,
}

impl Snapshot {
    fn take<'a>(
        root: &Path,
        binaries: impl IntoIterator<Item = &'a PathBuf>,
    ) -> anyhow::Result<Self> {
        let dir = root
            .join("target/vm-tests/bin")
            .join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let snapshot = Self { dir };
        for binary in binaries {
            let to = snapshot.path(binary);
            fs::copy(binary, &to)
                .with_context(|| format!("copying {} to {}", binary.display(), to.display()))?;
        }
        Ok(snapshot)
    }

    /// Where the copy of `binary` is.
    fn path(&self, binary: &Path) -> PathBuf {
        self.dir
            .join(binary.file_name().unwrap_or(binary.as_os_str()))
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Builds the agent and the e2e tests: the e2e binary, the agent, and the e2e package's
/// helper binaries (its `[[bin]]`s), as cargo names them.
fn build_tests(root: &Path) -> anyhow::Result<(PathBuf, PathBuf, Vec<PathBuf>)> {
    let agent = crate::build(root, false)?;
    let out = cargo(root)
        .args([
            "test",
            "--package",
            "tollgate-e2e",
            "--test",
            "e2e",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("building the e2e tests")?;
    if !out.status.success() {
        bail!("building the e2e tests failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // Executables cargo built whose artifact line says all of `marks` (the package's
    // own: the dependencies are libraries).
    let executables = |marks: &'static [&'static str]| {
        text.lines()
            .filter(move |l| {
                l.contains("\"reason\":\"compiler-artifact\"")
                    && marks.iter().all(|mark| l.contains(mark))
            })
            .filter_map(|l| {
                let rest = l.split("\"executable\":\"").nth(1)?;
                Some(PathBuf::from(rest.split('"').next()?))
            })
    };
    let e2e = executables(&["\"kind\":[\"test\"]", "\"name\":\"e2e\""])
        .next()
        .context("cargo named no e2e test executable")?;
    let helpers = executables(&["\"kind\":[\"bin\"]"]).collect();
    Ok((e2e, agent, helpers))
}

/// The shell command the guest runs: the suite, as `cargo xtask test` runs it.
/// A guest gets what a runner host has besides loopback: an interface with an address
/// and a default route (a dummy one, so nothing leaves the guest). Without it, glibc's
/// `getaddrinfo(AI_ADDRCONFIG)` (getent, curl) finds no configured IPv4 address and
/// resolves nothing, and the host's nameserver has no route.
const UPLINK: &str = "ip link add uplink0 type dummy && ip addr add 10.0.2.15/24 dev uplink0 && \
                      ip link set uplink0 up && ip route add default dev uplink0";

/// The writable directories of the PostgreSQL 17 chroot that `cargo xtask setup` makes
/// under the workspace (the server's data directory lives in its var/tmp): the guest
/// sees the workspace read-only, so they get a fresh tmpfs, as the host's own do.
const CHROOT_SCRATCH: &[&str] = &["tmp", "var/tmp", "run"];

fn guest_command(root: &Path, e2e: &Path, agent: &Path, options: &Options, accel: &str) -> String {
    let filter = options
        .filter
        .as_deref()
        .map(|f| {
            // Several patterns, comma-separated: a test runs if it matches any.
            f.split(',')
                .map(|p| format!(" '{}'", p.replace('\'', "")))
                .collect::<String>()
        })
        .unwrap_or_default();
    format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
         HOME=/root CI=true TOLLGATE_TEST_TIME_SCALE={scale} TOLLGATE_BIN='{agent}' TOLLGATE_E2E_HELPERS='{helpers}' && ip link set lo up && {uplink} && {scratch} && \
         cd '{tests}' && '{e2e}' --test-threads=1 --nocapture{filter}",
        tests = root.join("tests").display(),
        agent = agent.display(),
        // Under TCG the guest runs several times slower than the host: the tests' fixed
        // waits for an agent to start, and their "promptly" bounds, grow with it.
        scale = match (accel, options.tcg_multi) {
            ("kvm", _) => 1,
            (_, true) => 4,
            (_, false) => 6,
        },
        helpers = agent.parent().unwrap_or(Path::new("/")).display(),
        uplink = UPLINK,
        scratch = CHROOT_SCRATCH
            .iter()
            .map(|dir| {
                let dir = root.join(crate::setup::PG17_ROOT).join(dir);
                format!(
                    "{{ [ ! -d '{d}' ] || mount -t tmpfs -o mode=1777 tmpfs '{d}'; }}",
                    d = dir.display()
                )
            })
            .collect::<Vec<_>>()
            .join(" && "),
        e2e = e2e.display(),
    )
}

fn initrd(root: &Path, kernel: &kernel::Kernel, init: &Path, cmd: &str) -> anyhow::Result<PathBuf> {
    let mut archive = initramfs::Archive::new();
    for dir in ["/", "/modules", "/proc", "/sys", "/dev", "/host", "/keep"] {
        archive.dir(dir);
    }
    // The workspace stays visible in the guest, even under a directory that gets a
    // fresh tmpfs there (a checkout in /tmp or /root).
    archive.file("/keep.path", root.display().to_string().as_bytes());
    archive.executable(
        "/init",
        &fs::read(init).with_context(|| init.display().to_string())?,
    );
    archive.file("/cmd", cmd.as_bytes());
    for (i, (name, bytes)) in kernel::guest_modules(kernel)?.into_iter().enumerate() {
        archive.file(&format!("/modules/{i:02}-{name}.ko"), &bytes);
    }
    let path = root
        .join("target/vm-tests")
        .join(format!("initrd-{}.cpio", kernel.release));
    let mut file = fs::File::create(&path)?;
    archive.finish(&mut file)?;
    file.flush()?;
    Ok(path)
}

fn accelerator() -> &'static str {
    let kvm = Path::new("/dev/kvm").exists();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    if kvm && !pvm { "kvm" } else { "tcg" }
}

/// Boots one guest, echoing and logging its console, and reads the suite's results.
fn boot(
    kernel: &kernel::Kernel,
    initrd: &Path,
    accel: &str,
    log: &Path,
    options: &Options,
) -> anyhow::Result<Outcome> {
    let timeout = options.timeout;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .args(["-m", MEMORY, "-smp", CPUS])
    .args(if accel == "kvm" {
        ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    } else if options.tcg_multi {
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    } else {
        // One host thread for every guest CPU: QEMU then never runs a CPU's stale
        // translation of code another CPU is patching (with thread=multi, a guest
        // kernel's text_poke left an int3 that another CPU hit: `Oops: int3`).
        ["-accel", "tcg,thread=single", "-cpu", "max"]
    })
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .arg("-append")
    .arg(format!("console=ttyS0 panic=-1 quiet lsm={}", options.lsm))
    .args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    eprintln!("xtask: vm-test: booting {} ({accel})", kernel.release);
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let mut out = fs::File::create(log)?;
    let mut outcome = Outcome {
        release: kernel.release.clone(),
        passed: 0,
        failed: 0,
        skipped: 0,
        skips: Default::default(),
        success: false,
        boot_crash: false,
        note: String::new(),
    };
    let mut init_started = false;
    let started = Instant::now();
    let pid = child.id();
    // A watchdog: qemu is killed when the guest outlives its time. qemu is reaped only
    // after the watchdog has stopped, so its pid cannot have been reused by then.
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let finished = finished.clone();
        std::thread::spawn(move || {
            let deadline = started + timeout;
            while Instant::now() < deadline {
                if finished.load(std::sync::atomic::Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            // SAFETY: qemu is our unreaped child; SIGKILL ends it.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            true
        })
    };
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            let line = line.trim_end_matches('\r');
            println!("[{}] {line}", kernel.release);
            writeln!(out, "{line}")?;
            if let Some(rest) = line.strip_prefix("test result: ") {
                outcome.passed += crate::test::count(rest, " passed");
                outcome.failed += crate::test::count(rest, " failed");
                outcome.skipped += crate::test::count(rest, " ignored");
            } else if let Some((feature, needs)) = skip_of(line) {
                let entry = outcome.skips.entry(feature).or_insert((0, needs));
                entry.0 += 1;
            } else if line.ends_with("init: success") {
                outcome.success = true;
            } else if let Some(release) = init_kernel(line) {
                outcome.release = release.to_owned();
                init_started = true;
            } else if !init_started && kernel_crashed(line) {
                outcome.boot_crash = true;
            }
        }
    }
    // Its console closed: qemu has exited (or was killed), and is not reaped yet.
    finished.store(true, std::sync::atomic::Ordering::Relaxed);
    let timed_out = watchdog.join().unwrap_or(false);
    let _ = child.wait();
    // A test that skips on a reported gap returns early, which libtest counts as passed.
    let skips: u64 = outcome.skips.values().map(|(n, _)| n).sum();
    outcome.passed = outcome.passed.saturating_sub(skips);
    outcome.skipped += skips;
    if timed_out {
        outcome.success = false;
        outcome.note = format!("timed out after {timeout:?}");
    } else if !outcome.success {
        outcome.note = "init: failure".to_owned();
    }
    let reasons: Vec<String> = outcome
        .skips
        .iter()
        .map(|(feature, (n, needs))| format!("{n} on {feature}: needs {needs}"))
        .collect();
    outcome.note = [
        outcome.note.clone(),
        reasons.join("; "),
        format!("{:.0} s under {accel}", started.elapsed().as_secs_f64()),
    ]
    .into_iter()
    .filter(|n| !n.is_empty())
    .collect::<Vec<_>>()
    .join(", ");
    Ok(outcome)
}

/// The release in init's first line. The console may put terminal escapes (SeaBIOS's
/// screen clearing) before it on the same line: a crash after it is the suite's, not a
/// boot crash to retry.
fn init_kernel(line: &str) -> Option<&str> {
    line.find("init: kernel ")
        .map(|at| &line[at + "init: kernel ".len()..])
}

/// A kernel's own report of a crash on the console.
fn kernel_crashed(line: &str) -> bool {
    line.contains("Kernel panic - not syncing") || line.contains("] Oops: ")
}

/// A test's skip line (tests/src/agent.rs `Agent::covers`): the feature the agent
/// reported missing, and what it needs.
fn skip_of(line: &str) -> Option<(String, String)> {
    // Anywhere in the line: libtest prints `test NAME ... ` before the test's own output.
    const MARK: &str = "SKIPPED: the agent reports that kernel ";
    let rest = &line[line.find(MARK)? + MARK.len()..];
    let (_, rest) = rest.split_once(": ")?;
    let (feature, rest) = rest.split_once(" needs ")?;
    let needs = rest.split_once("; ").map_or(rest, |(needs, _)| needs);
    Some((feature.to_owned(), needs.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::skip_of;

    #[test]
    fn a_skip_line_names_the_feature_and_what_it_needs() {
        let line = "SKIPPED: the agent reports that kernel 6.1.0-50-amd64: unix_sockets needs \
                    cgroup/connect_unix programs: Linux 6.7+; connects are not decided (EINVAL)";
        assert_eq!(
            skip_of(line),
            Some((
                "unix_sockets".to_owned(),
                "cgroup/connect_unix programs: Linux 6.7+".to_owned()
            ))
        );
        assert_eq!(skip_of("test foo ... ok"), None);
        let prefixed = format!("test unix::a ... {line}");
        assert_eq!(skip_of(&prefixed), skip_of(line));
    }
    #[test]
    fn init_is_recognised_after_the_consoles_escapes() {
        assert_eq!(
            super::init_kernel("\u{1b}c\u{1b}[?7l\u{1b}[2Jinit: kernel 7.2.13+deb14-amd64"),
            Some("7.2.13+deb14-amd64")
        );
        assert_eq!(
            super::init_kernel("init: kernel 6.1.0-50"),
            Some("6.1.0-50")
        );
        assert_eq!(
            super::init_kernel("[    1.0] Run /init as init process"),
            None
        );
    }

    #[test]
    fn a_kernel_crash_is_recognised_on_the_console() {
        assert!(super::kernel_crashed(
            "\u{1b}c[    2.260541] Oops: int3: 0000 [#1] SMP NOPTI"
        ));
        assert!(super::kernel_crashed(
            "[    2.268051] Kernel panic - not syncing: Fatal exception in interrupt"
        ));
        assert!(!super::kernel_crashed("test oops::a ... ok"));
    }
    #[test]
    fn counts_a_colored_result_line() {
        let line = "\u{1b}[31mFAILED\u{1b}[m. 15 passed; 2 failed; 3 ignored; 0 measured";
        assert_eq!(crate::test::count(line, " passed"), 15);
        assert_eq!(crate::test::count(line, " failed"), 2);
        assert_eq!(crate::test::count(line, " ignored"), 3);
    }
}
