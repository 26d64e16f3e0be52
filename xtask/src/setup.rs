//! Installs what the project needs, idempotently: the pinned nightly with rust-src and
//! clippy, bpf-linker 0.13.0 linked against that nightly's own libLLVM, and the Debian
//! packages the tests use.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{ebpf_toolchain, run};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// bpf-linker's LLVM feature must match the pinned nightly's LLVM major version.
const BPF_LINKER_FEATURES: &str = "llvm-22,no-llvm-linking";
/// Debian packages, each with a file that shows it is installed.
const APT_PACKAGES: [(&str, &str); 22] = [
    ("postgresql", "/usr/lib/postgresql"),
    ("postgresql-client", "/usr/bin/psql"),
    ("pgbouncer", "/usr/sbin/pgbouncer"),
    // The HTTP benchmark: its load generator, and nginx (the origin and the peer proxy).
    ("wrk", "/usr/bin/wrk"),
    ("nginx", "/usr/sbin/nginx"),
    ("curl", "/usr/bin/curl"),
    ("iproute2", "/usr/sbin/ip"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("python3", "/usr/bin/python3"),
    ("python3-venv", "/usr/share/doc/python3-venv"),
    // Test-time OIDC signing keys, and the install tests' group management.
    ("openssl", "/usr/bin/openssl"),
    ("passwd", "/usr/sbin/groupadd"),
    // bindgen (pg_query's build) loads libclang.
    ("libclang-dev", "/usr/lib/llvm-14/lib/libclang.so"),
    // The DNS tests: an upstream resolver, and dig.
    ("dnsmasq-base", "/usr/sbin/dnsmasq"),
    ("bind9-dnsutils", "/usr/bin/dig"),
    // The Debian root with a newer PostgreSQL server (see `pg17_root`).
    ("debootstrap", "/usr/sbin/debootstrap"),
    // `cargo xtask vm-test`: the guests, and their kernels' compressed modules.
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("xz-utils", "/usr/bin/xz"),
    ("zstd", "/usr/bin/zstd"),
    // The review console's browser tests: Debian's chromium, driven by playwright-core
    // (npm, see `browser_env`).
    ("chromium", "/usr/bin/chromium"),
    ("nodejs", "/usr/bin/node"),
    ("npm", "/usr/bin/npm"),
];

pub fn all(root: &Path) -> anyhow::Result<()> {
    let nightly = ebpf_toolchain(root)?;
    nightly_toolchain(&nightly)?;
    bpf_linker(root, &nightly)?;
    apt_packages()?;
    python_env(root)?;
    pg17_root(root)?;
    browser_env(root)?;
    Ok(())
}

/// playwright-core from npm, at the version tests/browser/package-lock.json pins, for
/// the console's browser tests (it drives Debian's chromium; it downloads no browser).
fn browser_env(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("tests/browser");
    let lock =
        std::fs::read(dir.join("package-lock.json")).context("tests/browser/package-lock.json")?;
    let stamp_path = dir.join("node_modules/.tollgate-lock");
    if std::fs::read(&stamp_path).is_ok_and(|stamp| stamp == lock) {
        eprintln!("xtask: setup: playwright-core is installed");
        return Ok(());
    }
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(&dir))?;
    std::fs::write(&stamp_path, lock)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(())
}

/// Where [`pg17_root`] makes its root, under the workspace.
pub const PG17_ROOT: &str = "target/trixie-root";

/// Debian trixie, whose PostgreSQL 17 server the direct-TLS tests run (with chroot, on
/// this host's network): bookworm's own server is 15. Made once under target/, without
/// touching the host's apt sources or state.
fn pg17_root(root: &Path) -> anyhow::Result<()> {
    let dir = root.join(PG17_ROOT);
    let postgres = dir.join("usr/lib/postgresql/17/bin/postgres");
    if postgres.exists() {
        eprintln!("xtask: setup: PostgreSQL 17 is in {}", dir.display());
        return Ok(());
    }
    // A partial root from an interrupted run is started over.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--include=postgresql-17", "trixie"])
        .arg(&dir)
        .arg("http://deb.debian.org/debian"))?;
    if !postgres.exists() {
        bail!("debootstrap finished without {}", postgres.display());
    }
    Ok(())
}

/// What the end-to-end tests import from PyPI, in a venv under target/: psycopg 3 (a
/// PostgreSQL client), requests (an HTTP client) and the official MCP SDK (an MCP
/// server and client). (module, requirement, version)
const PYTHON_PACKAGES: [(&str, &str, &str); 3] = [
    ("psycopg", "psycopg[binary]", "3.3.9"),
    ("requests", "requests", "2.34.2"),
    ("mcp", "mcp", "2.3.0"),
];
/// The venv is made from Debian's python (apt's `python3-venv`), not whichever python3
/// comes first on PATH: a python under /root (pyenv) is hidden in a vm-test guest, whose
/// /root is a fresh tmpfs.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

fn python_env(root: &Path) -> anyhow::Result<()> {
    let venv = root.join("target/pyenv");
    let python = venv.join("bin/python");
    let imports: Vec<String> = PYTHON_PACKAGES
        .iter()
        .map(|(module, _, version)| {
            format!("importlib.metadata.version('{module}') != '{version}'")
        })
        .collect();
    let modules: Vec<&str> = PYTHON_PACKAGES.iter().map(|(m, _, _)| *m).collect();
    let check = format!(
        "import sys, importlib.metadata, {}; sys.exit({} or sys.base_prefix != '/usr')",
        modules.join(", "),
        imports.join(" or ")
    );
    let pinned: Vec<String> = PYTHON_PACKAGES
        .iter()
        .map(|(_, package, version)| format!("{package}=={version}"))
        .collect();
    if Command::new(&python)
        .args(["-c", &check])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!(
            "xtask: setup: {} installed in {}",
            pinned.join(", "),
            venv.display()
        );
        return Ok(());
    }
    run(Command::new(SYSTEM_PYTHON)
        .args(["-m", "venv", "--clear"])
        .arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .args(&pinned))
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_toolchain(nightly: &str) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let have = installed.lines().any(|l| l.starts_with(nightly));
    let components = if have {
        output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            nightly,
        ]))?
    } else {
        String::new()
    };
    let missing = ["rust-src", "clippy"]
        .iter()
        .any(|c| !components.lines().any(|l| l.starts_with(c)));
    if have && !missing {
        eprintln!("xtask: setup: {nightly} with rust-src and clippy is installed");
        return Ok(());
    }
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        nightly,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--component",
        "clippy",
    ]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn bpf_linker(root: &Path, nightly: &str) -> anyhow::Result<()> {
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .args(["--print", "sysroot"]),
    )?;
    let sysroot = PathBuf::from(sysroot.trim());
    // The installed binary links to this nightly's libLLVM: key the install on both.
    let stamp_path = cargo_home().join("bin/.bpf-linker.tollgate-stamp");
    let stamp = format!(
        "{BPF_LINKER_VERSION} {BPF_LINKER_FEATURES} {}",
        sysroot.display()
    );
    let linker = cargo_home().join("bin/bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        });
    if works && std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        eprintln!("xtask: setup: bpf-linker {BPF_LINKER_VERSION} for {nightly} is installed");
        return Ok(());
    }
    let lib_dir = sysroot.join("lib");
    let llvm_lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.starts_with("libLLVM") && name.contains("-rust-") && name.ends_with(".so")
        })
        .min()
        .with_context(|| format!("no libLLVM-*-rust-*.so in {}", lib_dir.display()))?;
    let llvm_lib = llvm_lib
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_owned();
    let rustflags = format!(
        "-L {lib} -l dylib={llvm_lib} -C link-arg=-Wl,-rpath,{lib}",
        lib = lib_dir.display()
    );
    run(Command::new("cargo")
        .current_dir(root)
        .env("RUSTFLAGS", rustflags)
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            BPF_LINKER_FEATURES,
        ]))?;
    std::fs::write(&stamp_path, stamp)
        .with_context(|| format!("writing {}", stamp_path.display()))?;
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: setup: Debian packages are installed");
        return Ok(());
    }
    if !crate::is_root() {
        bail!("missing Debian packages {missing:?}: run `cargo xtask setup` as root");
    }
    // The tests start their own PostgreSQL clusters: don't let the package create and
    // start a system-wide one.
    let conf = Path::new("/etc/postgresql-common/createcluster.conf");
    if !conf.exists() {
        std::fs::create_dir_all("/etc/postgresql-common")?;
        std::fs::write(conf, "create_main_cluster = false\n")?;
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}
