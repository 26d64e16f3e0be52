//! `tollgate install github-runner` and `tollgate uninstall` in a scratch root: exactly
//! the expected files, idempotent, and fully reversed.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use tollgate_e2e::{agent::tollgate_bin, output, require_root, stderr, stdout};

const RUNNER_DIR: &str = "/home/runner/actions-runner";

/// Every path under `root` with (kind, mode, mtime, content or link target).
fn snapshot(root: &Path) -> BTreeMap<String, (char, u32, i64, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, i64, Vec<u8>)>) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let (kind, content) = if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("link");
                ('l', target.display().to_string().into_bytes())
            } else if meta.is_dir() {
                ('d', Vec::new())
            } else {
                ('f', fs::read(&path).expect("read"))
            };
            out.insert(
                rel,
                (
                    kind,
                    meta.mode() & 0o7777,
                    meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
                    content,
                ),
            );
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn seed() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("tollgate-install-")
        .tempdir()
        .expect("tempdir");
    let root = dir.path().to_owned();
    fs::create_dir_all(root.join("etc")).expect("etc");
    let runner = root.join(RUNNER_DIR.trim_start_matches('/'));
    fs::create_dir_all(&runner).expect("runner dir");
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\nrunner:x:1001:1001::/home/runner:/bin/bash\n",
    )
    .expect("passwd");
    let group = "root:x:0:\nrunner:x:1001:\n";
    fs::write(root.join("etc/group"), group).expect("group");
    fs::write(root.join("etc/group-"), group).expect("group-");
    fs::write(runner.join("config.sh"), "#!/bin/sh\n").expect("config.sh");
    fs::write(runner.join(".env"), "LANG=C.UTF-8\n").expect(".env");
    (dir, root)
}

fn tollgate(args: &[&str], root: &Path) -> std::process::Output {
    output(
        std::process::Command::new(tollgate_bin())
            .args(args)
            .arg("--root")
            .arg(root),
    )
}

fn install(root: &Path) -> std::process::Output {
    tollgate(
        &[
            "install",
            "github-runner",
            "--runner-dir",
            RUNNER_DIR,
            "--runner-user",
            "runner",
        ],
        root,
    )
}

#[test]
fn install_and_uninstall_a_github_runner_host() {
    if !require_root() {
        return;
    }
    let (_dir, root) = seed();
    let before = snapshot(&root);

    let first = install(&root);
    assert!(first.status.success(), "install: {}", stderr(&first));
    let after = snapshot(&root);
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let expected = [
        "etc/systemd",
        "etc/systemd/system",
        "etc/systemd/system/multi-user.target.wants",
        "etc/systemd/system/multi-user.target.wants/tollgate-agent.service",
        "etc/systemd/system/tollgate-agent.service",
        "etc/tollgate",
        "etc/tollgate/agent.toml",
        "etc/tollgate/install.json",
        "etc/tollgate/policies",
        "etc/tollgate/policies/runner.cedar",
        "usr",
        "usr/local",
        "usr/local/bin",
        "usr/local/bin/tollgate",
        "usr/local/lib",
        "usr/local/lib/tollgate",
        "usr/local/lib/tollgate/github-job-completed.sh",
        "usr/local/lib/tollgate/github-job-started.sh",
        "var",
        "var/lib",
        "var/lib/tollgate",
    ];
    assert_eq!(added, expected, "files added by install");
    let changed: Vec<&String> = before
        .keys()
        .filter(|k| before[*k].3 != after[*k].3)
        .collect();
    assert_eq!(
        changed,
        ["etc/group", "etc/group-", "home/runner/actions-runner/.env"],
        "files changed by install"
    );

    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(
        read("home/runner/actions-runner/.env"),
        "LANG=C.UTF-8\n\
         ACTIONS_RUNNER_HOOK_JOB_STARTED=/usr/local/lib/tollgate/github-job-started.sh\n\
         ACTIONS_RUNNER_HOOK_JOB_COMPLETED=/usr/local/lib/tollgate/github-job-completed.sh\n"
    );
    assert!(
        read("etc/group").contains(":runner\n") && read("etc/group").contains("tollgate:x:"),
        "{}",
        read("etc/group")
    );
    assert!(read("etc/tollgate/agent.toml").contains("runner_uids = [1001]"));
    assert!(
        read("etc/systemd/system/tollgate-agent.service")
            .contains("ExecStart=/usr/local/bin/tollgate agent --config /etc/tollgate/agent.toml")
    );
    assert_eq!(
        fs::read_link(
            root.join("etc/systemd/system/multi-user.target.wants/tollgate-agent.service")
        )
        .expect("wants link"),
        Path::new("/etc/systemd/system/tollgate-agent.service")
    );
    assert_eq!(
        read("usr/local/lib/tollgate/github-job-started.sh"),
        "#!/bin/sh\n# Installed by `tollgate install github-runner`.\n\
         exec /usr/local/bin/tollgate hook github job-started\n"
    );
    assert_eq!(
        after["usr/local/lib/tollgate/github-job-started.sh"].1,
        0o755
    );
    assert_eq!(after["var/lib/tollgate"].1, 0o700);
    assert_eq!(
        fs::read(root.join("usr/local/bin/tollgate")).expect("binary"),
        fs::read(tollgate_bin()).expect("binary under test")
    );
    // The config the installer wrote is valid, and so is its policy.
    let check = output(
        std::process::Command::new(tollgate_bin())
            .args(["agent", "--check-config", "--config"])
            .arg(root.join("etc/tollgate/agent.toml")),
    );
    assert!(check.status.success(), "{}", stderr(&check));
    let policy = output(
        std::process::Command::new(tollgate_bin())
            .args(["policy", "check"])
            .arg(root.join("etc/tollgate/policies")),
    );
    assert!(policy.status.success(), "{}", stderr(&policy));

    // A second run changes nothing, not even a timestamp.
    let second = install(&root);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("nothing to change"),
        "{}",
        stdout(&second)
    );
    assert_eq!(
        snapshot(&root),
        after,
        "the second install changed the tree"
    );

    // Uninstall puts everything back (shadow-utils keeps its backup file).
    let removed = tollgate(&["uninstall"], &root);
    assert!(removed.status.success(), "uninstall: {}", stderr(&removed));
    let restored = snapshot(&root);
    let differs: Vec<&String> = before
        .keys()
        .chain(restored.keys())
        .filter(|k| before.get(*k).map(|v| &v.3) != restored.get(*k).map(|v| &v.3))
        .filter(|k| k.as_str() != "etc/group-")
        .collect();
    assert!(
        differs.is_empty(),
        "uninstall left differences: {differs:?}"
    );

    // Recordings survive an uninstall unless --purge.
    assert!(install(&root).status.success());
    fs::write(root.join("var/lib/tollgate/recordings.db"), "x").expect("fake recording");
    let kept = tollgate(&["uninstall"], &root);
    assert!(kept.status.success());
    assert!(
        stdout(&kept).contains("kept /var/lib/tollgate/"),
        "{}",
        stdout(&kept)
    );
    assert!(root.join("var/lib/tollgate/recordings.db").exists());
    assert!(install(&root).status.success());
    let purged = tollgate(&["uninstall", "--purge"], &root);
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert!(
        !root.join("var/lib/tollgate").exists(),
        "--purge left the state directory"
    );
    let again = tollgate(&["uninstall"], &root);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("nothing to uninstall"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn install_refuses_to_clobber_existing_runner_hooks() {
    if !require_root() {
        return;
    }
    let (_dir, root) = seed();
    let env = root.join(RUNNER_DIR.trim_start_matches('/')).join(".env");
    fs::write(&env, "ACTIONS_RUNNER_HOOK_JOB_STARTED=/opt/mine.sh\n").expect(".env");
    let out = install(&root);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ACTIONS_RUNNER_HOOK_JOB_STARTED is already set to `/opt/mine.sh`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_to_string(&env).expect(".env"),
        "ACTIONS_RUNNER_HOOK_JOB_STARTED=/opt/mine.sh\n"
    );
}
