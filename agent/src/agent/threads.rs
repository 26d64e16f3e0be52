//! The agent's threads besides the data plane: the control plane (control socket,
//! admin, event reader, job watcher, reaper, map expiry, tamper guard, policy polling)
//! and the resolver's, with what they share: policy reloads and shutdown signals.
use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use super::{AgentControl, AgentError, runtime_err};
use crate::{
    admin::{self, AdminState},
    bpf::{self, ConnMaps},
    config::Config,
    control::ControlServer,
    enforce::Enforcer,
    jobs::JobRegistry,
    metrics::Metrics,
    record::{self, Recorder},
};

/// Reloads policy and tells the proxy workers, which re-decide live connections.
#[derive(Clone)]
pub(super) struct PolicyReload {
    pub(super) enforcer: Arc<Enforcer>,
    pub(super) udp: Arc<crate::udp::relay::Relay>,
    pub(super) unix: Arc<crate::unix::Gate>,
    pub(super) kernel: Arc<crate::kernel_path::KernelPath>,
    pub(super) notify: Arc<watch::Sender<u64>>,
    pub(super) interval: Duration,
}

impl PolicyReload {
    pub(super) fn run(&self) {
        if let Ok(reloaded) = self.enforcer.reload() {
            // The kernel's UDP decisions first: they take effect on the next datagram.
            self.udp.apply_policy();
            self.unix.refresh();
            self.kernel.reloaded();
            let _ = self.notify.send(reloaded.generation);
        }
    }
}

/// SIGTERM and SIGINT stop the agent; SIGHUP reloads policy.
pub(super) struct ShutdownSignals {
    streams: Option<[tokio::signal::unix::Signal; 3]>,
}

impl ShutdownSignals {
    pub(super) fn register() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Some([term, int, hup]),
            _ => {
                tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
                None
            }
        };
        Self { streams }
    }

    /// Waits for SIGTERM or SIGINT; calls `on_hup` for each SIGHUP.
    pub(super) async fn wait(&mut self, on_hup: impl Fn()) {
        let Some([term, int, hup]) = self.streams.as_mut() else {
            std::future::pending::<()>().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading policy");
                    on_hup();
                }
            }
        }
    }
}

/// Tollgate's own links were found detached, replaced or unpinned: one event, one count,
/// and `/readyz` fails unless only pins were removed (and put back).
fn report_tampering(
    problems: &[String],
    admin: &AdminState,
    recorder: &Recorder,
    metrics: &Metrics,
) {
    let detail = problems.join("; ");
    let repaired = problems.iter().all(|p| p.ends_with("(pinned again)"));
    tracing::error!(%detail, "Tollgate's eBPF links were tampered with");
    metrics.bpf.tampering.inc();
    if !repaired {
        *admin.tampered.lock().unwrap_or_else(|e| e.into_inner()) = Some(detail.clone());
    }
    crate::events::record_event(
        recorder,
        &metrics.jobs,
        record::EventRecord {
            at: record::now_ms(),
            kind: "tampering".to_owned(),
            action: if repaired { "repaired" } else { "recorded" }.to_owned(),
            detail,
            ..record::EventRecord::default()
        },
    );
}

/// The resolver's and the UDP relay's thread: one current-thread runtime serving the
/// UDP sockets until shutdown.
pub(super) fn spawn_resolver(
    resolver: Arc<crate::dns::server::Resolver>,
    udp: Arc<crate::udp::relay::Relay>,
    sockets: Vec<std::net::UdpSocket>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, AgentError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(runtime_err("dns"))?;
    std::thread::Builder::new()
        .name("tollgate-dns".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for socket in sockets {
                    match tokio::net::UdpSocket::from_std(socket) {
                        Ok(socket) => {
                            tasks.spawn(udp.clone().serve(Arc::new(socket), None));
                        }
                        Err(error) => {
                            tracing::error!(%error, "UDP socket; jobs' DNS and UDP go unanswered");
                        }
                    }
                }
                // What ended jobs resolved is forgotten now and then; quiet flows end.
                let mut forget = tokio::time::interval(Duration::from_secs(30));
                let mut sweep = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = forget.tick() => resolver.forget_ended(),
                        _ = sweep.tick() => udp.sweep(),
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                }
                udp.close_all();
                drop(resolver);
                tasks.shutdown().await;
            });
        })
        .map_err(runtime_err("dns"))
}

/// Reads the host's bound unix sockets again now and then, so that their verdicts are
/// in the kernel before a job connects to one.
async fn unix_refresh(gate: Arc<crate::unix::Gate>) {
    let mut tick = tokio::time::interval(gate.refresh_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gate = gate.clone();
        let _ = tokio::task::spawn_blocking(move || gate.refresh()).await;
    }
}

/// What the control-plane thread serves and looks after.
pub(super) struct ControlPlane {
    pub(super) handler: Arc<AgentControl>,
    pub(super) admin_state: Arc<AdminState>,
    pub(super) jobs: Arc<JobRegistry>,
    pub(super) maps: Arc<ConnMaps>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) reload: PolicyReload,
    pub(super) events: crate::events::EventReader,
    pub(super) scanner: crate::sockets::scan::Scanner,
    pub(super) recorder: Recorder,
    pub(super) guard: bpf::Guard,
    pub(super) refusals: Option<Arc<crate::proxy::refusals::Remembered>>,
    pub(super) kernel: Arc<crate::kernel_path::KernelPath>,
    /// The programs' rare-event log, forwarded to the agent's log.
    pub(super) kernel_log: Option<bpf::KernelLogger>,
}

pub(super) fn spawn_control_plane(
    config: &Config,
    parts: ControlPlane,
    mut shutdown: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, AgentError> {
    let ControlPlane {
        handler,
        admin_state,
        jobs,
        maps,
        metrics,
        reload,
        events,
        scanner,
        recorder,
        guard,
        refusals,
        kernel,
        kernel_log,
    } = parts;
    let scan_interval = config.sockets.scan_interval;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(runtime_err("control"))?;
    let admin_addr = config.admin.listen;
    let admin = rt
        .block_on(tokio::net::TcpListener::bind(admin_addr))
        .map_err(|source| AgentError::Admin {
            addr: admin_addr,
            source,
        })?;
    if !config.admin_is_loopback() {
        tracing::warn!(%admin_addr, "admin listener is reachable from other hosts");
    }
    let group = match &config.control.group {
        Some(name) => Some(
            crate::accounts::gid_of(name)
                .map_err(|e| AgentError::Group(name.clone(), e.to_string()))?
                .ok_or_else(|| AgentError::Group(name.clone(), "no such group".to_owned()))?,
        ),
        None => None,
    };
    let control = rt.block_on(ControlServer::bind(
        &config.control.socket,
        group,
        config.control.allowed_uids.clone(),
        config.control.allowed_gids.clone(),
        metrics.control.clone(),
    ))?;
    let socket_path = control.path().to_owned();
    let stale_after = config.bpf.stale_after;
    std::thread::Builder::new()
        .name("tollgate-control".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::spawn(admin::serve(admin, admin_state.clone()));
                tokio::spawn(control.serve(handler));
                tokio::spawn(events.run());
                if let Some(kernel_log) = kernel_log {
                    tokio::spawn(bpf::forward_kernel_log(kernel_log));
                }
                tokio::spawn(unix_refresh(reload.unix.clone()));
                if let Some(refusals) = refusals {
                    tokio::spawn(refusals.watch());
                }
                // The heartbeat beats where the events are read: a stuck control plane
                // records nothing, so the kernel path stops with it.
                tokio::spawn(async move {
                    let mut beat = tokio::time::interval(crate::kernel_path::HEARTBEAT_INTERVAL);
                    loop {
                        beat.tick().await;
                        kernel.beat();
                    }
                });
                tokio::spawn(crate::events::watch_jobs(
                    scanner,
                    jobs.clone(),
                    recorder.clone(),
                    metrics.jobs.clone(),
                    scan_interval,
                ));
                let mut reap = tokio::time::interval(Duration::from_secs(1));
                let mut watch_links = tokio::time::interval(Duration::from_millis(500));
                let mut reported: Vec<String> = Vec::new();
                let mut expire = tokio::time::interval(Duration::from_secs(10));
                let mut policy_poll = tokio::time::interval(reload.interval);
                loop {
                    tokio::select! {
                        _ = policy_poll.tick() => {
                            let reload = reload.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                if reload.enforcer.changed_on_disk() {
                                    tracing::info!("policy files changed: reloading");
                                    reload.run();
                                }
                            })
                            .await;
                        }
                        _ = watch_links.tick() => {
                            let problems = guard.check();
                            if !problems.is_empty() && problems != reported {
                                report_tampering(&problems, &admin_state, &recorder, &metrics);
                            }
                            reported = problems;
                        }
                        _ = reap.tick() => {
                            let jobs = jobs.clone();
                            let _ = tokio::task::spawn_blocking(move || jobs.reap()).await;
                        }
                        _ = expire.tick() => {
                            let maps = maps.clone();
                            let expired = tokio::task::spawn_blocking(move || {
                                maps.expire_stale(stale_after, crate::sockets::tcp_diag::endpoints)
                            })
                            .await;
                            match expired {
                                Ok(Ok((0, 0))) => {}
                                Ok(Ok((n, kept))) => {
                                    metrics.bpf.expired.inc_by(n as u64);
                                    if n > 0 {
                                        tracing::warn!(expired = n, kept, "expired unclaimed connection entries");
                                    } else {
                                        tracing::debug!(kept, "old connection entries still queued");
                                    }
                                }
                                Ok(Err(error)) => tracing::warn!(%error, "expiring connection entries"),
                                Err(error) => tracing::warn!(%error, "expiring connection entries"),
                            }
                        }
                        _ = shutdown.wait_for(|stop| *stop) => break,
                    }
                }
            });
            let _ = std::fs::remove_file(&socket_path);
        })
        .map_err(runtime_err("control"))
}
