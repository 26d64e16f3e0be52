//! One policy in force, held for as long as a connection (or a statement) is decided
//! under it. Decisions never load the policy themselves: a caller takes a [`Snapshot`]
//! once and asks it everything, so a reload cannot fall between two of its questions.
use std::{cell::RefCell, collections::HashMap, net::SocketAddr, sync::Arc};

use tollgate_policy::{Decision, Mode, NO_POLICY_REASON, PolicyEngine, Subject};

use super::Active;
use crate::postgres::mask::{MaskingConfig, ResultsMasking};

/// Cached connect decisions per thread, at most this many before the cache starts over.
const CACHE_CAPACITY: usize = 16 * 1024;

/// The policy in force when it was taken.
#[derive(Clone)]
pub struct Snapshot {
    pub(super) active: Arc<Active>,
}

impl Snapshot {
    pub(super) fn new(active: Arc<Active>) -> Self {
        Self { active }
    }

    pub fn generation(&self) -> u64 {
        self.active.generation
    }

    pub fn mode(&self) -> Mode {
        self.active.settings.mode
    }

    fn engine(&self) -> Option<&PolicyEngine> {
        self.active.engine.as_ref()
    }

    /// The masking configuration of this generation.
    /// The `@approval_scope` caps of the policies that decided something.
    pub fn approval_scopes(&self, policy_ids: &[String]) -> Vec<String> {
        self.engine()
            .map(|engine| engine.approval_scopes(policy_ids))
            .unwrap_or_default()
    }

    pub fn masking(&self) -> Arc<MaskingConfig> {
        self.active.settings.masking.clone()
    }

    /// Decides an L4 connect, from this thread's cache when possible. The decision
    /// names the target and the protocol it declares.
    pub fn decide_connect(&self, subject: Subject<'_>) -> Decision {
        let Some(engine) = self.engine() else {
            // Without policies every connect is allowed; a configured target still says
            // which protocol its connections are followed as.
            let mut decision = Decision::allow(NO_POLICY_REASON);
            decision.protocol = self
                .active
                .settings
                .targets
                .iter()
                .find(|t| t.matches(subject.destination.ip(), subject.destination.port()))
                .and_then(|t| t.protocol.clone());
            return decision;
        };
        let Subject {
            principal,
            process,
            destination,
            hostname,
            sni,
        } = subject;
        let key = CacheKey {
            job_id: principal.job_id.clone(),
            // A job's identity changes only when it is verified: that is part of the key.
            verified: principal.assurance == tollgate_policy::Assurance::OidcVerified,
            uid: process.uid,
            gid: process.gid,
            comm: process.comm.clone(),
            exe: process.exe.clone(),
            destination,
            hostname: hostname.map(str::to_owned),
            sni: sni.map(str::to_owned),
        };
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.generation != self.active.generation || cache.map.len() >= CACHE_CAPACITY {
                cache.generation = self.active.generation;
                cache.map.clear();
            }
            if let Some(decision) = cache.map.get(&key) {
                return decision.clone();
            }
            let decision = engine.decide_connect(subject);
            cache.map.insert(key, decision.clone());
            decision
        })
    }

    /// What a connect decision can read from the client's ClientHello: then the proxy
    /// reads it (waiting a little for the client's first bytes) before deciding.
    pub fn reads_hello(&self) -> tollgate_policy::kernel::ReadsHello {
        self.engine()
            .map(PolicyEngine::reads_hello)
            .unwrap_or_default()
    }

    /// Decides one SQL statement (callers cache per connection).
    pub fn decide_sql(
        &self,
        subject: Subject<'_>,
        action: &str,
        sql: &tollgate_policy::SqlContext,
    ) -> Decision {
        match self.engine() {
            Some(engine) => engine.decide_sql(subject, action, sql),
            None => Decision::allow(NO_POLICY_REASON),
        }
    }

    /// Whether a policy explicitly permits `action` (exemptions such as `mask:exempt`):
    /// false without policies, and in audit mode only a real permit counts.
    pub fn permits(
        &self,
        subject: Subject<'_>,
        action: &str,
        sql: &tollgate_policy::SqlContext,
    ) -> bool {
        self.engine()
            .is_some_and(|engine| engine.permits(subject, action, sql))
    }

    /// What masks the results a client of `destination` sees: its target's
    /// `masking.results`, else `[masking] results`.
    pub fn results_masking(&self, destination: SocketAddr) -> ResultsMasking {
        self.engine()
            .and_then(|engine| engine.target(destination))
            .and_then(|target| target.masking)
            .map_or(self.active.settings.masking.results, |masking| {
                masking.results
            })
    }

    /// Decides one HTTP request on a followed connection.
    pub fn decide_http(
        &self,
        subject: Subject<'_>,
        request: &tollgate_policy::HttpRequest,
    ) -> Decision {
        match self.engine() {
            Some(engine) => engine.decide_http(subject, request),
            None => Decision::allow(NO_POLICY_REASON),
        }
    }

    /// Whether a policy names `http:request`: then HTTP that a job speaks to any
    /// destination is followed, not only to targets that declare it.
    pub fn governs_http(&self) -> bool {
        self.engine().is_some_and(PolicyEngine::governs_http)
    }

    /// How JSON bodies from the target named `target` are masked, where it configures
    /// `masking` (HTTP targets mask nothing unless they do).
    pub fn json_masking(&self, target: &str) -> Option<ResultsMasking> {
        let engine = self.engine()?;
        engine
            .targets()
            .iter()
            .find(|t| t.name == target)
            .and_then(|t| t.masking)
            .map(|m| m.results)
    }

    /// Decides one MCP tool call on a followed connection.
    pub fn decide_mcp(&self, subject: Subject<'_>, call: &tollgate_policy::McpCall) -> Decision {
        match self.engine() {
            Some(engine) => engine.decide_mcp(subject, call),
            None => Decision::allow(NO_POLICY_REASON),
        }
    }

    /// Whether a `tools/list` answer shows the job `tool` (every tool, without policies).
    pub fn lists_tool(&self, subject: Subject<'_>, tool: &str, changed: bool) -> bool {
        self.engine()
            .is_none_or(|engine| engine.lists_tool(subject, tool, changed))
    }

    /// Whether a policy names `mcp:call`: then MCP inside the HTTP a job speaks to any
    /// destination is followed, not only to targets that declare it.
    pub fn governs_mcp(&self) -> bool {
        self.engine().is_some_and(PolicyEngine::governs_mcp)
    }

    /// Whether the agent terminates TLS to `destination`, decided as about `target`
    /// (its catalog target's `tls = "terminate"`).
    pub fn terminates_tls(&self, destination: SocketAddr, target: &str) -> bool {
        let spec = match self.engine() {
            Some(engine) => engine.targets().iter().find(|t| t.name == target),
            None => self
                .active
                .settings
                .targets
                .iter()
                .find(|t| t.matches(destination.ip(), destination.port())),
        };
        spec.is_some_and(|t| t.tls == Some(tollgate_policy::TargetTls::Terminate))
    }

    /// The `[http] headers` of this generation: what requests' contexts hold.
    pub fn http_headers(&self) -> &[String] {
        &self.active.settings.http_headers
    }

    /// Decides one DNS query of a job.
    pub fn decide_dns(&self, query: tollgate_policy::dns::DnsQuery<'_>) -> Decision {
        match self.engine() {
            Some(engine) => engine.decide_dns(query),
            None => Decision::allow(NO_POLICY_REASON),
        }
    }

    /// Decides one UDP flow of a job (`udp:send`): denied without policy.
    pub fn decide_udp(&self, subject: Subject<'_>) -> Decision {
        match self.engine() {
            Some(engine) => engine.decide_udp(subject),
            None => tollgate_policy::udp::without_policy(),
        }
    }

    /// Whether UDP flows must be decided one by one (some permit may apply to
    /// `udp:send`, or audit mode); otherwise the kernel refuses them all.
    pub fn decides_udp(&self) -> bool {
        self.engine().is_some_and(PolicyEngine::decides_udp)
    }

    /// Decides a job's connect to a unix socket (`unix:connect`): without policy, the
    /// default (container-engine sockets denied, everything else allowed).
    pub fn decide_unix(
        &self,
        principal: &tollgate_policy::Principal,
        socket: tollgate_policy::unix::UnixSocket<'_>,
    ) -> Decision {
        match self.engine() {
            Some(engine) => engine.decide_unix(principal, socket),
            None => tollgate_policy::unix::without_policy(socket),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    job_id: String,
    verified: bool,
    uid: u32,
    gid: u32,
    comm: String,
    exe: Option<String>,
    destination: SocketAddr,
    hostname: Option<String>,
    sni: Option<String>,
}

#[derive(Default)]
struct DecisionCache {
    generation: u64,
    map: HashMap<CacheKey, Decision>,
}

thread_local! {
    static CACHE: RefCell<DecisionCache> = RefCell::new(DecisionCache::default());
}
