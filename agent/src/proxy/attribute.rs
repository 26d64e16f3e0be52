//! Attribution: from the kernel's record of a connect to who made it (the job and the
//! process) and where it was going. Both paths (proxy and kernel) attribute here, and
//! their records carry the same facts.
use std::{io, net::SocketAddr, sync::Arc};

use tollgate_common::{ConnInfo, TupleKey};
use tollgate_policy::{Principal, Process, Subject};

use crate::{
    bpf::ConnMaps,
    jobs::{Job, JobRegistry},
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
}

impl Attributed {
    /// The connection the proxy accepted from `peer`: the kernel's record of it is taken
    /// (it is used once).
    pub fn accepted(
        maps: &ConnMaps,
        jobs: &JobRegistry,
        peer: SocketAddr,
    ) -> Result<Self, Unattributed> {
        match maps.take(&TupleKey::from_addr(peer)) {
            Ok(Some(info)) => Ok(Self::from_record(info, jobs)),
            Ok(None) => Err(Unattributed::NoRecord),
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
