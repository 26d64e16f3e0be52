//! The daemon: wires the subsystems together, runs the data plane on a worker pool and
//! the control plane (control socket, admin, reaper, map expiry) on its own thread.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use tokio::sync::watch;

mod requests;
mod threads;
use requests::{AgentControl, StatusBase};
use threads::{ControlPlane, PolicyReload, ShutdownSignals, spawn_control_plane, spawn_resolver};

use crate::{
    admin::AdminState,
    bpf::{self, Attachment, BpfError, ProxyTarget},
    cgroup::{self, CgroupError, CgroupTree},
    config::{Config, Source},
    control::ControlError,
    enforce::{EnforceError, Enforcer, Settings},
    enroll::Enrollment,
    identity::oidc::Verifier,
    jobs::{JobError, JobRegistry},
    metrics::{JobEndLabel, Metrics},
    proxy::{Listeners, ProxyError, Shared},
    record::{self, RecordError, Store},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    HostKey(#[from] record::checkpoint::KeyError),
    #[error(transparent)]
    Jobs(#[from] JobError),
    #[error(transparent)]
    Policy(#[from] EnforceError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Tls(#[from] crate::postgres::tls::TlsError),
    #[error("control.group `{0}`: {1}")]
    Group(String, String),
    #[error("admin listener {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the resolver's UDP port {port} (proxy.port) on loopback: {source}")]
    Dns {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the {what} runtime: {source}")]
    Runtime {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent must run as root (it attaches eBPF programs and manages cgroups)")]
    NotRoot,
    #[error("an agent is running on {0}; stop it before cleaning up")]
    Running(PathBuf),
    #[error("an agent is already running on {0}")]
    AlreadyRunning(PathBuf),
}

fn cgroup_tree(config: &Config) -> Result<CgroupTree, AgentError> {
    let mount = match &config.cgroup.mount {
        Some(mount) => mount.clone(),
        None => cgroup::find_cgroup2_mount()?,
    };
    Ok(CgroupTree::new(mount, &config.cgroup.parent))
}

fn runtime_err(what: &'static str) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Runtime { what, source }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: Config, source: Source) -> Result<(), AgentError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(AgentError::NotRoot);
    }
    // Before binding anything: a second agent would share the proxy port (SO_REUSEPORT)
    // and take connections from the running one.
    if std::os::unix::net::UnixStream::connect(&config.control.socket).is_ok() {
        return Err(AgentError::AlreadyRunning(config.control.socket.clone()));
    }
    // Signal handlers first, so SIGTERM during startup is a clean stop.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(runtime_err("signal"))?;
    let mut shutdown_signals = signals.block_on(async { ShutdownSignals::register() });
    tracing::info!(
        config = %source,
        effective = %toml::to_string(&config).unwrap_or_default().replace('\n', " "),
        "starting tollgate agent {}",
        env!("CARGO_PKG_VERSION")
    );
    raise_fd_limit();
    let metrics = Arc::new(Metrics::new());
    // Policy first: an invalid set stops the agent before it attaches anything.
    let config_file = match &source {
        Source::File(path) => Some(path.as_path()),
        Source::BuiltIn => None,
    };
    let enforcer = Arc::new(Enforcer::load(
        &config.policy.dir,
        config_file,
        Settings::from_config(&config),
        metrics.policy.clone(),
    )?);
    if enforcer.configured() {
        tracing::info!(
            dir = %config.policy.dir.display(),
            policies = enforcer.policy_count(),
            mode = ?config.policy.mode,
            targets = config.targets.len(),
            "policy loaded"
        );
    } else {
        tracing::warn!(
            dir = %config.policy.dir.display(),
            "no policy directory: every connection of a job is allowed (and recorded)"
        );
    }
    let (policy_tx, policy_rx) = watch::channel(enforcer.generation());
    let policy_tx = Arc::new(policy_tx);
    let tree = cgroup_tree(&config)?;
    tree.ensure_parent()?;

    let db_path = config.recording_path();
    let host_key = Arc::new(record::checkpoint::HostKey::load_or_create(
        &config.host_key_path(),
    )?);
    let (recorder, writer) = record::writer::spawn(
        &db_path,
        record::writer::WriterOptions {
            capacity: config.recording.queue_capacity,
            batch_size: config.recording.batch_size,
            flush_interval: config.recording.flush_interval,
            retention: config.recording.retention,
            durable: config.recording.durable,
            signer: Some(record::writer::Signer {
                host: config.central.host_name(),
                key: host_key.clone(),
                interval: config.central.checkpoint_interval,
            }),
            shipping: config.central.url.is_some(),
        },
        metrics.record.clone(),
    )?;
    let recording_gate = recorder.gate(config.recording.strict);
    let central = crate::central::target(&config);
    let shipper = central.clone().and_then(|target| {
        crate::central::start(
            &config,
            target,
            &db_path,
            recording_gate.clone(),
            metrics.central.clone(),
        )
    });
    recorder.record(record::RecordEvent::CloseDangling {
        at: record::now_ms(),
    });
    let store = Store::open(&db_path)?;
    let jobs = Arc::new(JobRegistry::new(
        tree.clone(),
        recorder.clone(),
        metrics.jobs.clone(),
        config.bpf.stale_after,
    ));
    let report = jobs.adopt(&store)?;
    tracing::info!(
        adopted = ?report.adopted,
        lost = ?report.lost,
        removed = ?report.unknown_removed,
        "jobs re-adopted"
    );

    let workers = if config.proxy.workers == 0 {
        // Measured in docs/benchmarks.md (2026-12-03): on two CPUs, one worker costs the
        // L7 path 41 us of agent CPU per pgbench transaction, where two cost 57 us.
        default_workers(std::thread::available_parallelism().map_or(2, |n| n.get()))
    } else {
        config.proxy.workers
    };
    let listeners = Listeners::bind(
        config.proxy.port,
        config.proxy.ipv4,
        config.proxy.ipv6,
        workers,
    )?;
    let bpf::Installed {
        maps,
        events,
        unix_rules,
        refusals,
        verdicts,
        attachment,
        mut coverage,
        kernel_log,
    } = bpf::install(
        &config.bpf.pin_dir,
        tree.parent(),
        ProxyTarget {
            port: config.proxy.port,
            ipv4: config.proxy.ipv4,
            ipv6: config.proxy.ipv6,
        },
        &config.sockets.kinds(),
        config.bpf.events_ring_bytes,
        config.bpf.log,
    )?;
    let maps = Arc::new(maps);
    let refusals = crate::proxy::refusals::Remembered::new(
        refusals,
        config.proxy.refusal_memory,
        jobs.clone(),
        recorder.clone(),
        metrics.jobs.clone(),
    );
    let moves_watch = bpf::watch_moves(&config.bpf.pin_dir);
    coverage.cgroup_moves = moves_watch.is_some();
    let guard = bpf::Guard::new(
        &config.bpf.pin_dir,
        crate::cgroup::cgroup_id(tree.parent())?,
    )?;
    tracing::info!(
        listeners = ?listeners.local_addrs(),
        cgroup_parent = %tree.parent().display(),
        pin_dir = %config.bpf.pin_dir.display(),
        ?attachment,
        socket_families_decided = coverage.socket_families,
        outside_sockets = ?coverage.outside_sockets,
        unix_sockets_decided = coverage.unix_sockets,
        "interception active"
    );
    // The unix verdicts are in the kernel before the first job runs, and again before
    // anything runs in each new job.
    let unix = Arc::new(crate::unix::Gate::new(
        config.unix.clone(),
        unix_rules,
        jobs.clone(),
        enforcer.clone(),
        recorder.clone(),
        metrics.unix.clone(),
        metrics.jobs.clone(),
    ));
    unix.refresh();
    {
        let gate = Arc::downgrade(&unix);
        jobs.on_change(Box::new(move || {
            if let Some(gate) = gate.upgrade() {
                gate.refresh();
            }
        }));
    }

    let kernel = crate::kernel_path::KernelPath::new(crate::kernel_path::Parts {
        enabled: config.proxy.kernel_verdicts,
        liveness: listeners.liveness(),
        maps: verdicts,
        jobs: jobs.clone(),
        enforcer: enforcer.clone(),
        recorder: recorder.clone(),
        gate: recording_gate.clone(),
        metrics: metrics.kernel.clone(),
        proxy_metrics: metrics.proxy.clone(),
        policy_metrics: metrics.policy.clone(),
    });
    {
        let kernel = Arc::downgrade(&kernel);
        jobs.on_change(Box::new(move || {
            if let Some(kernel) = kernel.upgrade() {
                kernel.jobs_changed();
            }
        }));
    }

    let approvals = Arc::new(crate::approvals::Approvals::new(
        &config.approvals,
        recorder.clone(),
        metrics.approvals.clone(),
    ));
    {
        // A job's `job`-scoped grants end with it.
        let (approvals, registry) = (Arc::downgrade(&approvals), Arc::downgrade(&jobs));
        jobs.on_change(Box::new(move || {
            if let (Some(approvals), Some(registry)) = (approvals.upgrade(), registry.upgrade()) {
                let live: Vec<String> = registry.list().iter().map(|j| j.id.clone()).collect();
                approvals.keep_jobs(&live);
            }
        }));
    }

    // Job processes are scanned for sockets from outside their job, and (without BPF
    // LSM) for other socket families.
    let scanner = crate::sockets::scan::Scanner::new(
        &config.sockets.kinds(),
        !coverage.socket_families,
        maps.clone(),
    );

    let resolver = Arc::new(crate::dns::server::Resolver::new(
        config.dns.clone(),
        jobs.clone(),
        enforcer.clone(),
        recorder.clone(),
        metrics.dns.clone(),
    ));
    let udp = Arc::new(crate::udp::relay::Relay::new(
        config.udp.clone(),
        maps.clone(),
        jobs.clone(),
        enforcer.clone(),
        recorder.clone(),
        metrics.udp.clone(),
        resolver.clone(),
        (config.proxy.ipv4, config.proxy.ipv6),
    ));
    udp.start();
    let events = crate::events::EventReader::new(
        events,
        jobs.clone(),
        recorder.clone(),
        metrics.jobs.clone(),
        udp.clone(),
        unix.clone(),
        kernel.clone(),
    )?;
    let dns_sockets =
        crate::dns::server::Resolver::bind(config.proxy.port, config.proxy.ipv4, config.proxy.ipv6)
            .map_err(|source| AgentError::Dns {
                port: config.proxy.port,
                source,
            })?;
    // The local CA: certificates for clients whose TLS the agent terminates.
    let local_tls = Arc::new(crate::postgres::tls::Tls::load(
        &config.state.dir,
        config.postgres.tls.clone(),
    )?);
    let shared = Arc::new(Shared::new(
        maps.clone(),
        jobs.clone(),
        enforcer.clone(),
        policy_rx,
        recorder.clone(),
        metrics.proxy.clone(),
        metrics.policy.clone(),
        config.proxy.clone(),
        recording_gate.clone(),
        config.postgres.clone(),
        local_tls.clone(),
        metrics.postgres.clone(),
        config.http.clone(),
        Arc::new(crate::http::tls::Https::new(local_tls, &config.http.tls)?),
        metrics.http.clone(),
        Arc::new(crate::mcp::Mcp::new(
            config.mcp.clone(),
            metrics.mcp.clone(),
            recorder.clone(),
        )),
        resolver.clone(),
        refusals.clone(),
        kernel.clone(),
        approvals.clone(),
    ));
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        maps: maps.clone(),
        gate: recording_gate.clone(),
        ready: false.into(),
        tampered: std::sync::Mutex::new(None),
    });
    let enrollment = Enrollment::new(
        jobs.clone(),
        Verifier::new(config.identity.issuers(), config.identity.timing()),
        [
            ("github", config.identity.github.runner_uids.clone()),
            ("gitlab", config.identity.gitlab.runner_uids.clone()),
        ]
        .into(),
        recorder.clone(),
        metrics.identity.clone(),
    );
    let handler = Arc::new(AgentControl {
        enrollment,
        jobs: jobs.clone(),
        enforcer: enforcer.clone(),
        store: Mutex::new(store),
        maps: maps.clone(),
        recorder: recorder.clone(),
        status: StatusBase {
            proxy_port: config.proxy.port,
            attachment: match attachment {
                Attachment::Fresh => "fresh",
                Attachment::Adopted => "adopted",
            },
            cgroup_parent: tree.parent().display().to_string(),
            pin_dir: config.bpf.pin_dir.display().to_string(),
            coverage,
        },
        kernel: kernel.clone(),
        approvals: approvals.clone(),
        fleet: central.and_then(|target| {
            crate::central::start_fleet(&config, target, host_key.clone(), approvals.clone())
        }),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let resolver_thread = spawn_resolver(resolver, udp.clone(), dns_sockets, shutdown_rx.clone())?;
    // SIGHUP (main thread) and file changes (control thread) reload the same way.
    let reload = PolicyReload {
        enforcer: enforcer.clone(),
        udp: udp.clone(),
        unix: unix.clone(),
        kernel: kernel.clone(),
        notify: policy_tx.clone(),
        interval: config.policy.reload_interval,
    };
    let control_thread = spawn_control_plane(
        &config,
        ControlPlane {
            handler,
            admin_state: admin_state.clone(),
            jobs: jobs.clone(),
            maps: maps.clone(),
            metrics: metrics.clone(),
            reload: reload.clone(),
            events,
            scanner,
            recorder: recorder.clone(),
            guard,
            refusals: refusals.clone(),
            kernel: kernel.clone(),
            kernel_log,
        },
        shutdown_rx.clone(),
    )?;

    admin_state.ready.store(true, Ordering::Relaxed);
    let workers = listeners.serve(shared, shutdown_rx, config.proxy.drain_timeout)?;
    signals.block_on(shutdown_signals.wait(|| reload.run()));
    tracing::info!("shutting down: draining connections (programs stay attached)");
    let _ = shutdown_tx.send(true);
    for worker in workers {
        if worker.join().is_err() {
            tracing::error!("proxy worker panicked");
        }
    }
    if control_thread.join().is_err() {
        tracing::error!("control plane thread panicked");
    }
    if resolver_thread.join().is_err() {
        tracing::error!("resolver thread panicked");
    }
    drop(moves_watch);
    drop(jobs);
    // Everything that holds a recorder goes before the writer is told to finish.
    drop(reload);
    drop(udp);
    drop(unix);
    drop(refusals);
    drop(approvals);
    // Verdicts stop counting with the heartbeat: the job's next connects are refused.
    kernel.stop();
    drop(kernel);
    drop(recorder);
    drop(admin_state);
    writer.shutdown();
    // The last records and checkpoint, if the central store takes them now.
    if let Some(shipper) = shipper {
        shipper.shutdown();
    }
    tracing::info!("stopped; job connects are refused until the agent is back");
    Ok(())
}

/// A proxy holds two descriptors per connection: raise the soft limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open-file limit"),
    }
}

/// `tollgate agent --cleanup`: kills and removes job cgroups, detaches and unpins the
/// programs, removes the parent cgroup and the control socket.
pub fn cleanup(config: &Config) -> Result<Vec<String>, AgentError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(AgentError::NotRoot);
    }
    let socket = &config.control.socket;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(AgentError::Running(socket.clone()));
    }
    let mut removed = Vec::new();
    let tree = cgroup_tree(config)?;
    let open_jobs = tree.list_jobs()?;
    if !open_jobs.is_empty() {
        // Close their records, so the store does not show them as running.
        let metrics = Metrics::new();
        let db_path = config.recording_path();
        if db_path.exists() {
            let signer = record::checkpoint::HostKey::load(&config.host_key_path())
                .ok()
                .map(|key| record::writer::Signer {
                    host: config.central.host_name(),
                    key: Arc::new(key),
                    interval: config.central.checkpoint_interval,
                });
            let (recorder, writer) = record::writer::spawn(
                &db_path,
                record::writer::WriterOptions {
                    capacity: 1024,
                    batch_size: 256,
                    flush_interval: Duration::ZERO,
                    signer,
                    shipping: config.central.url.is_some(),
                    ..Default::default()
                },
                metrics.record.clone(),
            )?;
            for (id, _, _) in &open_jobs {
                recorder.record(record::RecordEvent::JobEnded {
                    id: id.clone(),
                    ended_at: record::now_ms(),
                    exit: None,
                    reason: JobEndLabel::Cleanup.as_str().to_owned(),
                });
            }
            drop(recorder);
            writer.shutdown();
        }
    }
    // Kill the jobs before detaching, so nothing in them connects unintercepted.
    let cgroups = tree.remove_all(Duration::from_secs(10))?;
    let pins = bpf::uninstall(&config.bpf.pin_dir)?;
    removed.extend(
        cgroups
            .iter()
            .chain(&pins)
            .map(|path| path.display().to_string()),
    );
    if std::fs::remove_file(socket).is_ok() {
        removed.push(socket.display().to_string());
    }
    Ok(removed)
}

/// `proxy.workers = 0`: one data-plane worker per two CPUs, at least one.
fn default_workers(cpus: usize) -> usize {
    (cpus / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::default_workers;

    #[test]
    fn one_worker_per_two_cpus() {
        assert_eq!([1, 2, 3, 4, 16].map(default_workers), [1, 1, 1, 2, 8]);
    }
}
