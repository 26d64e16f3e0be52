//! Policy enforcement in the agent: loads the policy directory into a
//! [`tollgate_policy::PolicyEngine`], reloads it on SIGHUP and when the files change
//! (keeping the previous set when the new one is invalid), and answers decisions from a
//! per-thread cache, so the data path takes no lock.
mod kernel;
mod snapshot;

pub use kernel::KernelPlan;
pub use snapshot::Snapshot;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use arc_swap::ArcSwap;
use tollgate_policy::{Catalog, LoadErrors, Mode, PolicyEngine, Source, TargetSpec};

use crate::{
    config::{Config, ConfigError},
    metrics::PolicyMetrics,
    postgres::mask::MaskingConfig,
};

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("policy directory {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid policy:\n{0}")]
    Invalid(#[from] LoadErrors),
    #[error("targets: {0}")]
    Targets(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What is in force.
struct Active {
    generation: u64,
    /// None: the policy directory does not exist, so no policy is configured.
    engine: Option<PolicyEngine>,
    /// Names, sizes and mtimes of the files the set was read from (the agent's config
    /// file included).
    signature: Vec<(PathBuf, u64, Option<SystemTime>)>,
    /// What the config file said (its targets serve when there is no catalog, no
    /// policy directory).
    settings: Settings,
}

/// What the agent's config file says that a reload takes up: `[policy] mode`,
/// `[[targets]]` and `[masking]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// As configured (DNS names are resolved again on every reload).
    pub targets: Vec<TargetSpec>,
    pub masking: Arc<MaskingConfig>,
    /// `[http] headers`: what policies may read as `context.headers`.
    pub http_headers: Vec<String>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            mode: config.policy.mode,
            targets: config.targets.clone(),
            masking: Arc::new(config.masking.clone()),
            http_headers: config.http.headers.clone(),
        }
    }
}

pub struct Enforcer {
    dir: PathBuf,
    /// The agent's config file: its [`Settings`] are read again from it on every
    /// reload. None for the built-in config.
    config_file: Option<PathBuf>,
    active: ArcSwap<Active>,
    next_generation: AtomicU64,
    reload_lock: Mutex<()>,
    metrics: Arc<PolicyMetrics>,
}

/// A successful reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub generation: u64,
    pub policies: usize,
}

impl Enforcer {
    /// Loads the policy set; an invalid set is an error (at startup there is nothing
    /// older to keep).
    pub fn load(
        dir: &Path,
        config_file: Option<&Path>,
        settings: Settings,
        metrics: Arc<PolicyMetrics>,
    ) -> Result<Self, EnforceError> {
        let catalog = resolved_catalog(&settings.targets)?;
        let (engine, signature) = read(dir, config_file, &settings, &catalog)?;
        metrics
            .loaded
            .set(engine.as_ref().map_or(0, |e| e.policy_count() as i64));
        Ok(Self {
            dir: dir.to_owned(),
            config_file: config_file.map(Path::to_owned),
            active: ArcSwap::from_pointee(Active {
                generation: 1,
                engine,
                signature,
                settings,
            }),
            next_generation: AtomicU64::new(2),
            reload_lock: Mutex::new(()),
            metrics,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn mode(&self) -> Mode {
        self.active.load().settings.mode
    }

    pub fn generation(&self) -> u64 {
        self.active.load().generation
    }

    /// Whether a policy directory is in force (else everything is allowed).
    pub fn configured(&self) -> bool {
        self.active.load().engine.is_some()
    }

    pub fn policy_count(&self) -> usize {
        self.active
            .load()
            .engine
            .as_ref()
            .map_or(0, PolicyEngine::policy_count)
    }

    /// Whether the files on disk differ from the set in force.
    pub fn changed_on_disk(&self) -> bool {
        signature(&self.dir, self.config_file.as_deref()).ok()
            != Some(self.active.load().signature.clone())
    }

    /// Reads the directory again. On error the previous set stays in force, the error is
    /// logged and counted, and returned.
    pub fn reload(&self) -> Result<Reloaded, EnforceError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.active.load_full();
        let attempt = self.read_settings(&current.settings).and_then(|new| {
            let catalog = resolved_catalog(&new.targets)?;
            let (engine, signature) = read(&self.dir, self.config_file.as_deref(), &new, &catalog)?;
            Ok((engine, signature, new))
        });
        match attempt {
            Ok((engine, signature, settings)) => {
                let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                let policies = engine.as_ref().map_or(0, PolicyEngine::policy_count);
                self.metrics.loaded.set(policies as i64);
                self.metrics.reload("ok");
                self.active.store(Arc::new(Active {
                    generation,
                    engine,
                    signature,
                    settings,
                }));
                tracing::info!(dir = %self.dir.display(), policies, generation, "policy reloaded");
                Ok(Reloaded {
                    generation,
                    policies,
                })
            }
            Err(error) => {
                // Logged before it is counted: whoever sees the count finds the reason.
                tracing::error!(dir = %self.dir.display(), %error, "policy reload failed; the previous policy stays in force");
                self.metrics.reload("error");
                // Don't retry the same broken files on every poll.
                if let Ok(signature) = signature(&self.dir, self.config_file.as_deref()) {
                    self.active.store(Arc::new(Active {
                        generation: current.generation,
                        engine: current.engine.clone(),
                        signature,
                        settings: current.settings.clone(),
                    }));
                }
                Err(error)
            }
        }
    }

    /// The [`Settings`] from the config file (or as they are, for the built-in config).
    /// A malformed config file keeps the previous set in force.
    fn read_settings(&self, current: &Settings) -> Result<Settings, EnforceError> {
        let Some(path) = &self.config_file else {
            return Ok(current.clone());
        };
        let config = Config::from_file(path)?;
        if config.policy.dir != self.dir {
            tracing::warn!(
                configured = %config.policy.dir.display(),
                in_use = %self.dir.display(),
                "policy.dir changed: restart the agent to use the new directory"
            );
        }
        Ok(Settings::from_config(&config))
    }

    /// The policy in force now. Every decision about one connection (or one statement)
    /// comes from one snapshot, so none of them falls on the other side of a reload.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.active.load_full())
    }
}

/// The catalog with each target's DNS names resolved to addresses (now, and again on
/// every reload). A name that does not resolve matches nothing, and is logged.
fn resolved_catalog(targets: &[TargetSpec]) -> Result<Catalog, EnforceError> {
    use std::net::ToSocketAddrs as _;
    let mut targets = targets.to_vec();
    for target in &mut targets {
        target.resolved.clear();
        for name in &target.dns_names {
            match (name.as_str(), 0).to_socket_addrs() {
                Ok(addrs) => target.resolved.extend(addrs.map(|a| a.ip())),
                Err(error) => {
                    tracing::warn!(target = %target.name, %name, %error, "DNS name does not resolve");
                }
            }
        }
    }
    Catalog::new(targets).map_err(EnforceError::Targets)
}

type Signature = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The `*.cedar` files of `dir`, sorted; None if the directory does not exist.
fn policy_files(dir: &Path) -> Result<Option<Vec<PathBuf>>, EnforceError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(EnforceError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "cedar") && p.is_file())
        .collect();
    files.sort();
    Ok(Some(files))
}

fn signature(dir: &Path, config_file: Option<&Path>) -> Result<Signature, EnforceError> {
    Ok(policy_files(dir)?
        .unwrap_or_default()
        .into_iter()
        .chain(config_file.map(Path::to_owned))
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect())
}

/// Reads and validates every policy file of `dir`.
pub fn read_sources(dir: &Path) -> Result<Option<Vec<Source>>, EnforceError> {
    let Some(files) = policy_files(dir)? else {
        return Ok(None);
    };
    let mut sources = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| EnforceError::Read {
            path: path.clone(),
            source,
        })?;
        sources.push(Source {
            name: path.display().to_string(),
            text,
        });
    }
    Ok(Some(sources))
}

fn read(
    dir: &Path,
    config_file: Option<&Path>,
    settings: &Settings,
    catalog: &Catalog,
) -> Result<(Option<PolicyEngine>, Signature), EnforceError> {
    let signature = signature(dir, config_file)?;
    let Some(sources) = read_sources(dir)? else {
        return Ok((None, signature));
    };
    let bundle = tollgate_policy::load_with(&sources, &settings.http_headers)?;
    Ok((
        Some(PolicyEngine::new(bundle, catalog.clone(), settings.mode)),
        signature,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use tollgate_policy::{NO_POLICY_REASON, Principal, Process, Subject};

    use crate::metrics::Metrics;

    fn settings(mode: Mode, targets: Vec<TargetSpec>) -> Settings {
        Settings {
            mode,
            targets,
            masking: Arc::default(),
            http_headers: Vec::new(),
        }
    }

    fn principal() -> Principal {
        Principal {
            job_id: "j".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn missing_dir_allows_and_invalid_reload_keeps_the_previous_set() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        let metrics = Metrics::new();
        let enforcer = Enforcer::load(
            &policies,
            None,
            settings(Mode::Enforce, Vec::new()),
            metrics.policy.clone(),
        )
        .unwrap();
        let dest: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let decision = enforcer.snapshot().decide_connect(Subject::new(
            &principal(),
            &Process::default(),
            dest,
        ));
        assert!(!decision.blocks());
        assert_eq!(decision.reason, NO_POLICY_REASON);

        std::fs::create_dir(&policies).unwrap();
        std::fs::write(
            policies.join("a.cedar"),
            "@id(\"web\")\npermit(principal, action, resource) when { resource.port == 80 };",
        )
        .unwrap();
        assert!(enforcer.changed_on_disk());
        let reloaded = enforcer.reload().unwrap();
        assert_eq!(reloaded.policies, 1);
        assert!(!enforcer.changed_on_disk());
        let decision = enforcer.snapshot().decide_connect(Subject::new(
            &principal(),
            &Process::default(),
            dest,
        ));
        assert_eq!(decision.policy_ids, vec!["web".to_owned()]);
        let other: SocketAddr = "127.0.0.1:81".parse().unwrap();
        assert!(
            enforcer
                .snapshot()
                .decide_connect(Subject::new(&principal(), &Process::default(), other))
                .blocks()
        );

        std::fs::write(
            policies.join("b.cedar"),
            "permit(principal, action, resource) when {",
        )
        .unwrap();
        let error = enforcer.reload().unwrap_err().to_string();
        assert!(error.contains("b.cedar:1:"), "{error}");
        assert!(
            !enforcer.changed_on_disk(),
            "a broken set is not retried until it changes"
        );
        let decision = enforcer.snapshot().decide_connect(Subject::new(
            &principal(),
            &Process::default(),
            dest,
        ));
        assert_eq!(
            decision.policy_ids,
            vec!["web".to_owned()],
            "previous set in force"
        );
        assert_eq!(metrics.policy.reloads_with("error"), 1);
    }

    #[test]
    fn dns_names_resolve_into_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.cedar"),
            "@id(\"local\")\npermit(principal, action, resource) when { resource.name == \"local\" };",
        )
        .unwrap();
        let target: TargetSpec =
            toml::from_str("name = \"local\"\ndns_names = [\"localhost\"]\nports = [8080]\n")
                .unwrap();
        let metrics = Metrics::new();
        let enforcer = Enforcer::load(
            dir.path(),
            None,
            settings(Mode::Enforce, vec![target]),
            metrics.policy.clone(),
        )
        .unwrap();
        let local = enforcer.snapshot().decide_connect(Subject::new(
            &principal(),
            &Process::default(),
            "127.0.0.1:8080".parse().unwrap(),
        ));
        assert_eq!(local.target, "local");
        assert!(!local.blocks(), "{local:?}");
        let other = enforcer.snapshot().decide_connect(Subject::new(
            &principal(),
            &Process::default(),
            "192.0.2.1:8080".parse().unwrap(),
        ));
        assert_eq!(other.target, "(unknown)");
        assert!(other.blocks());
    }

    #[test]
    fn reload_rereads_targets_and_mode_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(
            policies.join("a.cedar"),
            "@id(\"db\")\npermit(principal, action, resource) when { resource.name == \"db\" };",
        )
        .unwrap();
        let config_path = dir.path().join("agent.toml");
        let write_config = |port: u16, mode: &str, masked: &str| {
            std::fs::write(
                &config_path,
                format!(
                    "[policy]\ndir = \"{}\"\nmode = \"{mode}\"\n[[targets]]\nname = \"db\"\n\
                     cidrs = [\"127.0.0.1/32\"]\nports = [{port}]\n\
                     [[masking.rules]]\ncolumns = [\"{masked}\"]\n",
                    policies.display()
                ),
            )
            .unwrap();
        };
        let masked = |enforcer: &Enforcer| -> Vec<String> {
            enforcer
                .snapshot()
                .masking()
                .rules
                .iter()
                .flat_map(|rule| rule.columns.clone())
                .collect()
        };
        write_config(5432, "enforce", "ssn");
        let config = Config::from_file(&config_path).unwrap();
        let metrics = Metrics::new();
        let enforcer = Enforcer::load(
            &policies,
            Some(&config_path),
            Settings::from_config(&config),
            metrics.policy.clone(),
        )
        .unwrap();
        let to = |port: u16| {
            enforcer.snapshot().decide_connect(Subject::new(
                &principal(),
                &Process::default(),
                SocketAddr::from(([127, 0, 0, 1], port)),
            ))
        };
        assert!(!to(5432).blocks());
        assert!(to(6432).blocks());
        assert_eq!(masked(&enforcer), ["ssn"]);
        let generation = enforcer.generation();

        std::thread::sleep(std::time::Duration::from_millis(20));
        write_config(6432, "audit", "*token*");
        assert!(enforcer.changed_on_disk(), "a config change is a change");
        enforcer.reload().unwrap();
        assert!(enforcer.generation() > generation);
        assert_eq!(masked(&enforcer), ["*token*"], "masking is reloaded too");
        assert!(!to(6432).blocks(), "the target moved to 6432");
        assert_eq!(enforcer.mode(), Mode::Audit);
        assert!(!to(5432).blocks(), "audit mode never blocks");
        assert_eq!(to(5432).label(), "would_deny");

        std::fs::write(&config_path, "[policy]\nmode = 3\n").unwrap();
        let error = enforcer.reload().unwrap_err().to_string();
        assert!(error.contains("agent.toml:2:8"), "{error}");
        assert!(error.contains("policy.mode"), "{error}");
        assert_eq!(
            enforcer.mode(),
            Mode::Audit,
            "the previous set stays in force"
        );
        assert!(!to(6432).blocks());
        assert_eq!(masked(&enforcer), ["*token*"]);

        // A masking rule the config check rejects is a failed reload, too.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_config(6432, "audit", "x");
        let text = std::fs::read_to_string(&config_path)
            .unwrap()
            .replace("columns = [\"x\"]", "columns = []");
        std::fs::write(&config_path, text).unwrap();
        let error = enforcer.reload().unwrap_err().to_string();
        assert!(error.contains("masking.rules"), "{error}");
        assert_eq!(masked(&enforcer), ["*token*"]);
    }
}
