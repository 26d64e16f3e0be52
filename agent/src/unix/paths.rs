//! Unix socket paths: how the kernel's addresses read as policy paths, which paths are
//! container-engine sockets, which paths the host has bound, and what file a job's path
//! reaches.
use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

use tollgate_common::{UNIX_PATH_MAX, UnixKey};

use super::EngineSocket;

/// Engine sockets at their usual places, ruled whether or not they are bound now.
pub const WELL_KNOWN: [(&str, &str); 8] = [
    ("/run/docker.sock", "docker"),
    ("/var/run/docker.sock", "docker"),
    ("/run/containerd/containerd.sock", "containerd"),
    ("/var/run/containerd/containerd.sock", "containerd"),
    ("/run/containerd/containerd.sock.ttrpc", "containerd"),
    ("/run/podman/podman.sock", "podman"),
    ("/var/run/podman/podman.sock", "podman"),
    ("/run/buildkit/buildkitd.sock", "buildkit"),
];

/// The engine a path belongs to: configured paths first, then by file name anywhere
/// (rootless engines live under /run/user/UID/).
pub fn engine_of<'a>(path: &str, configured: &'a [EngineSocket]) -> Option<&'a str> {
    if let Some(e) = configured.iter().find(|e| e.path == path) {
        return Some(e.engine.as_str());
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    match name {
        "docker.sock" => Some("docker"),
        "podman.sock" => Some("podman"),
        "containerd.sock" | "containerd.sock.ttrpc" => Some("containerd"),
        "buildkitd.sock" => Some("buildkit"),
        _ => None,
    }
}

/// The policy path of a kernel address: a filesystem path as it is, an abstract name
/// as `@name`.
pub fn display(key: &UnixKey) -> String {
    let len = (key.len as usize).min(UNIX_PATH_MAX);
    let bytes = &key.path[..len];
    match bytes.first() {
        Some(0) => format!("@{}", String::from_utf8_lossy(&bytes[1..])),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The kernel address of a policy path, for `cgroup_id`; None if it does not fit.
pub fn key(cgroup_id: u64, path: &str) -> Option<UnixKey> {
    let mut key = UnixKey {
        cgroup_id,
        ..UnixKey::default()
    };
    let bytes: Vec<u8> = match path.strip_prefix('@') {
        Some(name) => std::iter::once(0).chain(name.bytes()).collect(),
        None => path.bytes().collect(),
    };
    // A filesystem path needs room for its NUL only if it is shorter than sun_path.
    if bytes.is_empty() || bytes.len() > UNIX_PATH_MAX || (bytes[0] != 0 && bytes.contains(&0)) {
        return None;
    }
    key.path[..bytes.len()].copy_from_slice(&bytes);
    key.len = bytes.len() as u32;
    Some(key)
}

/// The paths of the unix sockets bound in the agent's network namespace now (from
/// /proc/net/unix), filesystem and abstract alike.
pub fn bound() -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/proc/net/unix") else {
        return Vec::new();
    };
    parse_proc_net_unix(&text)
}

fn parse_proc_net_unix(text: &str) -> Vec<String> {
    let mut paths: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode Path
            let mut rest = line.trim_start();
            for _ in 0..7 {
                let end = rest.find(char::is_whitespace)?;
                rest = rest[end..].trim_start();
            }
            (!rest.is_empty()).then(|| rest.to_owned())
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The file (device, inode) that `path` reaches for process `pid`: relative paths from
/// its working directory, absolute ones from its root, symlinks followed.
pub fn reached_by(pid: u32, path: &str) -> Option<(u64, u64)> {
    if path.starts_with('@') {
        return None;
    }
    let full: PathBuf = if path.starts_with('/') {
        let rooted = PathBuf::from(format!("/proc/{pid}/root{path}"));
        if rooted.exists() {
            rooted
        } else {
            PathBuf::from(path)
        }
    } else {
        PathBuf::from(format!("/proc/{pid}/cwd")).join(path)
    };
    identity(&full)
}

/// A file's (device, inode), following symlinks.
pub fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_round_trip_through_the_kernel_key() {
        for path in ["/run/docker.sock", "@tollgate-test", "relative.sock"] {
            let key = key(7, path).unwrap();
            assert_eq!(key.cgroup_id, 7);
            assert_eq!(display(&key), path);
        }
        assert!(key(0, "").is_none());
        assert!(key(0, &"x".repeat(UNIX_PATH_MAX + 1)).is_none());
        assert!(key(0, &"x".repeat(UNIX_PATH_MAX)).is_some());
    }

    #[test]
    fn engines_are_known_by_configured_path_and_by_name() {
        let configured = vec![EngineSocket {
            path: "/srv/engine/api.sock".to_owned(),
            engine: "docker".to_owned(),
        }];
        assert_eq!(
            engine_of("/srv/engine/api.sock", &configured),
            Some("docker")
        );
        assert_eq!(engine_of("/run/user/1000/docker.sock", &[]), Some("docker"));
        assert_eq!(
            engine_of("/run/user/1000/podman/podman.sock", &[]),
            Some("podman")
        );
        assert_eq!(
            engine_of("/run/containerd/containerd.sock", &[]),
            Some("containerd")
        );
        assert_eq!(engine_of("/run/app.sock", &[]), None);
        assert_eq!(engine_of("/run/docker.sock.bak", &[]), None);
    }

    #[test]
    fn proc_net_unix_lines_give_their_paths() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 12345 /run/docker.sock\n\
                    0000000000000000: 00000002 00000000 00000000 0002 01 12346 @abstract\n\
                    0000000000000000: 00000003 00000000 00000000 0001 03 12347\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 12348 /tmp/with space.sock\n";
        assert_eq!(
            parse_proc_net_unix(text),
            vec![
                "/run/docker.sock".to_owned(),
                "/tmp/with space.sock".to_owned(),
                "@abstract".to_owned()
            ]
        );
    }
}
