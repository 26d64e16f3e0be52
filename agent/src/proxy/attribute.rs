//! Attribution: from the kernel's record of a connect to who made it (the job and the
//! process) and where it was going. Both paths (proxy and kernel) attribute here, and
//! their records carry the same facts.
use std::{io, net::SocketAddr, os::fd::AsFd, sync::Arc};

use tollgate_common::{ConnInfo, TupleKey};
use tollgate_policy::{Principal, Process, Subject};

use crate::{
    bpf::{ConnMaps, Taken},
    jobs::{Job, JobRegistry},
    metrics::{ProxyMetrics, ReusedPortLabel},
    proc_info,
    record::ConnectionRecord,
};

/// A connect, attributed.
pub struct Attributed {
    /// What the kernel recorded at connect().
    pub info: ConnInfo,
    /// The job whose cgroup made the connect; None: no active job (refused).
    pub job: Option<Arc<Job>>,
    /// The process that made it.
    pub process: Process,
    /// Where it was going, canonical.
    pub destination: SocketAddr,
}

/// Why an accepted connection has no attribution: it is refused.
#[derive(Debug, thiserror::Error)]
pub enum Unattributed {
    #[error("no kernel record for this connection: refused")]
    NoRecord,
    #[error("kernel record lookup failed: {0}: refused")]
    Lookup(#[source] io::Error),
    #[error(
        "{entries} kernel records wait with this connection's source port (reused while the proxy lagged) and none is certainly its own: refused"
    )]
    Ambiguous { entries: usize },
}

impl Attributed {
    /// The connection the proxy accepted from `peer` on `socket`: the kernel's record
    /// of it is taken (it is used once). Whether the socket was reset tells records of
    /// one source port apart, where it was reused.
    pub fn accepted(
        maps: &ConnMaps,
        jobs: &JobRegistry,
        metrics: &ProxyMetrics,
        peer: SocketAddr,
        socket: impl AsFd,
    ) -> Result<Self, Unattributed> {
        let alive = || {
            crate::sockets::options::tcp_state(&socket)
                .is_ok_and(|state| state != crate::sockets::options::TCP_CLOSE)
        };
        match maps.take(&TupleKey::from_addr(peer), alive) {
            Ok(Taken::Found(info)) => Ok(Self::from_record(info, jobs)),
            Ok(Taken::Chosen { info, orphans }) => {
                metrics.reused_port(ReusedPortLabel::Chosen, 1);
                if orphans > 0 {
                    tracing::warn!(
                        orphans,
                        %peer,
                        "removed records of connections whose handshake the proxy's listener lost while it lagged"
                    );
                    metrics.reused_port(ReusedPortLabel::OrphanRemoved, orphans as u64);
                }
                Ok(Self::from_record(info, jobs))
            }
            Ok(Taken::None) => Err(Unattributed::NoRecord),
            Ok(Taken::Ambiguous { entries }) => {
                metrics.reused_port(ReusedPortLabel::Ambiguous, 1);
                Err(Unattributed::Ambiguous { entries })
            }
            Err(error) => Err(Unattributed::Lookup(error)),
        }
    }

    /// Attributes a kernel record.
    pub fn from_record(info: ConnInfo, jobs: &JobRegistry) -> Self {
        let job = jobs.resolve(info.cgroup_id);
        let exe = proc_info::exe(info.tgid).map(|p| p.display().to_string());
        Self {
            process: process(&info, exe),
            destination: info.original_destination(),
            job,
            info,
        }
    }

    pub fn principal(&self) -> Option<&Arc<Principal>> {
        self.job.as_ref().map(|job| &job.principal)
    }

    /// What policy decides about, for a job's connect.
    pub fn subject<'a>(&'a self, hostname: Option<&'a str>) -> Option<Subject<'a>> {
        let principal = self.principal()?;
        Some(Subject::new(principal, &self.process, self.destination).with_hostname(hostname))
    }

    /// Puts who and where on a connection's record.
    pub fn fill(&self, r: &mut ConnectionRecord) {
        let info = &self.info;
        r.attributed = true;
        r.pid = Some(info.tgid);
        r.tid = Some(info.tid);
        r.uid = Some(info.uid);
        r.gid = Some(info.gid);
        r.comm = Some(self.process.comm.clone());
        r.exe.clone_from(&self.process.exe);
        r.cgroup_id = Some(info.cgroup_id);
        r.destination = Some(self.destination.to_string());
        r.job_id = self.job.as_ref().map(|job| job.id.clone());
        r.assurance = self.job.as_ref().map(|job| job.assurance);
    }
}

/// The process of a kernel record (`exe` as read from /proc, if it still could be).
pub fn process(info: &ConnInfo, exe: Option<String>) -> Process {
    Process {
        pid: info.tgid,
        uid: info.uid,
        gid: info.gid,
        comm: info.comm(),
        exe,
    }
}
