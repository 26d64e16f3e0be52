//! `tollgate install github-runner` / `tollgate uninstall`: set a runner host up (hook
//! scripts in the runner's .env, a systemd unit, config/policy/state directories, the
//! control socket's group) and take it all down again. Every step is idempotent, and
//! what was created is kept in a manifest so uninstall removes exactly that.
use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

pub const BIN: &str = "/usr/local/bin/tollgate";
pub const STARTED_HOOK: &str = "/usr/local/lib/tollgate/github-job-started.sh";
pub const COMPLETED_HOOK: &str = "/usr/local/lib/tollgate/github-job-completed.sh";
pub const CONFIG_DIR: &str = "/etc/tollgate";
pub const CONFIG: &str = "/etc/tollgate/agent.toml";
pub const POLICY_DIR: &str = "/etc/tollgate/policies";
pub const RUNNER_POLICY: &str = "/etc/tollgate/policies/runner.cedar";
pub const STATE_DIR: &str = "/var/lib/tollgate";
pub const UNIT: &str = "/etc/systemd/system/tollgate-agent.service";
pub const UNIT_WANTS: &str = "/etc/systemd/system/multi-user.target.wants/tollgate-agent.service";
pub const MANIFEST: &str = "/etc/tollgate/install.json";
pub const GROUP: &str = "tollgate";
const UNIT_NAME: &str = "tollgate-agent.service";
const STARTED_KEY: &str = "ACTIONS_RUNNER_HOOK_JOB_STARTED";
const COMPLETED_KEY: &str = "ACTIONS_RUNNER_HOOK_JOB_COMPLETED";

/// What an install created, so that uninstall removes exactly that.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    runner_dir: String,
    runner_user: String,
    /// Files and symlinks, as paths on the target system.
    files: BTreeSet<String>,
    /// Directories, in creation order (removed in reverse, when empty).
    dirs: Vec<String>,
    /// Keys added to the runner's .env.
    env_keys: BTreeSet<String>,
    env_file_created: bool,
    group_created: bool,
    user_added_to_group: bool,
}

/// A filesystem tree: `/` on a real host, a scratch directory in tests.
struct Root {
    root: PathBuf,
    changes: Vec<String>,
}

impl Root {
    fn new(root: &Path) -> anyhow::Result<Self> {
        let root = root
            .canonicalize()
            .with_context(|| format!("--root {}", root.display()))?;
        Ok(Self {
            root,
            changes: Vec::new(),
        })
    }

    fn live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `path` (absolute on the target system) inside this tree.
    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn change(&mut self, what: String) {
        println!("{what}");
        self.changes.push(what);
    }

    fn ensure_dir(&mut self, path: &str, mode: u32, m: &mut Manifest) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        let mut current = Some(Path::new(path));
        while let Some(dir) = current {
            if dir == Path::new("/") || self.at(&dir.display().to_string()).exists() {
                break;
            }
            missing.push(dir.display().to_string());
            current = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            let real = self.at(&dir);
            fs::create_dir(&real).with_context(|| format!("creating {}", real.display()))?;
            let mode = if dir == path { mode } else { 0o755 };
            fs::set_permissions(&real, fs::Permissions::from_mode(mode))?;
            m.dirs.push(dir.clone());
            self.change(format!("created {dir}/"));
        }
        Ok(())
    }

    /// Writes a file Tollgate owns: created if missing, replaced if it is ours and
    /// differs, refused if someone else's file is in the way.
    fn ensure_file(
        &mut self,
        path: &str,
        content: &[u8],
        mode: u32,
        m: &mut Manifest,
    ) -> anyhow::Result<()> {
        let real = self.at(path);
        match fs::read(&real) {
            Ok(existing) if existing == content => {
                let current = fs::metadata(&real)?.mode() & 0o7777;
                if current != mode {
                    fs::set_permissions(&real, fs::Permissions::from_mode(mode))?;
                    self.change(format!("mode {mode:o} {path}"));
                }
                return Ok(());
            }
            Ok(_) if !m.files.contains(path) => {
                bail!("{path} exists and was not installed by tollgate; move it away and run again")
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", real.display())),
        }
        let parent = Path::new(path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.ensure_dir(&parent, 0o755, m)?;
        let temp = real.with_extension("tollgate-new");
        fs::write(&temp, content).with_context(|| format!("writing {}", real.display()))?;
        fs::set_permissions(&temp, fs::Permissions::from_mode(mode))?;
        fs::rename(&temp, &real)?;
        let verb = if m.files.insert(path.to_owned()) {
            "created"
        } else {
            "updated"
        };
        self.change(format!("{verb} {path}"));
        Ok(())
    }

    fn ensure_symlink(&mut self, path: &str, target: &str, m: &mut Manifest) -> anyhow::Result<()> {
        let real = self.at(path);
        match fs::read_link(&real) {
            Ok(existing) if existing == Path::new(target) => return Ok(()),
            Ok(_) if m.files.contains(path) => fs::remove_file(&real)?,
            Ok(_) => bail!("{path} exists and was not installed by tollgate"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", real.display())),
        }
        let parent = Path::new(path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.ensure_dir(&parent, 0o755, m)?;
        std::os::unix::fs::symlink(target, &real)?;
        m.files.insert(path.to_owned());
        self.change(format!("created {path} -> {target}"));
        Ok(())
    }

    /// shadow-utils, on this tree (`--prefix` for a scratch root).
    fn shadow(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut command = Command::new(tool);
        if !self.live() {
            command.arg("--prefix").arg(&self.root);
        }
        let status = command
            .args(args)
            .status()
            .with_context(|| format!("running {tool}"))?;
        if !status.success() {
            bail!("{tool} {} failed: {status}", args.join(" "));
        }
        Ok(())
    }

    /// The members of a group (None if it does not exist), from this tree's /etc/group.
    fn group_members(&self, group: &str) -> anyhow::Result<Option<Vec<String>>> {
        if self.live() && crate::accounts::gid_of(group)?.is_none() {
            return Ok(None);
        }
        let text = fs::read_to_string(self.at("/etc/group")).unwrap_or_default();
        let line = text
            .lines()
            .find(|line| line.split(':').next() == Some(group));
        match line {
            Some(line) => Ok(Some(
                line.split(':')
                    .nth(3)
                    .unwrap_or_default()
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )),
            // A group from NSS (LDAP, ...) that is not in /etc/group.
            None if self.live() => Ok(Some(Vec::new())),
            None => Ok(None),
        }
    }

    fn uid_of(&self, user: &str) -> anyhow::Result<u32> {
        if self.live() {
            return crate::accounts::uid_of(user)?
                .with_context(|| format!("--runner-user {user}: no such user"));
        }
        let text = fs::read_to_string(self.at("/etc/passwd")).unwrap_or_default();
        text.lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&user))
            .and_then(|fields| fields.get(2)?.parse().ok())
            .with_context(|| {
                format!(
                    "--runner-user {user}: not in {}/etc/passwd",
                    self.root.display()
                )
            })
    }

    fn systemctl(&mut self, args: &[&str]) -> anyhow::Result<()> {
        if !self.live() || !Path::new("/run/systemd/system").exists() {
            return Ok(());
        }
        let status = Command::new("systemctl").args(args).status()?;
        if !status.success() {
            bail!("systemctl {} failed: {status}", args.join(" "));
        }
        self.change(format!("systemctl {}", args.join(" ")));
        Ok(())
    }
}

fn read_manifest(root: &Root) -> anyhow::Result<Option<Manifest>> {
    match fs::read_to_string(root.at(MANIFEST)) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("{MANIFEST} is corrupt"))?,
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context(MANIFEST),
    }
}

fn config_text(runner_uid: u32) -> String {
    format!(
        "# Written by `tollgate install github-runner`; see docs/runners.md.\n\
         [control]\n\
         # Only root and members of this group can reach the control socket.\n\
         group = \"{GROUP}\"\n\
         \n\
         [state]\n\
         dir = \"{STATE_DIR}\"\n\
         \n\
         [policy]\n\
         dir = \"{POLICY_DIR}\"\n\
         # Start in audit mode: everything is recorded, nothing is blocked. Switch to\n\
         # \"enforce\" once `tollgate sessions list` shows no would_deny you did not expect.\n\
         mode = \"audit\"\n\
         \n\
         [identity.github]\n\
         # The runner's account: only it may call the job hooks.\n\
         runner_uids = [{runner_uid}]\n"
    )
}

fn runner_policy(runner_dir: &str) -> String {
    format!(
        "// Written by `tollgate install github-runner`.\n\
         // The runner's own worker talks to GitHub (logs, artifacts, caches): let it.\n\
         // Steps are other processes and need policies of their own.\n\
         @id(\"github-runner-worker\")\n\
         permit(principal, action == Action::\"connect\", resource)\n\
         when {{ principal.provider == \"github\" && principal.process.exe == \"{}/bin/Runner.Worker\" }};\n",
        runner_dir.trim_end_matches('/')
    )
}

fn hook_script(event: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # Installed by `tollgate install github-runner`.\n\
         exec {BIN} hook github {event}\n"
    )
}

const UNIT_TEXT: &str = "[Unit]\n\
Description=Tollgate agent: intercepts, attributes, decides and records CI jobs' connections\n\
Documentation=file:///usr/share/doc/tollgate/runners.md\n\
After=network-online.target\n\
Wants=network-online.target\n\
\n\
[Service]\n\
ExecStart=/usr/local/bin/tollgate agent --config /etc/tollgate/agent.toml\n\
Restart=always\n\
RestartSec=1\n\
# Stopping the agent leaves its eBPF programs attached: job connections are refused,\n\
# never bypassed, until it is back. `tollgate uninstall` removes them.\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n";

/// Reads the runner's .env into lines.
fn env_lines(path: &Path) -> anyhow::Result<Option<Vec<String>>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.lines().map(str::to_owned).collect())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn env_value<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

pub fn install_github_runner(
    runner_dir: &Path,
    runner_user: Option<&str>,
    root: &Path,
) -> anyhow::Result<ExitCode> {
    let mut root = Root::new(root)?;
    if !runner_dir.is_absolute() {
        bail!("--runner-dir must be an absolute path");
    }
    let runner_dir_text = runner_dir.display().to_string();
    let runner_real = root.at(&runner_dir_text);
    if !runner_real.join("config.sh").exists() && !runner_real.join("bin/Runner.Worker").exists() {
        bail!(
            "{} does not look like a GitHub Actions runner directory (no config.sh)",
            runner_real.display()
        );
    }
    let user = match runner_user {
        Some(user) => user.to_owned(),
        None => {
            let uid = fs::metadata(&runner_real)?.uid();
            let passwd = fs::read_to_string(root.at("/etc/passwd")).unwrap_or_default();
            passwd
                .lines()
                .map(|line| line.split(':').collect::<Vec<_>>())
                .find(|f| f.get(2) == Some(&uid.to_string().as_str()))
                .and_then(|f| f.first().map(|s| (*s).to_owned()))
                .with_context(|| {
                    format!(
                        "the runner directory's owner (uid {uid}) has no name; give --runner-user"
                    )
                })?
        }
    };
    let uid = root.uid_of(&user)?;
    let mut m = read_manifest(&root)?.unwrap_or_default();
    if !m.runner_dir.is_empty() && m.runner_dir != runner_dir_text {
        bail!(
            "tollgate is already installed for the runner in {}; uninstall it first",
            m.runner_dir
        );
    }
    m.runner_dir = runner_dir_text.clone();
    m.runner_user = user.clone();

    // The agent: binary, config, policies, state, unit.
    let exe = std::env::current_exe().context("finding this executable")?;
    let binary = fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    root.ensure_file(BIN, &binary, 0o755, &mut m)?;
    root.ensure_dir(CONFIG_DIR, 0o755, &mut m)?;
    let config_path = root.at(CONFIG);
    if config_path.exists() && !m.files.contains(CONFIG) {
        let config = crate::config::Config::from_file(&config_path)?;
        if !config.identity.github.runner_uids.contains(&uid) {
            bail!(
                "{CONFIG} exists and does not list uid {uid} ({user}) in \
                 identity.github.runner_uids; add it and run again"
            );
        }
    } else {
        root.ensure_file(CONFIG, config_text(uid).as_bytes(), 0o644, &mut m)?;
    }
    root.ensure_dir(POLICY_DIR, 0o755, &mut m)?;
    root.ensure_file(
        RUNNER_POLICY,
        runner_policy(&runner_dir_text).as_bytes(),
        0o644,
        &mut m,
    )?;
    root.ensure_dir(STATE_DIR, 0o700, &mut m)?;
    root.ensure_file(UNIT, UNIT_TEXT.as_bytes(), 0o644, &mut m)?;
    root.ensure_symlink(UNIT_WANTS, UNIT, &mut m)?;

    // The control socket's group, with the runner account in it.
    match root.group_members(GROUP)? {
        None => {
            root.shadow("groupadd", &["--system", GROUP])?;
            m.group_created = true;
            root.change(format!("created group {GROUP}"));
            root.shadow("usermod", &["-a", "-G", GROUP, &user])?;
            m.user_added_to_group = true;
            root.change(format!("added {user} to group {GROUP}"));
        }
        Some(members) if !members.contains(&user) => {
            root.shadow("usermod", &["-a", "-G", GROUP, &user])?;
            m.user_added_to_group = true;
            root.change(format!("added {user} to group {GROUP}"));
        }
        Some(_) => {}
    }

    // The runner's hooks.
    root.ensure_file(
        STARTED_HOOK,
        hook_script("job-started").as_bytes(),
        0o755,
        &mut m,
    )?;
    root.ensure_file(
        COMPLETED_HOOK,
        hook_script("job-completed").as_bytes(),
        0o755,
        &mut m,
    )?;
    let env_path = runner_real.join(".env");
    let existed = env_lines(&env_path)?;
    let mut lines = existed.clone().unwrap_or_default();
    let mut added = false;
    for (key, value) in [(STARTED_KEY, STARTED_HOOK), (COMPLETED_KEY, COMPLETED_HOOK)] {
        match env_value(&lines, key) {
            Some(current) if current == value => {}
            Some(current) => bail!(
                "{}: {key} is already set to `{current}`; call `{BIN} hook github ...` from \
                 that script instead, or remove it and run again",
                env_path.display()
            ),
            None => {
                lines.push(format!("{key}={value}"));
                m.env_keys.insert(key.to_owned());
                added = true;
            }
        }
    }
    if added {
        fs::write(&env_path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", env_path.display()))?;
        if existed.is_none() {
            m.env_file_created = true;
        }
        root.change(format!("set the job hooks in {runner_dir_text}/.env"));
    }

    // The manifest is not in its own file list: uninstall removes it last.
    let manifest = serde_json::to_string_pretty(&m)? + "\n";
    if fs::read(root.at(MANIFEST)).ok().as_deref() != Some(manifest.as_bytes()) {
        fs::write(root.at(MANIFEST), manifest)
            .with_context(|| format!("writing {}", root.at(MANIFEST).display()))?;
    }

    if !root.changes.is_empty() {
        root.systemctl(&["daemon-reload"])?;
        root.systemctl(&["enable", "--now", UNIT_NAME])?;
        println!(
            "restart the runner service so that it reads the hooks from {runner_dir_text}/.env"
        );
    } else {
        println!("nothing to change: tollgate is installed for {runner_dir_text}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(root: &Path, purge: bool) -> anyhow::Result<ExitCode> {
    let mut root = Root::new(root)?;
    let Some(m) = read_manifest(&root)? else {
        bail!(
            "nothing to uninstall: {} does not exist",
            root.at(MANIFEST).display()
        );
    };
    if root.live() {
        root.systemctl(&["disable", "--now", UNIT_NAME])?;
        // The agent is stopped: remove its eBPF programs, pins and job cgroups.
        let (config, _) = crate::config::Config::load(Some(&root.at(CONFIG)))?;
        for removed in crate::agent::cleanup(&config)? {
            root.change(format!("removed {removed}"));
        }
    }
    // The runner's hooks.
    let env_path = root.at(&m.runner_dir).join(".env");
    if let Some(lines) = env_lines(&env_path)? {
        let kept: Vec<String> = lines
            .iter()
            .filter(|line| {
                !m.env_keys.iter().any(|key| {
                    line.strip_prefix(key.as_str())
                        .is_some_and(|r| r.starts_with('='))
                })
            })
            .cloned()
            .collect();
        if kept.len() != lines.len() {
            if kept.is_empty() && m.env_file_created {
                fs::remove_file(&env_path)?;
            } else {
                fs::write(&env_path, kept.join("\n") + "\n")?;
            }
            root.change(format!("removed the job hooks from {}/.env", m.runner_dir));
        }
    }
    if m.user_added_to_group && !m.group_created {
        root.shadow("usermod", &["-r", "-G", GROUP, &m.runner_user])?;
        root.change(format!("removed {} from group {GROUP}", m.runner_user));
    }
    if m.group_created && root.group_members(GROUP)?.is_some() {
        root.shadow("groupdel", &[GROUP])?;
        root.change(format!("removed group {GROUP}"));
    }
    for file in &m.files {
        let real = root.at(file);
        if fs::symlink_metadata(&real).is_ok() {
            fs::remove_file(&real).with_context(|| format!("removing {}", real.display()))?;
            root.change(format!("removed {file}"));
        }
    }
    fs::remove_file(root.at(MANIFEST)).context(MANIFEST)?;
    if purge {
        let state = root.at(STATE_DIR);
        if state.exists() {
            fs::remove_dir_all(&state)?;
            root.change(format!("removed {STATE_DIR}/ (recordings)"));
        }
    }
    for dir in m.dirs.iter().rev() {
        let real = root.at(dir);
        match fs::remove_dir(&real) {
            Ok(()) => root.change(format!("removed {dir}/")),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(_) if dir == STATE_DIR => {
                println!("kept {dir}/ (recordings; `tollgate uninstall --purge` removes it)")
            }
            Err(_) => println!("kept {dir}/ (not empty)"),
        }
    }
    root.systemctl(&["daemon-reload"])?;
    Ok(ExitCode::SUCCESS)
}
