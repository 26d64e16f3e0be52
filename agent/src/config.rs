//! The agent's one typed configuration: TOML, validated on load, with errors that name
//! the file, the position and the key.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tollgate_policy::{Mode, TargetSpec, load::line_col};

mod approvals;
mod central;
mod console;
mod identity;
mod validate;

pub use approvals::{ApprovalsConfig, ReviewerSpec, WebhookConfig, WebhookFormat};
pub use central::CentralConfig;
pub use console::{ConsoleConfig, ConsoleOidcConfig, RolesConfig};
pub use identity::{DEFAULT_AUDIENCE, IdentityConfig};

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tollgate/agent.toml";
/// The control socket's default path; the CLI uses it too.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tollgate/control.sock";
/// Default proxy port: below 1024, so an unprivileged process cannot take the listener
/// over while the agent is down.
pub const DEFAULT_PROXY_PORT: u16 = 977;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: `{key}`: {message}")]
    Parse {
        path: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    /// `at` is the file, and the line of the key when the file sets it.
    #[error("{at}: `{key}`: {message}")]
    Invalid {
        at: String,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub control: ControlConfig,
    pub cgroup: CgroupConfig,
    pub bpf: BpfConfig,
    pub state: StateConfig,
    pub recording: RecordingConfig,
    pub log: LogConfig,
    pub policy: PolicyConfig,
    pub identity: IdentityConfig,
    pub approvals: ApprovalsConfig,
    pub central: CentralConfig,
    /// `[console]`: the review console (`tollgate console`).
    pub console: ConsoleConfig,
    pub postgres: PostgresConfig,
    /// Masking of sensitive values in PostgreSQL results and recordings.
    pub masking: crate::postgres::mask::MaskingConfig,
    /// The kinds of socket a job may create.
    pub sockets: crate::sockets::SocketsConfig,
    /// Tollgate's resolver for jobs' DNS.
    pub dns: crate::dns::DnsConfig,
    /// `[udp]`: the relay of jobs' UDP other than DNS (decided by `udp:send`).
    pub udp: crate::udp::UdpConfig,
    /// `[unix]`: jobs' connects to unix sockets (decided by `unix:connect`).
    pub unix: crate::unix::UnixConfig,
    /// `[http]`: HTTP followed at L7 (requests decided by `http:request`).
    pub http: crate::http::HttpConfig,
    /// `[mcp]`: MCP followed inside HTTP (tool calls decided by `mcp:call`).
    pub mcp: crate::mcp::McpConfig,
    /// The targets catalog: named destinations for policies (`[[targets]]`).
    pub targets: Vec<TargetSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// `enforce` (deny unless permitted) or `audit` (record, never block).
    pub mode: Mode,
    /// Directory of `*.cedar` files. If it does not exist, no policy is configured and
    /// every connection of a job is allowed (and recorded as such).
    pub dir: PathBuf,
    /// How often the directory is checked for changes (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            dir: PathBuf::from("/etc/tollgate/policies"),
            reload_interval: Duration::from_secs(2),
        }
    }
}

/// PostgreSQL-aware interception.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Follow PostgreSQL sessions at L7 (statements decided and recorded). A connection
    /// is PostgreSQL when its first bytes are a startup, SSL, GSS or cancel request, or
    /// when its target's `protocol` is "postgres". Off: every connection stays at L4.
    pub enabled: bool,
    /// Largest message accepted from either side; a larger one ends the session with a
    /// protocol error.
    pub max_message_size: usize,
    pub tls: crate::postgres::tls::TlsConfig,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_message_size: tollgate_pgwire::DEFAULT_MAX_MESSAGE,
            tls: crate::postgres::tls::TlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Port of both loopback listeners (IPv4 and IPv6).
    pub port: u16,
    /// IPv4 loopback address of the listener.
    pub ipv4: Ipv4Addr,
    /// IPv6 loopback address of the listener.
    pub ipv6: Ipv6Addr,
    /// How long to wait for the original destination to accept.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a destination's refusal of a job's connection is remembered without
    /// another connect to it: meanwhile the job's connects to it are refused at
    /// `connect()`, as they would be directly. A probe ends the memory as soon as the
    /// destination listens. 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub refusal_memory: Duration,
    /// Lets the kernel pass a job's connect straight to its destination once the proxy
    /// found its decision final at connect time (an L4 target, no L7 handler, no policy
    /// reading what the kernel cannot see). Such connections are recorded from kernel
    /// events, with `path = "kernel"`.
    pub kernel_verdicts: bool,
    /// Data-plane worker threads; 0 means one per two CPUs (at least one): the relay
    /// shares the host with the jobs' clients and servers, and a worker that serves more
    /// connections sleeps and wakes less per message.
    pub workers: usize,
    /// Relay buffer size per direction, in bytes.
    pub buffer_size: usize,
    /// How long shutdown waits for live connections to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Where a policy reads `context.sni` (or `resource.hostname`, and DNS named
    /// nothing), how long a connect waits for the client's TLS ClientHello before it is
    /// decided without it. A client that speaks TLS sends it at once; a protocol whose
    /// server speaks first (SSH, SMTP, MySQL) waits this long for its decision.
    #[serde(with = "humantime_serde")]
    pub client_hello_wait: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            port: DEFAULT_PROXY_PORT,
            ipv4: Ipv4Addr::LOCALHOST,
            ipv6: Ipv6Addr::LOCALHOST,
            connect_timeout: Duration::from_secs(10),
            refusal_memory: Duration::from_secs(1),
            kernel_verdicts: true,
            workers: 0,
            buffer_size: 16 * 1024,
            drain_timeout: Duration::from_secs(5),
            client_hello_wait: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the HTTP listener serving /metrics, /healthz and /readyz.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9477)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Path of the control socket.
    pub socket: PathBuf,
    /// Users (besides root) allowed to use the control socket.
    pub allowed_uids: Vec<u32>,
    /// Groups whose members (by primary gid of the caller) may use the control socket.
    pub allowed_gids: Vec<u32>,
    /// Group owning the socket file. When set, the socket is mode 0660: only root and
    /// the group's members can connect at all (SO_PEERCRED still decides per request).
    pub group: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            group: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    /// The root-owned parent of all job cgroups, relative to the cgroup2 mount.
    pub parent: String,
    /// The cgroup2 mount; found in /proc/mounts when unset.
    pub mount: Option<PathBuf>,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            parent: "tollgate".to_owned(),
            mount: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BpfConfig {
    /// bpffs directory for the pinned links and maps.
    pub pin_dir: PathBuf,
    /// Entries that no accept() claimed within this time are expired.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Size of the ring that carries kernel-path connection events to the agent: a
    /// power of two from 4096 to 1 GiB. While it is full, connections that would
    /// take the kernel path are sent through the proxy instead, so none goes
    /// unrecorded. A change takes effect after `tollgate agent --cleanup`.
    pub events_ring_bytes: u32,
    /// Which rare kernel events the programs log (under `tollgate::kernel`): `off`
    /// (the default), `warn` (failed map inserts) or `info` (also every refused connect
    /// or socket, and why). `tollgate kernel-log LEVEL` changes it while running.
    pub log: crate::bpf::KernelLog,
}

impl Default for BpfConfig {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from("/sys/fs/bpf/tollgate"),
            stale_after: Duration::from_secs(120),
            events_ring_bytes: tollgate_common::EVENTS_BYTES,
            log: crate::bpf::KernelLog::Off,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Directory for the embedded recording store and other state.
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/tollgate"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// SQLite database; `<state.dir>/recordings.db` when unset.
    pub path: Option<PathBuf>,
    /// Refuse new connections while recording is failing.
    pub strict: bool,
    /// Forward a PostgreSQL statement only once its record is committed (and synced:
    /// the store runs with `synchronous = FULL`). Statements of all sessions waiting at
    /// once are committed together. A record not committed within 5 s closes the session.
    pub durable: bool,
    /// Records waiting for the writer before new ones count as failures.
    pub queue_capacity: usize,
    /// Most records written in one transaction.
    pub batch_size: usize,
    /// How long the writer gathers records before it commits them.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Delete jobs, connections (with their statements) and audit entries that ended
    /// longer ago than this. Unset: keep everything.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            path: None,
            strict: false,
            durable: false,
            queue_capacity: 65_536,
            batch_size: 512,
            flush_interval: Duration::from_millis(100),
            retention: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `info,access=warn`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Where the effective config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    BuiltIn,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::BuiltIn => f.write_str("built-in defaults"),
        }
    }
}

impl Config {
    /// Where the effective config behaves differently from earlier versions' defaults,
    /// for `tollgate agent --check-config`.
    pub fn notes(&self) -> Vec<String> {
        use crate::postgres::mask::ResultsMasking;
        let mut notes = Vec::new();
        if self.masking.enabled && !self.masking.detectors.is_empty() {
            let detecting: Vec<&str> = self
                .targets
                .iter()
                .filter(|t| {
                    t.masking
                        .is_some_and(|m| m.results == ResultsMasking::Detect)
                })
                .map(|t| t.name.as_str())
                .collect();
            if self.masking.results == ResultsMasking::Rules {
                let except = if detecting.is_empty() {
                    String::new()
                } else {
                    format!(" (except on targets {})", detecting.join(", "))
                };
                notes.push(format!(
                    "masking.results = \"rules\": the detectors mask recordings only; what \
                     clients see is masked by column rules{except}. The earlier default also \
                     ran the detectors on client results; set results = \"detect\" in [masking] or \
                     on a target for that (text-like columns only)."
                ));
            }
        }
        notes
    }

    /// Loads `explicit`, or the default path if it exists, or the built-in defaults (with
    /// state under `./.tollgate` in the working directory).
    pub fn load(explicit: Option<&Path>) -> Result<(Config, Source), ConfigError> {
        if let Some(path) = explicit {
            return Ok((Self::from_file(path)?, Source::File(path.to_owned())));
        }
        let default = Path::new(DEFAULT_CONFIG_PATH);
        if default.exists() {
            return Ok((Self::from_file(default)?, Source::File(default.to_owned())));
        }
        Ok((Self::builtin(), Source::BuiltIn))
    }

    /// The built-in defaults used when there is no config file at all.
    pub fn builtin() -> Config {
        let mut config = Config::default();
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        config.state.dir = cwd.join(".tollgate");
        config.policy.dir = cwd.join(".tollgate/policies");
        config
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|error| {
            parse_error(path, text, String::new(), error.span(), error.message())
        })?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let inner = error.into_inner();
            parse_error(path, text, key, inner.span(), inner.message())
        })?;
        config.validate(path, text)?;
        Ok(config)
    }

    /// The recording database path.
    pub fn recording_path(&self) -> PathBuf {
        self.recording
            .path
            .clone()
            .unwrap_or_else(|| self.state.dir.join("recordings.db"))
    }

    /// The host key that signs the record chain's checkpoints.
    pub fn host_key_path(&self) -> PathBuf {
        self.state.dir.join("host.key")
    }

    /// Whether the admin listener is reachable only from this host.
    pub fn admin_is_loopback(&self) -> bool {
        match self.admin.listen.ip() {
            IpAddr::V4(ip) => ip.is_loopback(),
            IpAddr::V6(ip) => ip.is_loopback(),
        }
    }
}

fn parse_error(
    path: &str,
    text: &str,
    key: String,
    span: Option<std::ops::Range<usize>>,
    message: &str,
) -> ConfigError {
    let (line, column) = span.map_or((1, 1), |span| line_col(text, span.start));
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        key: if key.is_empty() || key == "." {
            "(document)".to_owned()
        } else {
            key
        },
        message: message.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests;
