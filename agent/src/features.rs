//! What this kernel lacks of what Tollgate uses, found by the probes at startup (program
//! loads and attaches, helpers, socket diag), and what the agent does without it.
//!
//! A missing feature that the fail-closed guarantee needs stops the agent instead (see
//! [`crate::bpf::BpfError::Program`]); the gaps here are the ones it runs with. Each is
//! logged once, as it is found, and reported by `tollgate status --json` under
//! `kernel.gaps`; the end-to-end tests skip only what the agent reports here.
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One feature this kernel lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// A stable name: `socket_families`, `unix_sockets`, `cgroup_moves`, `kernel_path`,
    /// `connect_errno`.
    pub feature: String,
    /// What the kernel would need (the program type or helper, and the version).
    pub needs: String,
    /// What is therefore not covered, or covered another way.
    pub effect: String,
    /// What the probe saw.
    pub error: String,
}

/// The kernel and its gaps, for `tollgate status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelReport {
    /// `uname -r`.
    pub release: String,
    pub gaps: Vec<Gap>,
}

static GAPS: Mutex<Vec<Gap>> = Mutex::new(Vec::new());

/// Records that `feature` is missing, and logs it once.
pub fn missing(feature: &str, needs: &str, effect: &str, error: impl std::fmt::Display) {
    let gap = Gap {
        feature: feature.to_owned(),
        needs: needs.to_owned(),
        effect: effect.to_owned(),
        error: error.to_string(),
    };
    tracing::warn!(
        feature = %gap.feature,
        needs = %gap.needs,
        error = %gap.error,
        "this kernel lacks a feature: {}",
        gap.effect
    );
    let mut gaps = GAPS.lock().unwrap_or_else(|e| e.into_inner());
    if !gaps.iter().any(|g| g.feature == gap.feature) {
        gaps.push(gap);
    }
}

/// The kernel's release and every gap found so far.
pub fn report() -> KernelReport {
    KernelReport {
        release: release(),
        gaps: GAPS.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }
}

/// Whether bpf is among the kernel's active LSMs (securityfs `lsm`): an lsm_cgroup
/// program runs only then, though it attaches without. Where nothing is mounted on
/// /sys/kernel/security (a host booted without systemd, a container), securityfs is
/// mounted there first, as systemd does at boot: the list is the kernel's, not a mount's.
pub fn bpf_lsm_active() -> Result<(), String> {
    const LSM: &str = "/sys/kernel/security/lsm";
    if let Err(error) = ensure_securityfs() {
        return Err(format!("{LSM}: {error}"));
    }
    let list = std::fs::read_to_string(LSM)
        .map_err(|e| format!("{LSM}: {e} (the kernel has no LSM list)"))?;
    if lsm_list_has_bpf(&list) {
        Ok(())
    } else {
        Err(format!("bpf is not an active LSM ({LSM}: {})", list.trim()))
    }
}

/// Mounts securityfs on /sys/kernel/security unless one is there.
fn ensure_securityfs() -> Result<(), String> {
    use nix::sys::statfs::{SECURITYFS_MAGIC, statfs};
    const DIR: &str = "/sys/kernel/security";
    let mounted = |dir: &str| {
        statfs(dir)
            .map(|s| s.filesystem_type() == SECURITYFS_MAGIC)
            .map_err(|e| format!("{dir}: {e}"))
    };
    if mounted(DIR)? {
        return Ok(());
    }
    nix::mount::mount(
        Some("securityfs"),
        DIR,
        Some("securityfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("securityfs is not mounted and mounting it on {DIR} failed: {e}"))?;
    tracing::info!(
        path = DIR,
        "mounted securityfs to read the kernel's active LSMs"
    );
    Ok(())
}

fn lsm_list_has_bpf(list: &str) -> bool {
    list.trim().split(',').any(|lsm| lsm == "bpf")
}

/// The running kernel's release (`uname -r`), or `unknown`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_active_bpf_lsm_counts() {
        assert!(lsm_list_has_bpf(
            "lockdown,capability,landlock,yama,apparmor,bpf\n"
        ));
        assert!(!lsm_list_has_bpf(
            "lockdown,capability,landlock,yama,apparmor"
        ));
        assert!(!lsm_list_has_bpf("bpf_not,ima"));
    }

    #[test]
    fn a_gap_is_reported_once_with_what_it_needs() {
        missing("test_feature", "a helper (Linux 9.9+)", "nothing", "EINVAL");
        missing(
            "test_feature",
            "a helper (Linux 9.9+)",
            "nothing",
            "EINVAL again",
        );
        let report = report();
        let gaps: Vec<_> = report
            .gaps
            .iter()
            .filter(|g| g.feature == "test_feature")
            .collect();
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].needs, "a helper (Linux 9.9+)");
        assert_eq!(gaps[0].error, "EINVAL");
        assert!(!report.release.is_empty());
    }
}
