//! The relay: jobs' UDP datagrams (other than DNS) arrive on the proxy's address, at its
//! port or, once a flow to a destination is allowed, at a relay socket of that
//! destination's own. The kernel keyed each datagram by its source, so the relay knows
//! its job socket and its original destination. Each flow (source, destination) is
//! decided once: allowed ones are carried from a connected socket of the agent's, and
//! what comes back is sent to the job from the socket its datagrams arrived on; the
//! kernel shows it as coming from the destination.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use tokio::{net::UdpSocket, task::AbortHandle};
use tollgate_common::{ConnInfo, TupleKey, UDP_RELAY_CAPACITY, UdpDenyKey};
use tollgate_policy::{Decision, Principal, Process, Subject};

mod carry;
mod refused;

use carry::{Carried, send_now};

use super::{Direction, EnforcedBy, Outcome};
use super::{UdpConfig, UdpMetrics};
use crate::{
    bpf::ConnMaps,
    dns::server::Resolver,
    enforce::Enforcer,
    jobs::JobRegistry,
    proxy::attribute,
    record::DecisionLabel,
    record::{RecordEvent, Recorder, UdpFlowRecord, now_ms},
};

/// The kernel's record of a datagram is trusted for this long after it was sent.
const FRESH: Duration = Duration::from_secs(2);
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// DNS: answered by the resolver, not relayed.
const DNS_PORT: u16 = 53;
/// A denied flow (whose later datagrams the kernel refuses) ends after this long quiet.
const DENIED_IDLE: Duration = Duration::from_secs(5);

pub struct Relay {
    maps: Arc<ConnMaps>,
    jobs: Arc<JobRegistry>,
    enforcer: Arc<Enforcer>,
    recorder: Recorder,
    metrics: Arc<UdpMetrics>,
    resolver: Arc<Resolver>,
    config: UdpConfig,
    proxy_ipv4: Ipv4Addr,
    proxy_ipv6: Ipv6Addr,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    flows: HashMap<FlowKey, Flow>,
    /// Relay sockets by the destination they carry.
    ports: HashMap<SocketAddr, RelayPort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FlowKey {
    /// Decided by the relay: a job socket's source and a destination.
    Relayed { client: SocketAddr, dst: SocketAddr },
    /// Refused in the kernel (the socket may not even be bound): a process and a
    /// destination.
    Refused {
        cgroup_id: u64,
        pid: u32,
        dst: SocketAddr,
    },
}

struct Flow {
    record: UdpFlowRecord,
    cookie: u64,
    process: Process,
    principal: Option<Arc<Principal>>,
    /// Set for an allowed flow.
    carried: Option<Carried>,
}

struct RelayPort {
    port: u16,
    task: AbortHandle,
    last_ms: i64,
}

impl Flow {
    fn last_ms(&self) -> i64 {
        let back = self
            .carried
            .as_ref()
            .map_or(0, |c| c.back.last_ms.load(Ordering::Relaxed));
        self.record.last_at.max(back)
    }
}

impl Relay {
    #[expect(
        clippy::too_many_arguments,
        reason = "the relay's collaborators, wired once"
    )]
    pub fn new(
        config: UdpConfig,
        maps: Arc<ConnMaps>,
        jobs: Arc<JobRegistry>,
        enforcer: Arc<Enforcer>,
        recorder: Recorder,
        metrics: Arc<UdpMetrics>,
        resolver: Arc<Resolver>,
        proxy: (Ipv4Addr, Ipv6Addr),
    ) -> Self {
        Self {
            maps,
            jobs,
            enforcer,
            recorder,
            metrics,
            resolver,
            config,
            proxy_ipv4: proxy.0,
            proxy_ipv6: proxy.1,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At startup: relay ports an earlier agent left in the kernel are forgotten (their
    /// sockets died with it), and the policy in force says whether UDP is relayed.
    pub fn start(&self) {
        match self.maps.relay_ports() {
            Ok(ports) => {
                for (dst, port) in ports {
                    if let Err(error) = self.maps.remove_relay_port(&dst, port) {
                        tracing::warn!(%error, port, "removing a stale UDP relay port");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "listing stale UDP relay ports"),
        }
        self.apply_policy();
    }

    /// A new policy: the kernel relays UDP only if some permit may apply, earlier
    /// denials are forgotten, and live flows are decided again.
    pub fn apply_policy(&self) {
        let policy = self.enforcer.snapshot();
        let relay = policy.decides_udp();
        if let Err(error) = self.maps.set_udp_relay(relay) {
            tracing::error!(%error, "cannot tell the kernel whether to relay UDP");
        }
        if let Err(error) = self.maps.clear_udp_denied() {
            tracing::error!(%error, "cannot clear the kernel's UDP denials");
        }
        let mut state = self.state();
        let keys: Vec<FlowKey> = state.flows.keys().copied().collect();
        for key in keys {
            let FlowKey::Relayed { dst, .. } = key else {
                continue;
            };
            let Some(flow) = state.flows.get(&key) else {
                continue;
            };
            let principal = flow
                .record
                .job_id
                .as_deref()
                .and_then(|id| self.jobs.get(id))
                .map(|job| job.principal.clone())
                .or_else(|| flow.principal.clone());
            let blocks = principal.is_none_or(|principal| {
                let subject = Subject::new(&principal, &flow.process, dst)
                    .with_hostname(flow.record.hostname.as_deref());
                policy.decide_udp(subject).blocks()
            });
            if blocks == flow.carried.is_none() {
                if blocks {
                    // Still denied: refused in the kernel again (the denials were cleared).
                    self.deny_in_kernel(flow.cookie, dst);
                }
                continue;
            }
            // Decided otherwise now: this flow ends; the next datagram starts another.
            if let Some(flow) = state.flows.remove(&key) {
                if blocks {
                    self.deny_in_kernel(flow.cookie, dst);
                }
                self.finish(flow, "policy");
            }
        }
        tracing::info!(relay, flows = state.flows.len(), "UDP policy applied");
    }

    /// Serves one relay socket until the runtime stops: the proxy's (`dedicated` None:
    /// DNS queries go to the resolver, other datagrams by their original destination)
    /// or a destination's own.
    pub async fn serve(self: Arc<Self>, socket: Arc<UdpSocket>, dedicated: Option<SocketAddr>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "UDP relay receive");
                    continue;
                }
            };
            let info = self
                .maps
                .udp_source(&TupleKey::from_addr(from), FRESH)
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "UDP source lookup");
                    None
                });
            match (dedicated, info) {
                (_, Some(info)) if dedicated.is_some() || info.orig_port != DNS_PORT => {
                    self.datagram(&socket, dedicated, from, &info, &buf[..n]);
                }
                (Some(_), _) => self
                    .metrics
                    .datagram(Direction::Out, Outcome::Unattributed, n),
                // DNS, and what cannot be attributed: the resolver answers (or refuses).
                (None, info) => {
                    let (resolver, socket) = (self.resolver.clone(), socket.clone());
                    let query = buf[..n].to_vec();
                    tokio::spawn(async move {
                        resolver.answer_udp(&socket, from, &query, info).await;
                    });
                }
            }
        }
    }

    /// One datagram of a job: to its flow, which is decided first if it is new.
    fn datagram(
        self: &Arc<Self>,
        arrived: &Arc<UdpSocket>,
        dedicated: Option<SocketAddr>,
        from: SocketAddr,
        info: &ConnInfo,
        payload: &[u8],
    ) {
        let dst = dedicated.unwrap_or_else(|| info.original_destination());
        let key = FlowKey::Relayed { client: from, dst };
        let now = now_ms();
        let mut state = self.state();
        // Another socket on a reused source port: the old flow is over.
        if state
            .flows
            .get(&key)
            .is_some_and(|f| f.cookie != info.cookie)
            && let Some(old) = state.flows.remove(&key)
        {
            self.finish(old, "replaced");
        }
        if !state.flows.contains_key(&key) {
            if state.flows.len() >= self.config.max_flows {
                // No room for another flow: refused, and counted.
                self.deny_in_kernel(info.cookie, dst);
                self.metrics
                    .datagram(Direction::Out, Outcome::Denied, payload.len());
                let process = attribute::process(info, None);
                let reason = format!(
                    "the relay carries udp.max_flows ({}) flows already: refused",
                    self.config.max_flows
                );
                self.count_refused(
                    &mut state,
                    info.cgroup_id,
                    process,
                    dst,
                    EnforcedBy::Relay,
                    reason,
                );
                return;
            }
            // Its row counts this first datagram already.
            let flow = self.open(from, dst, info, arrived, payload.len());
            state.flows.insert(key, flow);
        } else if let Some(flow) = state.flows.get_mut(&key) {
            flow.record.last_at = now;
            flow.record.packets_out += 1;
            flow.record.bytes_out += payload.len() as u64;
        }
        let Some(flow) = state.flows.get_mut(&key) else {
            return;
        };
        let Some(carried) = &flow.carried else {
            self.metrics
                .datagram(Direction::Out, Outcome::Denied, payload.len());
            return;
        };
        {
            let mut via = carried.back.via.lock().unwrap_or_else(|e| e.into_inner());
            if !Arc::ptr_eq(&via, arrived) {
                *via = arrived.clone();
            }
        }
        let outcome = match send_now(&carried.upstream, payload, None) {
            Ok(_) => Outcome::Relayed,
            Err(_) => Outcome::Dropped,
        };
        self.metrics
            .datagram(Direction::Out, outcome, payload.len());
        let room = state.ports.len() < UDP_RELAY_CAPACITY as usize;
        match state.ports.get_mut(&dst) {
            Some(port) => port.last_ms = now,
            None if dedicated.is_none() && room => self.open_port(&mut state, dst, now),
            None => {}
        }
    }

    /// Decides a new flow (its first datagram, of `first_len` bytes, counted), records it,
    /// and for an allowed one opens its upstream socket.
    fn open(
        self: &Arc<Self>,
        from: SocketAddr,
        dst: SocketAddr,
        info: &ConnInfo,
        arrived: &Arc<UdpSocket>,
        first_len: usize,
    ) -> Flow {
        let job = self.jobs.resolve(info.cgroup_id);
        let exe = crate::proc_info::exe(info.tgid).map(|p| p.display().to_string());
        let process = attribute::process(info, exe);
        let hostname = job
            .as_ref()
            .and_then(|job| self.resolver.name_of(&job.id, dst.ip()));
        let mut record = self.new_record(info.cgroup_id, &process, dst, EnforcedBy::Relay);
        record.packets_out = 1;
        record.bytes_out = first_len as u64;
        record.job_id = job.as_ref().map(|job| job.id.clone());
        record.src = Some(from.to_string());
        record.hostname.clone_from(&hostname);
        let decision = match &job {
            None => Decision::deny("no job has this socket's cgroup: refused"),
            Some(job) => self.enforcer.snapshot().decide_udp(
                Subject::new(&job.principal, &process, dst).with_hostname(hostname.as_deref()),
            ),
        };
        record.decision = if job.is_none() {
            DecisionLabel::Unattributed
        } else {
            DecisionLabel::from(&decision)
        };
        record.reason = decision.reason.clone();
        record.policy_ids = decision.policy_ids.clone();
        record.target = decision.target.clone();
        let carried = if decision.blocks() || job.is_none() {
            self.deny_in_kernel(info.cookie, dst);
            None
        } else {
            match carry::carry(from, dst, arrived, &self.metrics) {
                Ok(carried) => Some(carried),
                Err(error) => {
                    record.ended = Some(format!("error: {error}"));
                    None
                }
            }
        };
        self.metrics.flow(record.decision, EnforcedBy::Relay);
        if carried.is_some() {
            self.metrics.active.inc();
        }
        tracing::info!(
            job = record.job_id.as_deref(),
            pid = record.pid,
            comm = record.comm,
            src = %from,
            %dst,
            decision = record.decision.as_str(),
            reason = record.reason,
            "udp flow"
        );
        if carried.is_some() {
            // It reaches its destination: on the journal first, as connections are.
            self.recorder.flow_opened(&record);
        } else {
            self.recorder
                .record(RecordEvent::UdpFlow(Box::new(record.clone())));
        }
        Flow {
            record,
            cookie: info.cookie,
            process,
            principal: job.map(|job| job.principal.clone()),
            carried,
        }
    }

    fn new_record(
        &self,
        cgroup_id: u64,
        process: &Process,
        dst: SocketAddr,
        enforced_by: EnforcedBy,
    ) -> UdpFlowRecord {
        let now = now_ms();
        UdpFlowRecord {
            id: uuid::Uuid::now_v7().to_string(),
            cgroup_id,
            pid: process.pid,
            uid: process.uid,
            comm: process.comm.clone(),
            exe: process.exe.clone(),
            dst: dst.to_string(),
            enforced_by: enforced_by.as_str().to_owned(),
            first_at: now,
            last_at: now,
            ..UdpFlowRecord::default()
        }
    }

    fn deny_in_kernel(&self, cookie: u64, dst: SocketAddr) {
        let key = UdpDenyKey {
            cookie,
            dst: TupleKey::from_addr(dst),
        };
        if let Err(error) = self.maps.deny_udp(&key) {
            tracing::error!(%error, %dst, "cannot refuse a denied UDP flow in the kernel");
        }
    }

    /// A relay socket of `dst`'s own: the kernel sends the job's next datagrams to it,
    /// and shows what leaves it as coming from `dst`.
    fn open_port(self: &Arc<Self>, state: &mut State, dst: SocketAddr, now: i64) {
        let ip: IpAddr = if dst.is_ipv4() {
            self.proxy_ipv4.into()
        } else {
            self.proxy_ipv6.into()
        };
        let opened = std::net::UdpSocket::bind((ip, 0)).and_then(|socket| {
            socket.set_nonblocking(true)?;
            let port = socket.local_addr()?.port();
            Ok((UdpSocket::from_std(socket)?, port))
        });
        let (socket, port) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(%error, %dst, "no relay socket of its own for a UDP destination");
                return;
            }
        };
        let task = tokio::spawn(self.clone().serve(Arc::new(socket), Some(dst))).abort_handle();
        if let Err(error) = self.maps.add_relay_port(&TupleKey::from_addr(dst), port) {
            tracing::warn!(%error, %dst, "cannot register a UDP relay port");
            task.abort();
            return;
        }
        state.ports.insert(
            dst,
            RelayPort {
                port,
                task,
                last_ms: now,
            },
        );
    }

    /// Ends the flows quiet for longer than their timeout, and closes relay ports that
    /// no flow uses any more.
    pub fn sweep(&self) {
        let now = now_ms();
        let idle = ms(self.config.idle_timeout);
        let denied_idle = ms(DENIED_IDLE.min(self.config.idle_timeout));
        let mut state = self.state();
        let ended: Vec<FlowKey> = state
            .flows
            .iter()
            .filter(|(_, flow)| {
                let timeout = if flow.carried.is_some() {
                    idle
                } else {
                    denied_idle
                };
                now - flow.last_ms() > timeout
            })
            .map(|(key, _)| *key)
            .collect();
        for key in ended {
            if let Some(flow) = state.flows.remove(&key) {
                self.finish(flow, "idle");
            }
        }
        let State { flows, ports } = &mut *state;
        ports.retain(|dst, port| {
            let used = flows.iter().any(|(key, flow)| {
                matches!(key, FlowKey::Relayed { dst: d, .. } if d == dst) && flow.carried.is_some()
            });
            if used || now - port.last_ms <= idle {
                return true;
            }
            self.close_port(*dst, port);
            false
        });
    }

    /// At shutdown: every flow is recorded as ended, every relay port forgotten.
    pub fn close_all(&self) {
        let mut state = self.state();
        for (_, flow) in state.flows.drain() {
            self.finish(flow, "shutdown");
        }
        for (dst, port) in state.ports.drain() {
            self.close_port(dst, &port);
        }
    }

    fn close_port(&self, dst: SocketAddr, port: &RelayPort) {
        if let Err(error) = self
            .maps
            .remove_relay_port(&TupleKey::from_addr(dst), port.port)
        {
            tracing::warn!(%error, %dst, "removing a UDP relay port");
        }
        port.task.abort();
    }

    fn finish(&self, mut flow: Flow, why: &str) {
        if let Some(carried) = flow.carried.take() {
            carried.reader.abort();
            flow.record.packets_in = carried.back.packets.load(Ordering::Relaxed);
            flow.record.bytes_in = carried.back.bytes.load(Ordering::Relaxed);
            flow.record.last_at = flow
                .record
                .last_at
                .max(carried.back.last_ms.load(Ordering::Relaxed));
            self.metrics.active.dec();
        }
        if flow.record.ended.is_none() {
            flow.record.ended = Some(why.to_owned());
        }
        self.recorder
            .record(RecordEvent::UdpFlow(Box::new(flow.record)));
    }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
