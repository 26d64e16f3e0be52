//! `cargo xtask test`: fmt, clippy (host and bpf target), unit tests, then the privileged
//! end-to-end suite (serially: it shares kernel state).
use std::path::Path;

use anyhow::bail;

use crate::{build, cargo, ebpf_toolchain, in_ci, is_root, run};

pub fn all(root: &Path, e2e_filter: Option<&str>, lint: bool) -> anyhow::Result<()> {
    if lint {
        run(cargo(root).args(["fmt", "--all", "--", "--check"]))?;
        run(cargo(root).args([
            "clippy",
            "--workspace",
            "--exclude",
            "tollgate-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        let nightly = ebpf_toolchain(root)?;
        run(std::process::Command::new("rustup")
            .current_dir(root)
            .args([
                "run",
                &nightly,
                "cargo",
                "clippy",
                "--package",
                "tollgate-ebpf",
            ])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
            ])
            .args(["--", "-D", "warnings"])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER"))?;
    }
    run(cargo(root).args([
        "test",
        "--workspace",
        "--exclude",
        "tollgate-ebpf",
        "--exclude",
        "tollgate-e2e",
    ]))?;

    if !is_root() {
        if in_ci() {
            bail!("the end-to-end tests need root (CAP_BPF, cgroups); CI=true forbids skipping");
        }
        eprintln!(
            "xtask: SKIPPED the end-to-end tests: they need root. Run `sudo cargo xtask test`."
        );
        return Ok(());
    }
    let bin = build(root, false)?;
    let mut cmd = cargo(root);
    cmd.args(["test", "--package", "tollgate-e2e", "--"])
        .arg("--test-threads=1");
    if let Some(filter) = e2e_filter {
        cmd.arg(filter);
    }
    cmd.env("TOLLGATE_BIN", &bin);
    run(&mut cmd)
}
