//! `cargo xtask fuzz`: the cargo-fuzz targets of the PostgreSQL wire parsers, the
//! session tracker and a followed HTTP connection, each run for a while on the pinned
//! nightly, with their exec counts reported.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{ebpf_toolchain, run};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub const TARGETS: [&str; 5] = ["frontend", "backend", "tracker", "http", "mcp"];

/// Runs `only` (every target when empty) for `seconds` each.
pub fn fuzz(root: &Path, seconds: u64, only: &[String]) -> anyhow::Result<()> {
    if let Some(unknown) = only.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!("--target {unknown}: expected one of {}", TARGETS.join(", "));
    }
    let nightly = ebpf_toolchain(root)?;
    cargo_fuzz()?;
    let dir = root.join("fuzz");
    let mut summary = Vec::new();
    let chosen = TARGETS
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == *t));
    for &target in chosen {
        std::fs::create_dir_all(dir.join("corpus").join(target))?;
        eprintln!("xtask: fuzz: {target} for {seconds} s");
        let out = Command::new("cargo")
            .current_dir(&dir)
            .arg(format!("+{nightly}"))
            .args(["fuzz", "run", target, "--", "-print_final_stats=1"])
            .arg(format!("-max_total_time={seconds}"))
            .output()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned();
        let outcome = if out.status.success() {
            "no crash"
        } else {
            "FAILED"
        };
        summary.push(format!("{target}: {runs} execs in {seconds} s, {outcome}"));
        if !out.status.success() {
            eprintln!("{log}");
            bail!("fuzz target {target} failed; see fuzz/artifacts/{target}/");
        }
    }
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

fn cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)
        });
    if installed {
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}
