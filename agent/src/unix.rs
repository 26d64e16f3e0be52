//! `unix:connect`: a job's connects (and addressed datagrams) to unix sockets, decided
//! in the kernel by verdicts this module computes from policy, and recorded from the
//! kernel's reports. See [`gate::Gate`].
pub mod gate;
pub mod paths;

use std::time::Duration;

use prometheus::{IntCounter, Registry};
use serde::{Deserialize, Serialize};

use crate::{
    metrics::{Children, counter_vec},
    record::DecisionLabel,
};

pub use gate::Gate;

/// `[unix]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnixConfig {
    /// Container-engine sockets besides the built-in ones (docker.sock, podman.sock,
    /// containerd.sock by name, anywhere): denied unless a policy permits them.
    pub engine_sockets: Vec<EngineSocket>,
    /// How often the host's bound unix sockets are read again, so that a path bound
    /// since has its verdict in the kernel before a job connects to it.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for UnixConfig {
    fn default() -> Self {
        Self {
            engine_sockets: Vec::new(),
            refresh_interval: Duration::from_secs(1),
        }
    }
}

/// One `[[unix.engine_sockets]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSocket {
    /// The socket's path.
    pub path: String,
    /// The engine (policy sees it as `resource.engine`): docker, containerd, podman, ...
    pub engine: String,
}

/// The unix socket metrics.
pub struct UnixMetrics {
    /// `tollgate_unix_connects_total`, by decision, then other (0) or engine (1):
    /// fetched once, not per connect.
    connects: Children<{ DecisionLabel::ALL.len() * 2 }>,
    pub aliases: IntCounter,
}

impl UnixMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            connects: Children::new(counter_vec(
                registry,
                "tollgate_unix_connects_total",
                "Jobs' connects and addressed sends to unix sockets, by decision (allow, \
                 deny, would_deny) and kind of socket (engine, other).",
                &["decision", "socket"],
            )),
            aliases: crate::metrics::counter(
                registry,
                "tollgate_unix_aliases_killed_total",
                "Processes killed for reaching a denied unix socket by another path \
                 (a symlink, a hard link, a relative or bind-mounted path).",
            ),
        }
    }

    pub fn connect(&self, decision: DecisionLabel, engine: bool) {
        let socket = if engine { "engine" } else { "other" };
        self.connects
            .get(
                decision as usize * 2 + usize::from(engine),
                &[decision.as_str(), socket],
            )
            .inc();
    }
}
