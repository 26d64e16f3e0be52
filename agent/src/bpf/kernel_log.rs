//! The programs' rare events as log lines (aya-log): why a connect or socket was
//! refused, and map inserts that failed. Off by default (`[bpf] log`); `tollgate
//! kernel-log LEVEL` switches it while the programs run, through the settings map the
//! programs read. The lines go to the agent's own log under the target
//! `tollgate::kernel`.
use std::{fmt, path::Path, str::FromStr};

use aya::{Ebpf, programs::links::FdLink};
use aya_log::EbpfLogger;
use serde::{Deserialize, Serialize};
use tollgate_common::{KERNEL_LOG_INFO, KERNEL_LOG_OFF, KERNEL_LOG_WARN};

/// Which rare kernel events are logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelLog {
    /// Nothing (the default; the counters still count every event).
    #[default]
    Off,
    /// Map inserts that failed (a connect or socket refused for want of room).
    Warn,
    /// Also each refused connect or socket, and why.
    Info,
}

impl KernelLog {
    /// The value the programs read from `Settings::log_level`.
    pub const fn level(self) -> u16 {
        match self {
            KernelLog::Off => KERNEL_LOG_OFF,
            KernelLog::Warn => KERNEL_LOG_WARN,
            KernelLog::Info => KERNEL_LOG_INFO,
        }
    }

    /// The setting for a value read back from the map (an unknown one reads as the
    /// nearest level below it).
    pub const fn from_level(level: u16) -> Self {
        if level >= KERNEL_LOG_INFO {
            KernelLog::Info
        } else if level >= KERNEL_LOG_WARN {
            KernelLog::Warn
        } else {
            KernelLog::Off
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            KernelLog::Off => "off",
            KernelLog::Warn => "warn",
            KernelLog::Info => "info",
        }
    }
}

impl fmt::Display for KernelLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KernelLog {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(KernelLog::Off),
            "warn" => Ok(KernelLog::Warn),
            "info" => Ok(KernelLog::Info),
            other => Err(format!(
                "unknown kernel log level {other:?} (off, warn, info)"
            )),
        }
    }
}

/// Forwards aya-log records to tracing, under the target `tollgate::kernel`.
#[derive(Debug, Clone, Copy)]
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "tollgate::kernel", "{line}"),
            log::Level::Warn => tracing::warn!(target: "tollgate::kernel", "{line}"),
            log::Level::Info => tracing::info!(target: "tollgate::kernel", "{line}"),
            log::Level::Debug | log::Level::Trace => {
                tracing::debug!(target: "tollgate::kernel", "{line}");
            }
        }
    }

    fn flush(&self) {}
}

/// The reader of the programs' log ring.
pub type Logger = EbpfLogger<ToTracing>;

/// The log ring of programs just loaded.
pub(super) fn of_loaded(ebpf: &mut Ebpf) -> Option<Logger> {
    EbpfLogger::init_with_logger(ebpf, ToTracing)
        .inspect_err(|error| tracing::warn!(%error, "kernel log unavailable"))
        .ok()
}

/// The log ring of adopted programs, found through the program behind a pinned link.
/// None (with a warning) for programs built without it.
pub(super) fn of_pinned(link_pin: &Path) -> Option<Logger> {
    let found = aya::programs::links::PinnedLink::from_pin(link_pin)
        .map_err(|e| e.to_string())
        .and_then(|pinned| FdLink::from(pinned).info().map_err(|e| e.to_string()))
        .and_then(|info| {
            EbpfLogger::init_from_id_with_logger(info.program_id(), ToTracing)
                .map_err(|e| e.to_string())
        });
    found
        .inspect_err(|error| tracing::warn!(%error, "kernel log unavailable"))
        .ok()
}

/// Reads the log ring until the task is dropped.
pub async fn forward(logger: Logger) {
    // SAFETY: the logger owns its ring's map fd, which stays open and unchanged for as
    // long as the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the kernel log ring");
            return;
        }
    };
    loop {
        let Ok(mut ready) = fd.readable_mut().await else {
            return;
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip() {
        for log in [KernelLog::Off, KernelLog::Warn, KernelLog::Info] {
            assert_eq!(KernelLog::from_level(log.level()), log);
            assert_eq!(log.as_str().parse::<KernelLog>(), Ok(log));
        }
        assert_eq!(KernelLog::from_level(9), KernelLog::Info);
        assert!("debug".parse::<KernelLog>().is_err());
    }
}
