//! The transparent proxy: loopback listeners that receive the connections the kernel
//! redirected, attribute each one from the kernel's record, decide it, and relay it to
//! its original destination.
pub(crate) mod access;
mod approval;
pub mod attribute;
mod connection;
pub mod handler;
pub mod hello;
mod live;
pub mod refusals;
mod relay;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{net::TcpListener, sync::watch};

use crate::{
    bpf::ConnMaps,
    enforce::Enforcer,
    jobs::JobRegistry,
    metrics::{PolicyMetrics, ProxyMetrics},
    record::Recorder,
};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding the proxy listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("starting a proxy worker thread: {source}")]
    Thread {
        #[source]
        source: io::Error,
    },
}

/// Everything a connection task needs, shared by all of them.
pub struct Shared {
    pub maps: Arc<ConnMaps>,
    pub jobs: Arc<JobRegistry>,
    pub enforcer: Arc<Enforcer>,
    /// The generation of the policy in force; workers re-decide live connections when
    /// it changes.
    pub policy_generation: watch::Receiver<u64>,
    pub recorder: Recorder,
    pub metrics: Arc<ProxyMetrics>,
    pub policy_metrics: Arc<PolicyMetrics>,
    /// `[proxy]`: upstream connect timeout, relay buffers, the wait for a ClientHello.
    pub proxy: crate::config::ProxyConfig,
    /// Whether recording lets new connections through.
    pub gate: crate::record::Gate,
    pub postgres: crate::config::PostgresConfig,
    pub tls: Arc<crate::postgres::tls::Tls>,
    pub postgres_metrics: Arc<crate::metrics::PostgresMetrics>,
    /// `[http]`: HTTP followed at L7.
    pub http: crate::http::HttpConfig,
    /// TLS for `tls = "terminate"` targets.
    pub https: Arc<crate::http::tls::Https>,
    pub http_metrics: Arc<crate::http::metrics::HttpMetrics>,
    /// MCP inside followed HTTP: its config, sessions and metrics.
    pub mcp: Arc<crate::mcp::Mcp>,
    /// DNS over TCP (connects to port 53) goes to the resolver.
    pub dns: Arc<crate::dns::server::Resolver>,
    /// Refusals of upstreams, remembered for the connect hook (None: off).
    pub refusals: Option<Arc<refusals::Remembered>>,
    /// Verdicts for the kernel path, offered once a connection is decided.
    pub kernel: Arc<crate::kernel_path::KernelPath>,
    /// Just-in-time approval of what policy holds for a reviewer.
    pub approvals: Arc<crate::approvals::Approvals>,
    live: AtomicUsize,
}

impl Shared {
    #[expect(
        clippy::too_many_arguments,
        reason = "plain constructor of shared state"
    )]
    pub fn new(
        maps: Arc<ConnMaps>,
        jobs: Arc<JobRegistry>,
        enforcer: Arc<Enforcer>,
        policy_generation: watch::Receiver<u64>,
        recorder: Recorder,
        metrics: Arc<ProxyMetrics>,
        policy_metrics: Arc<PolicyMetrics>,
        proxy: crate::config::ProxyConfig,
        gate: crate::record::Gate,
        postgres: crate::config::PostgresConfig,
        tls: Arc<crate::postgres::tls::Tls>,
        postgres_metrics: Arc<crate::metrics::PostgresMetrics>,
        http: crate::http::HttpConfig,
        https: Arc<crate::http::tls::Https>,
        http_metrics: Arc<crate::http::metrics::HttpMetrics>,
        mcp: Arc<crate::mcp::Mcp>,
        dns: Arc<crate::dns::server::Resolver>,
        refusals: Option<Arc<refusals::Remembered>>,
        kernel: Arc<crate::kernel_path::KernelPath>,
        approvals: Arc<crate::approvals::Approvals>,
    ) -> Self {
        Self {
            maps,
            jobs,
            enforcer,
            policy_generation,
            recorder,
            metrics,
            policy_metrics,
            proxy,
            gate,
            postgres,
            tls,
            postgres_metrics,
            http,
            https,
            http_metrics,
            mcp,
            dns,
            refusals,
            kernel,
            approvals,
            live: AtomicUsize::new(0),
        }
    }

    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// Bound proxy listeners: one set (IPv4 and, when the host has it, IPv6 loopback) per
/// worker thread, sharing the port through SO_REUSEPORT. Each worker runs its own
/// single-threaded runtime, so a connection is accepted, relayed and woken on one thread
/// with no cross-thread hand-offs.
pub struct Listeners {
    sets: Vec<Vec<std::net::TcpListener>>,
}

impl Listeners {
    pub fn bind(
        port: u16,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
        workers: usize,
    ) -> Result<Self, ProxyError> {
        let mut sets = Vec::with_capacity(workers);
        let mut ipv6_ok = true;
        for _ in 0..workers.max(1) {
            let mut set = Vec::new();
            for ip in [IpAddr::V4(ipv4), IpAddr::V6(ipv6)] {
                if ip.is_ipv6() && !ipv6_ok {
                    continue;
                }
                let addr = SocketAddr::new(ip, port);
                match bind(addr) {
                    Ok(listener) => set.push(listener),
                    Err(source)
                        if ip.is_ipv6() && source.kind() == io::ErrorKind::AddrNotAvailable =>
                    {
                        tracing::warn!(%addr, "IPv6 loopback unavailable; IPv6 job connects will fail");
                        ipv6_ok = false;
                    }
                    Err(source) => return Err(ProxyError::Bind { addr, source }),
                }
            }
            sets.push(set);
        }
        Ok(Self { sets })
    }

    /// One listening socket, open for as long as the workers run: the kernel's sign
    /// that this agent is alive.
    pub fn liveness(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        self.sets.first()?.first().map(|l| l.as_fd())
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sets
            .first()
            .map(|set| set.iter().filter_map(|l| l.local_addr().ok()).collect())
            .unwrap_or_default()
    }

    /// Starts one worker thread per listener set. Each accepts until `shutdown` flips,
    /// then waits up to `drain` for live connections; what is left is closed (and
    /// recorded) when its runtime is dropped.
    pub fn serve(
        self,
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) -> Result<Vec<std::thread::JoinHandle<()>>, ProxyError> {
        let mut threads = Vec::new();
        for (index, set) in self.sets.into_iter().enumerate() {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let thread =
                crate::runtime_thread::spawn(format!("tollgate-proxy-{index}"), move || {
                    worker(set, shared, shutdown, drain)
                })
                .map_err(|source| ProxyError::Thread { source })?;
            threads.push(thread);
        }
        Ok(threads)
    }
}

async fn worker(
    set: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut tasks = Vec::new();
    // Re-decide this worker's live connections after every policy reload.
    let revoker = {
        let shared = shared.clone();
        let mut generation = shared.policy_generation.clone();
        tokio::spawn(async move {
            while generation.changed().await.is_ok() {
                let revoked = live::revoke_denied(&shared.enforcer.snapshot());
                if revoked > 0 {
                    tracing::warn!(revoked, "policy reload revoked live connections");
                }
            }
        })
    };
    for listener in set {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "proxy listener");
                continue;
            }
        };
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            let shared = shared.clone();
                            shared.live.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(async move {
                                connection::handle(stream, peer, &shared).await;
                                shared.live.fetch_sub(1, Ordering::Relaxed);
                            });
                        }
                        Err(error) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::error!(%error, "proxy accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    },
                    _ = shutdown.changed() => break,
                }
            }
        }));
    }
    let _ = shutdown.wait_for(|stop| *stop).await;
    for task in tasks {
        let _ = task.await;
    }
    revoker.abort();
    let deadline = Instant::now() + drain;
    while shared.live_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if shared.live_connections() > 0 {
        tracing::warn!(
            live = shared.live_connections(),
            "drain timeout: closing the remaining connections"
        );
    }
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
