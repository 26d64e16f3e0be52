//! `tollgate central migrate|enroll-host|prune` and `tollgate audit verify`.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::output;
use crate::{
    central::{Target, admin, query, schema},
    config::Config,
    record::{
        checkpoint::HostKey,
        now_ms,
        verify::{self, Report},
    },
};

/// Where the central store is: `--url`, else the config's `[central] url`.
#[derive(Args)]
pub struct StoreArgs {
    /// The central store [default: the config's central.url].
    #[arg(long)]
    url: Option<String>,
    /// A file holding the store's password [default: the config's central.password_file].
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Config file [default: /etc/tollgate/agent.toml if it exists, else built-in].
    #[arg(long)]
    config: Option<PathBuf>,
}

impl StoreArgs {
    fn target(&self, config: &Config) -> anyhow::Result<Target> {
        let url = self
            .url
            .as_deref()
            .or(config.central.url.as_deref())
            .context("no central store: pass --url or set [central] url in the config")?;
        let password = self
            .password_file
            .as_deref()
            .or(config.central.password_file.as_deref());
        Ok(Target::parse(url, password)?)
    }
}

/// `--central URL [--host H]`: read the fleet's records from the central store.
#[derive(Args)]
pub struct FleetArgs {
    /// Read from this central store (every host's records) instead of this host's agent.
    #[arg(long)]
    central: Option<String>,
    /// With --central: only this host's.
    #[arg(long, requires = "central")]
    host: Option<String>,
    /// With --central: the config whose central.password_file applies.
    #[arg(long = "central-config", requires = "central")]
    central_config: Option<PathBuf>,
}

impl FleetArgs {
    pub fn is_central(&self) -> bool {
        self.central.is_some()
    }

    fn target(&self) -> anyhow::Result<Target> {
        let (config, _) = Config::load(self.central_config.as_deref())?;
        let url = self.central.as_deref().context("--central URL")?;
        Ok(Target::parse(url, config.central.password_file.as_deref())?)
    }
}

pub fn sessions(
    fleet: &FleetArgs,
    job: Option<&str>,
    limit: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let target = fleet.target()?;
    let sessions = runtime()?.block_on(async {
        let client = target.connect().await?;
        query::sessions(&client, fleet.host.as_deref(), job, limit).await
    })?;
    output::fleet_sessions(&sessions, json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn session(fleet: &FleetArgs, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let target = fleet.target()?;
    let session = runtime()?.block_on(async {
        let client = target.connect().await?;
        query::session(&client, fleet.host.as_deref(), id).await
    })?;
    output::fleet_session(&session, json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn audit_list(fleet: &FleetArgs, limit: u32, json: bool) -> anyhow::Result<ExitCode> {
    let target = fleet.target()?;
    let entries = runtime()?.block_on(async {
        let client = target.connect().await?;
        query::audit(&client, fleet.host.as_deref(), limit).await
    })?;
    output::fleet_audit(&entries, json)?;
    Ok(ExitCode::SUCCESS)
}

pub fn approvals(
    fleet: &FleetArgs,
    pending: bool,
    limit: u32,
) -> anyhow::Result<Vec<query::Hosted<crate::approvals::ApprovalRecord>>> {
    let target = fleet.target()?;
    Ok(runtime()?.block_on(async {
        let client = target.connect().await?;
        query::approvals(&client, fleet.host.as_deref(), pending, limit).await
    })?)
}

pub fn approval(
    fleet: &FleetArgs,
    id: &str,
) -> anyhow::Result<query::Hosted<crate::approvals::ApprovalRecord>> {
    let target = fleet.target()?;
    Ok(runtime()?.block_on(async {
        let client = target.connect().await?;
        query::approval(&client, id).await
    })?)
}

#[derive(Subcommand)]
pub enum CentralCommand {
    /// Create the central store's schema, or upgrade it to this version's.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Register this host's checkpoint key with the central store (once per host, by an
    /// operator; the agent creates the key at its first start).
    EnrollHost {
        #[command(flatten)]
        store: StoreArgs,
        /// Replace a key enrolled earlier under this host's name.
        #[arg(long)]
        replace: bool,
    },
    /// Delete central records chained longer ago than a duration (every host's).
    Prune {
        #[command(flatten)]
        store: StoreArgs,
        /// E.g. 365d.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the record chain against its signed checkpoints: content, order and
    /// completeness. Names the first record that fails; exits non-zero on failure.
    Verify {
        /// Verify the central store's copy (every enrolled host) instead of this host's.
        #[arg(long)]
        central: Option<String>,
        /// Only this host (central).
        #[arg(long)]
        host: Option<String>,
        /// Only records chained since then: a duration ago (24h) or a time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Config file [default: /etc/tollgate/agent.toml if it exists, else built-in].
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn central(command: CentralCommand) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    match command {
        CentralCommand::Migrate { store } => {
            let (config, _) = Config::load(store.config.as_deref())?;
            let target = store.target(&config)?;
            let (before, after) = runtime.block_on(async {
                let mut client = target.connect().await?;
                schema::migrate(&mut client).await
            })?;
            if before == after {
                println!("{}: schema is at version {after}", target.shown());
            } else {
                println!(
                    "{}: schema migrated from version {before} to {after}",
                    target.shown()
                );
            }
        }
        CentralCommand::EnrollHost { store, replace } => {
            let (config, _) = Config::load(store.config.as_deref())?;
            let target = store.target(&config)?;
            let path = config.host_key_path();
            let key = HostKey::load(&path).with_context(|| {
                format!(
                    "reading this host's key at {} (the agent creates it at its first start)",
                    path.display()
                )
            })?;
            let host = config.central.host_name();
            let by = format!(
                "uid {} on {}",
                nix::unistd::getuid(),
                nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            let outcome = runtime.block_on(async {
                let client = target.connect().await?;
                admin::enroll(&client, &host, key.public(), &by, replace).await
            })?;
            let key_hex = crate::record::chain::hex(key.public());
            match outcome {
                admin::Enrolled::New => println!("enrolled host {host} (key {key_hex})"),
                admin::Enrolled::Already => {
                    println!("host {host} is already enrolled with this key ({key_hex})")
                }
                admin::Enrolled::Replaced => {
                    println!("replaced the key of host {host} (now {key_hex})")
                }
            }
        }
        CentralCommand::Prune {
            store,
            older_than,
            json,
        } => {
            let (config, _) = Config::load(store.config.as_deref())?;
            let target = store.target(&config)?;
            let before = now_ms().saturating_sub(older_than.as_millis() as i64);
            let pruned = runtime.block_on(async {
                let mut client = target.connect().await?;
                admin::prune(&mut client, before).await
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pruned)?);
            } else if pruned.is_empty() {
                println!(
                    "nothing older than {}",
                    humantime::format_duration(older_than)
                );
            } else {
                for p in &pruned {
                    println!(
                        "host {}: {} records removed (up to #{})",
                        p.host, p.records, p.upto
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since`: a duration ago, or an RFC 3339 time; milliseconds since the epoch.
fn since_ms(since: &str) -> anyhow::Result<i64> {
    if let Ok(ago) = humantime::parse_duration(since) {
        return Ok(now_ms().saturating_sub(ago.as_millis() as i64));
    }
    let at = humantime::parse_rfc3339_weak(since)
        .with_context(|| format!("--since {since:?}: expected a duration (24h) or a time"))?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

pub fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify {
        central,
        host,
        since,
        config,
        json,
    } = command;
    let (config, _) = Config::load(config.as_deref())?;
    let since = since.as_deref().map(since_ms).transpose()?;
    let reports = match central {
        Some(url) => {
            let target = Target::parse(&url, config.central.password_file.as_deref())?;
            runtime()?.block_on(async {
                let client = target.connect().await?;
                admin::verify(&client, host.as_deref(), since).await
            })?
        }
        None => {
            let path = config.host_key_path();
            let key = HostKey::load(&path)
                .with_context(|| format!("reading this host's key at {}", path.display()))?;
            let db = config.recording_path();
            let host = host.unwrap_or_else(|| config.central.host_name());
            vec![
                verify::local::verify(&db, &host, key.public(), since)
                    .with_context(|| format!("reading {}", db.display()))?,
            ]
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            println!("{}", line(report));
        }
    }
    Ok(if reports.iter().all(Report::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn line(r: &Report) -> String {
    let span = match (r.first, r.last) {
        (Some(first), Some(last)) => format!(" (#{first}..#{last})"),
        _ => String::new(),
    };
    let signed = match r.latest_checkpoint {
        Some((seq, records)) => format!(
            "{} checkpoints, the latest ({seq}) covering #{records}; {} records after it not yet \
             signed",
            r.checkpoints, r.unsigned_tail
        ),
        None => "no checkpoint yet".to_owned(),
    };
    match &r.failure {
        None => format!("host {}: ok: {} records{span}, {signed}", r.host, r.records),
        Some(f) => format!(
            "host {}: FAILED: {f} ({} records verified before it)",
            r.host, r.records
        ),
    }
}
