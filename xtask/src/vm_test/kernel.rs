//! A Debian kernel for a guest: fetched with a private apt configuration (its own
//! sources list, state and cache under target/vm-tests/apt/SUITE; the host's apt is
//! left alone), unpacked once, cached across runs.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::run;

/// `vm-tests/kernels.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    pub kernel: Vec<Pin>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// What `--kernel` names: 5.10, 6.1, ...
    pub name: String,
    pub suite: String,
    pub package: String,
    pub version: String,
}

pub fn pins(root: &Path) -> anyhow::Result<Vec<Pin>> {
    let path = root.join("vm-tests/kernels.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let pins: Pins =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(pins.kernel)
}

/// An unpacked kernel package.
pub struct Kernel {
    /// The package's `/lib/modules/RELEASE` name.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// The pinned kernel, fetched and unpacked unless it already is.
pub fn fetch(root: &Path, pin: &Pin) -> anyhow::Result<Kernel> {
    let base = root.join("target/vm-tests");
    let unpacked = base
        .join("kernels")
        .join(format!("{}_{}", pin.package, pin.version));
    let done = unpacked.join(".unpacked");
    if !done.exists() {
        let _ = fs::remove_dir_all(&unpacked);
        fs::create_dir_all(&unpacked)?;
        for deb in download(&base, pin)? {
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        }
        fs::write(&done, "")?;
    }
    // Older packages ship /lib/modules and /boot/vmlinuz-RELEASE; merged-/usr ones (sid)
    // /usr/lib/modules/RELEASE with its vmlinuz inside.
    let modules_root = ["lib/modules", "usr/lib/modules"]
        .into_iter()
        .map(|dir| unpacked.join(dir))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| unpacked.join("lib/modules"));
    let release = fs::read_dir(&modules_root)
        .with_context(|| format!("reading {}", modules_root.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("no kernel release under {}", modules_root.display()))?;
    let vmlinuz = [
        unpacked.join("boot").join(format!("vmlinuz-{release}")),
        modules_root.join(&release).join("vmlinuz"),
    ]
    .into_iter()
    .find(|path| path.exists())
    .with_context(|| format!("{} holds no vmlinuz for {release}", pin.package))?;
    Ok(Kernel {
        modules: modules_root.join(&release),
        release,
        vmlinuz,
    })
}

/// The package's .debs in the cache: the image package and, where Debian splits a
/// kernel (trixie's point releases and sid: linux-binary-* holds the image and
/// linux-modules-* the modules), those parts at the same version.
fn download(base: &Path, pin: &Pin) -> anyhow::Result<Vec<PathBuf>> {
    let main = download_image(base, pin)?;
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&main)
        .arg("Depends")
        .output()
        .context("dpkg-deb -f")?;
    let depends = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut debs = vec![main];
    for part in split_parts(&depends) {
        let (package, version) = part;
        let split = Pin {
            package,
            version,
            ..pin.clone()
        };
        debs.push(download_image(base, &split)?);
    }
    Ok(debs)
}

/// `linux-binary-*` and `linux-modules-*` entries pinned with `(= VERSION)` in a
/// Depends field.
fn split_parts(depends: &str) -> Vec<(String, String)> {
    depends
        .split(',')
        .filter_map(|dep| {
            let dep = dep.trim();
            let (name, rest) = dep.split_once(' ')?;
            if !(name.starts_with("linux-binary-") || name.starts_with("linux-modules-")) {
                return None;
            }
            let version = rest.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
            Some((name.to_owned(), version.to_owned()))
        })
        .collect()
}

/// One package's .deb in the cache: the pinned version, or the suite's current one
/// (with a warning) when the pin has left the archive.
fn download_image(base: &Path, pin: &Pin) -> anyhow::Result<PathBuf> {
    let apt = base.join("apt").join(&pin.suite);
    let debs = base.join("debs");
    for dir in [
        apt.join("state/lists/partial"),
        apt.join("cache/archives/partial"),
        apt.join("parts"),
        debs.clone(),
    ] {
        fs::create_dir_all(&dir)?;
    }
    fs::write(
        apt.join("sources.list"),
        format!("deb http://deb.debian.org/debian {} main\n", pin.suite),
    )?;
    let status = apt.join("status");
    if !status.exists() {
        fs::write(&status, "")?;
    }
    let options = |cmd: &mut Command| {
        for (key, value) in [
            ("Dir::Etc::SourceList", apt.join("sources.list")),
            ("Dir::Etc::SourceParts", apt.join("parts")),
            ("Dir::State", apt.join("state")),
            ("Dir::State::status", status.clone()),
            ("Dir::Cache", apt.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        cmd.args(["-o", "APT::Sandbox::User=root", "-q"]);
    };
    let cached = |package: &str, version: &str| {
        // apt-get download names the file PACKAGE_VERSION_amd64.deb, with ':' as %3a.
        debs.join(format!(
            "{package}_{}_amd64.deb",
            version.replace(':', "%3a")
        ))
    };
    let pinned = cached(&pin.package, &pin.version);
    if pinned.exists() {
        return Ok(pinned);
    }
    let mut update = Command::new("apt-get");
    options(&mut update);
    run(update.arg("update"))?;
    let mut get = Command::new("apt-get");
    options(&mut get);
    get.current_dir(&debs)
        .arg("download")
        .arg(format!("{}={}", pin.package, pin.version));
    if run(&mut get).is_ok() && pinned.exists() {
        return Ok(pinned);
    }
    if !pin.package.starts_with("linux-image-") {
        bail!("apt-get download {}={} failed", pin.package, pin.version);
    }
    // The pin is gone: the suite's current kernel, named by its metapackage.
    let mut depends = Command::new("apt-cache");
    options(&mut depends);
    let out = depends
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("apt-cache depends linux-image-amd64")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .map(|rest| format!("linux-image-{rest}"))
        .with_context(|| format!("{} has no linux-image-amd64", pin.suite))?;
    eprintln!(
        "xtask: vm-test: WARNING: {}={} is no longer in {}; using its current {package}. \
         Update vm-tests/kernels.toml.",
        pin.package, pin.version, pin.suite
    );
    let mut get = Command::new("apt-get");
    options(&mut get);
    run(get.current_dir(&debs).arg("download").arg(&package))?;
    let prefix = format!("{package}_");
    deb_files(&debs)
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .with_context(|| format!("apt-get download {package} left no .deb"))
}

fn deb_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "deb"))
                .collect()
        })
        .unwrap_or_default()
}

/// The modules a guest needs, with their dependencies first, decompressed: virtio PCI
/// and 9p over virtio (its root), veth (the tests' network namespaces), dummy
/// (the guest's uplink), and the
/// sock_diag families a runner host loads on demand (the agent destroys revoked
/// sockets through inet_diag; the guest has no modprobe to load them when asked). A
/// module the kernel has built in is not listed.
pub fn guest_modules(kernel: &Kernel) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = std::collections::HashMap::new();
    index(&kernel.modules.join("kernel"), &mut files)?;
    let mut order = Vec::new();
    for wanted in [
        "virtio_pci",
        "9pnet_virtio",
        "9p",
        "veth",
        "dummy",
        "tcp_diag",
        "udp_diag",
        "unix_diag",
        "netlink_diag",
    ] {
        visit(wanted, &files, &mut order, 0)?;
    }
    Ok(order)
}

fn index(dir: &Path, files: &mut std::collections::HashMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            index(&path, files)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && let Some(stem) = name.split(".ko").next().filter(|_| name.contains(".ko"))
        {
            files.insert(stem.replace('-', "_"), path.clone());
        }
    }
    Ok(())
}

fn visit(
    name: &str,
    files: &std::collections::HashMap<String, PathBuf>,
    order: &mut Vec<(String, Vec<u8>)>,
    depth: usize,
) -> anyhow::Result<()> {
    if depth > 32 {
        bail!("module dependencies nest too deep at {name}");
    }
    if order.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    let Some(path) = files.get(name) else {
        // Built into this kernel.
        return Ok(());
    };
    // Read (and decompressed) once: for its dependencies, then kept for the archive.
    let bytes = read_module(path)?;
    for dep in depends(&bytes) {
        visit(&dep, files, order, depth + 1)?;
    }
    order.push((name.to_owned(), bytes));
    Ok(())
}

/// A module's bytes, decompressed (.ko, .ko.xz, .ko.zst).
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("reading {name}")),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("{tool} -dc {name}"))?;
            if !out.status.success() {
                bail!(
                    "{tool} -dc {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(out.stdout)
        }
    }
}

/// The `depends=` entry of a module's .modinfo (NUL-separated key=value strings).
fn depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    module
        .windows(key.len())
        .position(|w| w == key)
        .map(|at| {
            let rest = &module[at + key.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_modules_dependencies() {
        let modinfo = b"xx\0license=GPL\0depends=virtio,virtio-ring\0vermagic=6.1\0";
        assert_eq!(super::depends(modinfo), ["virtio", "virtio_ring"]);
        assert!(super::depends(b"\0license=GPL\0depends=\0").is_empty());
        assert!(super::depends(b"nothing here").is_empty());
    }

    #[test]
    fn finds_the_split_parts_of_a_kernel_package() {
        let depends = "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
            linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-binary-7.2.13+deb14-amd64 \
            (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)";
        assert_eq!(
            super::split_parts(depends),
            [
                (
                    "linux-binary-7.2.13+deb14-amd64".to_owned(),
                    "7.2.13-1".to_owned()
                ),
                (
                    "linux-modules-7.2.13+deb14-amd64".to_owned(),
                    "7.2.13-1".to_owned()
                ),
            ]
        );
        assert!(super::split_parts("kmod, linux-base (>= 4.3~)").is_empty());
    }
}
