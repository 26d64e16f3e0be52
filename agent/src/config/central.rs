//! `[central]`: the fleet's central PostgreSQL store, where every record is shipped, and
//! the signed checkpoints of this host's record chain (docs/fleet.md).
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CentralConfig {
    /// `postgresql://user[:password]@host[:port]/db[?sslmode=…]`. Unset: records stay on
    /// this host (the chain is still kept and signed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the password (instead of the URL's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// This host's name on its records and checkpoints (default: the hostname).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How often the chain's head is signed while records are written.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Refuse new job connections while the oldest unshipped record is older than
    /// this. Unset: never refuse (the backlog waits on local disk).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<Duration>,
    /// Most records shipped in one transaction.
    pub batch_size: usize,
    /// Delete central records older than this, from this agent, once a day (the same as
    /// `tollgate central prune --older-than`). Unset: only the command prunes.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub prune_older_than: Option<Duration>,
}

impl Default for CentralConfig {
    fn default() -> Self {
        Self {
            url: None,
            password_file: None,
            host: None,
            checkpoint_interval: Duration::from_secs(10),
            max_lag: None,
            batch_size: 1000,
            prune_older_than: None,
        }
    }
}

impl CentralConfig {
    /// The host's name: `host`, or the machine's hostname.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .unwrap_or_else(|| "localhost".to_owned())
        })
    }
}
