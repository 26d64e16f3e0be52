//! `tollgate console`: the review console's web UI and API.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Args;

use crate::{
    central::Target,
    config::Config,
    console::{CentralSource, LocalSource, Options, Source},
};

#[derive(Args)]
pub struct ConsoleArgs {
    /// Address to listen on [default: console.listen, 127.0.0.1:9480].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Read the fleet's central store [default: central.url if set].
    #[arg(long, value_name = "URL", conflicts_with = "store")]
    central: Option<String>,
    /// Read this host's recording store [default: the config's recording path].
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// Config with [console], [central] and the state directory [default:
    /// /etc/tollgate/agent.toml if it exists, else built-in].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Sign everyone in as a local admin, without OIDC (loopback listeners only; every
    /// page shows a banner).
    #[arg(long)]
    dev_insecure_local: bool,
}

pub fn run(args: ConsoleArgs, control_socket: PathBuf) -> anyhow::Result<ExitCode> {
    let (config, source) = Config::load(args.config.as_deref())?;
    super::init_logging(&config);
    tracing::info!(config = %source, "console config");
    let central = args.central.clone().or_else(|| {
        args.store
            .is_none()
            .then(|| config.central.url.clone())
            .flatten()
    });
    let source = match central {
        Some(url) => Source::Central(Box::new(CentralSource::new(
            Target::parse(&url, config.central.password_file.as_deref()).context("--central")?,
        ))),
        None => {
            let db = args
                .store
                .clone()
                .unwrap_or_else(|| config.recording_path());
            if !db.exists() {
                anyhow::bail!(
                    "no recording store at {} (the agent creates it; or pass --store or --central)",
                    db.display()
                );
            }
            Source::Local(LocalSource::new(
                db,
                config.central.host_name(),
                config.host_key_path(),
            ))
        }
    };
    let listen = args.listen.unwrap_or(config.console.listen);
    crate::console::run(Options {
        listen,
        source,
        config,
        dev_insecure_local: args.dev_insecure_local,
        control_socket,
    })?;
    Ok(ExitCode::SUCCESS)
}
