//! `cargo xtask`: setup, build, run, test (and, later, bench and vm-test).
mod bench;
mod fuzz;
mod setup;
mod test;
mod vm_test;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (idempotent): pinned nightly, bpf-linker, Debian packages.
    Setup,
    /// Build the agent (and its eBPF programs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, then run the agent in the foreground on its built-in defaults.
    Run {
        /// Arguments for `tollgate agent`, e.g. -- --config /etc/tollgate/agent.toml
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// pgbench through direct, Tollgate and pgbouncer paths, interleaved (root).
    Bench {
        /// Interleaved rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per pgbench run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// pgbench scale factor.
        #[arg(long, default_value_t = 10)]
        scale: u32,
        /// The Tollgate agents' `proxy.workers` (0: the agent's default, one per two CPUs).
        #[arg(long, default_value_t = 0)]
        workers: usize,
        /// Paths to measure besides direct (the reference): tollgate-kernel,
        /// tollgate-l4, tollgate-l7, tollgate-l7-durable, pgbouncer. Default: all.
        #[arg(long, value_delimiter = ',')]
        paths: Vec<String>,
        /// Workloads to run: select (-S -c8), connect (-C -S -c4), latency (-S -c1, the
        /// µs each path adds), dns (queries through the resolver, cached and uncached,
        /// against the upstream directly) and bulk (1 GiB over HTTP by curl). Default: all.
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        /// Another build of the agent (e.g. a checkout before a change, built with
        /// `cargo build --release`), measured as the baseline-l4 and baseline-l7 paths
        /// in the same run.
        #[arg(long)]
        baseline: Option<PathBuf>,
    },
    /// The privileged end-to-end suite on other kernels (Debian's), each in a qemu VM
    /// (root).
    VmTest {
        /// 5.10, 6.1, 6.12, 7.2 (vm-tests/kernels.toml), several (5.10,7.2), or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Only the e2e tests whose name contains PATTERN (several: comma-separated).
        #[arg(long)]
        filter: Option<String>,
        /// Each guest's time limit, in minutes.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        /// The guests' lsm= list; leave out bpf to see the agent run without BPF LSM.
        #[arg(long, default_value = vm_test::LSM)]
        lsm: String,
        /// Under TCG, emulate the guest's CPUs on one host thread: slower (the fail-closed
        /// stream test outruns it), but it never races the kernel's live patching, which
        /// QEMU's multi-threaded TCG (the default) does now and then on 7.2 (`Oops:
        /// int3` in the guest). For whole-suite runs.
        #[arg(long)]
        tcg_single: bool,
    },
    /// Fuzz the PostgreSQL wire parsers, the session tracker and a followed HTTP
    /// connection (cargo-fuzz, pinned nightly).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Only these targets (repeatable): frontend, backend, tracker, http, mcp.
        #[arg(long = "target")]
        targets: Vec<String>,
    },
    /// The differential conformance suite: each workload direct and through a Tollgate
    /// job, byte for byte (root). `cargo xtask test` runs it too.
    Conformance {
        /// A directory of *.sql workload scripts (default: tests/conformance/sql).
        #[arg(long)]
        scripts: Option<PathBuf>,
    },
    /// Setup, then every check and test: fmt, clippy (host and bpf), unit, end-to-end,
    /// conformance.
    Test {
        /// Only run end-to-end tests whose name contains this.
        #[arg(long)]
        e2e_filter: Option<String>,
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::Setup => setup::all(&root),
        Cmd::Build { release } => build(&root, release).map(|_| ()),
        Cmd::Run { args } => {
            setup::all(&root)?;
            let bin = build(&root, true)?;
            let status = Command::new(&bin)
                .arg("agent")
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            if !status.success() {
                bail!("tollgate agent exited with {status}");
            }
            Ok(())
        }
        Cmd::Bench {
            rounds,
            seconds,
            scale,
            workers,
            paths,
            workloads,
            baseline,
        } => {
            let options = bench::Options::new(
                rounds, seconds, scale, workers, &paths, &workloads, baseline,
            )?;
            setup::all(&root)?;
            bench::bench(&root, &options)
        }
        Cmd::VmTest {
            kernel,
            filter,
            minutes,
            lsm,
            tcg_single,
        } => {
            setup::all(&root)?;
            vm_test::vm_test(
                &root,
                &vm_test::Options {
                    kernel,
                    filter,
                    timeout: std::time::Duration::from_secs(minutes * 60),
                    lsm,
                    tcg_multi: !tcg_single,
                },
            )
        }
        Cmd::Fuzz { seconds, targets } => {
            setup::all(&root)?;
            fuzz::fuzz(&root, seconds, &targets)
        }
        Cmd::Conformance { scripts } => {
            setup::all(&root)?;
            test::conformance(&root, scripts.as_deref())
        }
        Cmd::Test {
            e2e_filter,
            no_lint,
        } => {
            setup::all(&root)?;
            test::all(&root, e2e_filter.as_deref(), !no_lint)
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the agent; returns the binary's path.
pub fn build(root: &Path, release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo(root);
    cmd.args(["build", "--package", "tollgate"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    Ok(root
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("tollgate"))
}

pub fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// Runs a command, echoing it, and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("spawning {}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The nightly channel pinned in ebpf/tollgate-ebpf/rust-toolchain.toml.
pub fn ebpf_toolchain(root: &Path) -> anyhow::Result<String> {
    let path = root.join("ebpf/tollgate-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .with_context(|| format!("no channel in {}", path.display()))
}

pub fn is_root() -> bool {
    // Avoids a libc dependency: /proc/self/status has the effective uid.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}
