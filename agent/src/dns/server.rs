//! Serving queries: UDP on the proxy's address and port (where the kernel sends jobs'
//! DNS datagrams), and DNS over TCP handed over by the proxy for connects to port 53.
use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_proto::op::ResponseCode;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};
use tollgate_common::ConnInfo;
use tollgate_policy::dns::DnsQuery;

use super::{
    DnsConfig,
    cache::{Cache, Key},
    message::{self, Question},
};
use crate::{
    enforce::Enforcer,
    jobs::JobRegistry,
    metrics::DnsMetrics,
    record::DecisionLabel,
    record::{DnsRecord, RecordEvent, Recorder, now_ms},
};

/// Largest DNS message (TCP length prefix).
const MAX_MESSAGE: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// An answer, and whether it came from the cache.
struct Looked {
    bytes: Vec<u8>,
    answer: message::Answer,
    cached: bool,
}

pub struct Resolver {
    jobs: Arc<JobRegistry>,
    enforcer: Arc<Enforcer>,
    recorder: Recorder,
    metrics: Arc<DnsMetrics>,
    config: DnsConfig,
    upstreams: Vec<SocketAddr>,
    /// Answers with what they say (parsed once, when they arrived).
    cache: Mutex<Cache<(Vec<u8>, message::Answer)>>,
    names: super::names::JobNames,
}

impl Resolver {
    pub fn new(
        config: DnsConfig,
        jobs: Arc<JobRegistry>,
        enforcer: Arc<Enforcer>,
        recorder: Recorder,
        metrics: Arc<DnsMetrics>,
    ) -> Self {
        let upstreams = config.upstreams();
        tracing::info!(
            ?upstreams,
            enabled = config.enabled,
            "DNS resolver for jobs"
        );
        Self {
            cache: Mutex::new(Cache::new(config.cache_entries, config.max_ttl)),
            names: super::names::JobNames::default(),
            upstreams,
            config,
            jobs,
            enforcer,
            recorder,
            metrics,
        }
    }

    /// The name `job` resolved `ip` from, if it did (for connect decisions).
    pub fn name_of(&self, job: &str, ip: std::net::IpAddr) -> Option<String> {
        self.names.name_of(job, ip)
    }

    /// Whether `name` resolves to `ip` (its A or AAAA records), asked of the upstreams
    /// as a job's query is, and cached with the jobs' answers. A failure reads as no.
    /// (The proxy takes a TLS client's server name for the destination's host name only
    /// where it does.)
    pub async fn resolves_to(&self, name: &str, ip: std::net::IpAddr) -> bool {
        let ip = tollgate_policy::targets::canonical(ip);
        let mut id = [0u8; 2];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).is_err() {
            return false;
        }
        let Some(query) = message::address_query(name, ip.is_ipv4(), u16::from_be_bytes(id)) else {
            return false;
        };
        let Ok(question) = message::question(&query) else {
            return false;
        };
        let answer = match self.lookup(&query, &question, Transport::Udp).await {
            Ok(Looked { answer, .. }) => answer,
            Err(error) => {
                tracing::debug!(name, %error, "checking a TLS server name against DNS");
                return false;
            }
        };
        answer
            .addresses
            .iter()
            .any(|a| tollgate_policy::targets::canonical(*a) == ip)
    }

    /// Forgets what ended jobs resolved.
    pub fn forget_ended(&self) {
        let jobs = &self.jobs;
        self.names.retain_jobs(&|job| jobs.get(job).is_some());
    }

    /// The UDP sockets on the proxy's addresses and port (bound before the runtime runs).
    pub fn bind(
        port: u16,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
    ) -> std::io::Result<Vec<std::net::UdpSocket>> {
        let mut sockets = vec![std::net::UdpSocket::bind((ipv4, port))?];
        match std::net::UdpSocket::bind((ipv6, port)) {
            Ok(socket) => sockets.push(socket),
            Err(error) if error.kind() == std::io::ErrorKind::AddrNotAvailable => {
                tracing::warn!("IPv6 loopback unavailable; IPv6 DNS of jobs will fail");
            }
            Err(error) => return Err(error),
        }
        for socket in &sockets {
            socket.set_nonblocking(true)?;
        }
        Ok(sockets)
    }

    /// Answers one query datagram (the relay hands over those to port 53, and those it
    /// cannot attribute) from `socket`, where it arrived.
    pub async fn answer_udp(
        &self,
        socket: &UdpSocket,
        from: SocketAddr,
        query: &[u8],
        info: Option<ConnInfo>,
    ) {
        if let Some(reply) = self.answer(query, info, Transport::Udp).await {
            let _ = socket.send_to(&reply, from).await;
        }
    }

    /// DNS over TCP from a job (a connect to port 53, accepted by the proxy): answers
    /// length-prefixed queries until the client closes. Returns bytes (up, down).
    pub async fn serve_tcp(&self, mut client: TcpStream, info: ConnInfo) -> (u64, u64) {
        let (mut up, mut down) = (0u64, 0u64);
        loop {
            let mut len = [0u8; 2];
            if client.read_exact(&mut len).await.is_err() {
                return (up, down);
            }
            let len = usize::from(u16::from_be_bytes(len));
            let mut query = vec![0u8; len];
            if client.read_exact(&mut query).await.is_err() {
                return (up, down);
            }
            up += 2 + len as u64;
            let Some(reply) = self.answer(&query, Some(info), Transport::Tcp).await else {
                return (up, down);
            };
            let Ok(reply_len) = u16::try_from(reply.len()) else {
                return (up, down);
            };
            let mut framed = reply_len.to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if client.write_all(&framed).await.is_err() {
                return (up, down);
            }
            down += framed.len() as u64;
        }
    }

    /// Decides, answers and records one query; None when there is nothing to answer.
    async fn answer(
        &self,
        query: &[u8],
        info: Option<ConnInfo>,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let started = Instant::now();
        let mut record = DnsRecord {
            at: now_ms(),
            transport: transport.as_str().to_owned(),
            ..DnsRecord::default()
        };
        let job = info.and_then(|info| self.jobs.resolve(info.cgroup_id));
        let process = info.map(|info| {
            let exe = crate::proc_info::exe(info.tgid).map(|p| p.display().to_string());
            crate::proxy::attribute::process(&info, exe)
        });
        let server = info.map(|info| info.original_destination());
        if let Some(info) = info {
            record.cgroup_id = Some(info.cgroup_id);
            record.pid = Some(info.tgid);
            record.uid = Some(info.uid);
            record.comm = Some(info.comm());
        }
        record.server = server.map(|s| s.to_string());
        record.job_id = job.as_ref().map(|j| j.id.clone());

        let question = match message::question(query) {
            Ok(question) => question,
            Err(bad) => {
                record.decision = DecisionLabel::Malformed;
                record.rcode = message::rcode_name(bad.rcode);
                record.error = Some(bad.why);
                let reply = message::formerr(query).map(|mut reply| {
                    if bad.rcode != ResponseCode::FormErr && reply.len() >= 4 {
                        reply[3] = 0x80 | (u16::from(bad.rcode) as u8 & 0x0f);
                    }
                    reply
                });
                self.finish(record, started);
                return reply;
            }
        };
        record.name = question.name.clone();
        record.qtype = question.qtype.clone();
        let (Some(job), Some(process), Some(server)) = (job, process, server) else {
            record.decision = DecisionLabel::Unattributed;
            record.reason = "no kernel record of this query's job: refused".to_owned();
            return Some(self.refuse(record, &question, started));
        };
        if !self.config.enabled {
            record.decision = DecisionLabel::Deny;
            record.reason = "the resolver is off ([dns] enabled = false): refused".to_owned();
            return Some(self.refuse(record, &question, started));
        }
        let decision = self.enforcer.snapshot().decide_dns(DnsQuery {
            principal: &job.principal,
            process: &process,
            server,
            name: &question.name,
            qtype: &question.qtype,
        });
        record.decision = DecisionLabel::from(&decision);
        record.policy_ids = decision.policy_ids.clone();
        record.reason = decision.reason.clone();
        if decision.blocks() {
            return Some(self.refuse(record, &question, started));
        }

        let (reply, answer) = match self.lookup(query, &question, transport).await {
            Ok(Looked {
                bytes,
                answer,
                cached,
            }) => {
                if cached {
                    record.cached = true;
                    self.metrics.cache_hits.inc();
                }
                (bytes, answer)
            }
            Err(error) => {
                self.metrics.upstream_failures.inc();
                record.error = Some(error);
                record.rcode = "SERVFAIL".to_owned();
                let reply = message::error_answer(&question, ResponseCode::ServFail);
                self.finish(record, started);
                return Some(reply);
            }
        };
        self.names
            .learn(&job.id, &question.name, &answer.addresses, answer.min_ttl);
        record.rcode = answer.rcode;
        record.answers = answer.records;
        self.finish(record, started);
        Some(reply)
    }

    fn refuse(&self, mut record: DnsRecord, question: &Question, started: Instant) -> Vec<u8> {
        record.rcode = "REFUSED".to_owned();
        self.finish(record, started);
        message::error_answer(question, ResponseCode::Refused)
    }

    /// One record and one count per query.
    fn finish(&self, mut record: DnsRecord, started: Instant) {
        record.duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.metrics.query(record.decision, &record.rcode);
        tracing::debug!(
            name = record.name,
            qtype = record.qtype,
            decision = record.decision.as_str(),
            rcode = record.rcode,
            job = record.job_id.as_deref(),
            "dns"
        );
        self.recorder.record(RecordEvent::Dns(Box::new(record)));
    }

    /// The answer to `question`: from the cache (its bytes carry the question's id),
    /// else forwarded, and cached when it is a cacheable one.
    async fn lookup(
        &self,
        query: &[u8],
        question: &Question,
        transport: Transport,
    ) -> Result<Looked, String> {
        let key = Key {
            name: question.name.clone(),
            qtype: question.qtype.clone(),
            qclass: question.qclass.clone(),
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key, Instant::now());
        if let Some((bytes, answer)) = cached {
            return Ok(Looked {
                bytes: message::with_id(&bytes, question.id),
                answer,
                cached: true,
            });
        }
        let (bytes, answer) = self.forward(query, question, transport).await?;
        if !answer.truncated && (answer.rcode == "NOERROR" || answer.rcode == "NXDOMAIN") {
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
                key,
                (bytes.clone(), answer.clone()),
                answer.min_ttl,
                Instant::now(),
            );
        }
        Ok(Looked {
            bytes,
            answer,
            cached: false,
        })
    }

    /// Forwards the query's own bytes to each upstream in turn until one answers it;
    /// returns the answer's bytes and what they say.
    async fn forward(
        &self,
        query: &[u8],
        question: &Question,
        transport: Transport,
    ) -> Result<(Vec<u8>, message::Answer), String> {
        let mut errors = Vec::new();
        for &upstream in &self.upstreams {
            let attempt = match transport {
                Transport::Udp => forward_udp(upstream, query, self.config.timeout).await,
                Transport::Tcp => forward_tcp(upstream, query, self.config.timeout).await,
            };
            match attempt.map(|bytes| (message::answer(&bytes, question), bytes)) {
                Ok((Some(answer), bytes)) => return Ok((bytes, answer)),
                Ok((None, _)) => errors.push(format!("{upstream}: not an answer to the query")),
                Err(error) => errors.push(format!("{upstream}: {error}")),
            }
        }
        if errors.is_empty() {
            errors.push("no upstream resolver".to_owned());
        }
        Err(errors.join("; "))
    }
}

async fn forward_udp(
    upstream: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(upstream).await.map_err(|e| e.to_string())?;
    socket.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = tokio::time::timeout(timeout, socket.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    buf.truncate(n);
    Ok(buf)
}

async fn forward_tcp(
    upstream: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())
}
