//! Builds the eBPF programs (ebpf/tollgate-ebpf) for bpfel-unknown-none with the pinned
//! nightly named in ebpf/tollgate-ebpf/rust-toolchain.toml.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf = manifest_dir.join("../ebpf");
    let programs = ebpf.join("tollgate-ebpf");
    let toolchain_file = programs.join("rust-toolchain.toml");
    let toolchain = fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let channel = toolchain
        .lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .ok_or_else(|| anyhow!("no channel in {}", toolchain_file.display()))?;
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("tollgate-common").display()
    );
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let root_dir = programs
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", programs.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tollgate-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )
}
