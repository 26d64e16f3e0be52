//! The review console: `tollgate console` serves a web UI and a JSON API (`/api/v1`)
//! over this host's store or the fleet's central store. Reviewers sign in with OIDC;
//! decisions on approval requests go through this host's agent, which records the
//! reviewer's OIDC identity. docs/console.md.
mod api;
mod assets;
mod auth;
mod filter;
mod http;
mod live;
mod oidc;
mod source;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::net::TcpListener;

pub use source::{CentralSource, LocalSource, Source};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "the console has no sign-in: set [console.oidc] in the config, or pass \
         --dev-insecure-local (loopback only)"
    )]
    NoSignIn,
    #[error("--dev-insecure-local needs a loopback listener, not {0}")]
    DevNotLoopback(SocketAddr),
    #[error("plain HTTP on {0} is for loopback only: set console.tls_cert and console.tls_key")]
    PlainNotLoopback(SocketAddr),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("console TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    SignIn(#[from] oidc::SignInError),
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What `tollgate console` was asked to do.
pub struct Options {
    pub listen: SocketAddr,
    pub source: Source,
    pub config: Config,
    /// Sign everyone in as a local admin (loopback only; a banner says so).
    pub dev_insecure_local: bool,
    /// The agent's control socket, through which decisions are made.
    pub control_socket: PathBuf,
}

/// Everything a request may need.
pub struct Console {
    source: Source,
    sign_in: SignIn,
    sessions: auth::Sessions,
    control_socket: PathBuf,
    live: live::Live,
    /// Whether the console serves HTTPS itself.
    tls: bool,
}

enum SignIn {
    Oidc(Box<oidc::Provider>),
    /// `--dev-insecure-local`: every request is this reviewer's; the CSRF token is fixed
    /// for the process.
    Dev {
        reviewer: auth::Reviewer,
        csrf: String,
    },
}

/// Serves until SIGINT or SIGTERM.
pub fn run(options: Options) -> Result<(), ConsoleError> {
    let Options {
        listen,
        source,
        config,
        dev_insecure_local,
        control_socket,
    } = options;
    let tls = match (&config.console.tls_cert, &config.console.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key)?),
        _ => None,
    };
    if tls.is_none() && !listen.ip().is_loopback() {
        return Err(ConsoleError::PlainNotLoopback(listen));
    }
    let sessions = auth::Sessions::new(config.console.session_ttl, config.console.max_sessions);
    let sign_in = if dev_insecure_local {
        if !listen.ip().is_loopback() {
            return Err(ConsoleError::DevNotLoopback(listen));
        }
        tracing::warn!("--dev-insecure-local: everyone who reaches {listen} is signed in as admin");
        SignIn::Dev {
            reviewer: auth::Reviewer {
                issuer: "dev-insecure-local".to_owned(),
                subject: "dev".to_owned(),
                login: "dev-local".to_owned(),
                name: Some("Local developer (insecure)".to_owned()),
                email: None,
                role: auth::Role::Admin,
            },
            csrf: sessions.token(),
        }
    } else {
        let oidc = config.console.oidc.as_ref().ok_or(ConsoleError::NoSignIn)?;
        SignIn::Oidc(Box::new(oidc::Provider::discover(
            oidc,
            &config.console.roles,
        )?))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tollgate-console")
        .enable_all()
        .build()
        .map_err(ConsoleError::Runtime)?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ConsoleError::Listen {
                addr: listen,
                source,
            })?;
        let bound = listener.local_addr().unwrap_or(listen);
        let console = Arc::new(Console {
            live: live::Live::start(),
            source,
            sign_in,
            sessions,
            control_socket,
            tls: tls.is_some(),
        });
        live::watch(console.clone());
        if let Source::Local(local) = &console.source {
            local.keep_text_index();
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            url = %format!("{scheme}://{bound}/"),
            source = %console.source.describe(),
            "console listening"
        );
        // Tests and scripts read the bound address from this line.
        println!("console listening on {scheme}://{bound}/");
        tokio::select! {
            () = http::serve(listener, tls, console) => {}
            () = shutdown() => tracing::info!("console stopping"),
        }
        Ok(())
    })
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
