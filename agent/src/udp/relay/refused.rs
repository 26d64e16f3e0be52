//! Refused datagrams, counted on flows: those the kernel refused (reported through the
//! events ring) and those the relay had no room for.
use std::net::{Ipv4Addr, SocketAddr};

use tollgate_common::Event;
use tollgate_policy::Process;

use super::{Flow, FlowKey, Relay, State};
use crate::{
    record::{DecisionLabel, RecordEvent, now_ms},
    udp::EnforcedBy,
};

impl Relay {
    /// A datagram the kernel refused: counted on the (process, destination) flow.
    pub fn refused_in_kernel(&self, event: &Event) {
        let process = Process {
            pid: event.tgid,
            uid: event.uid,
            gid: event.gid,
            comm: tollgate_common::convert::comm(&event.comm),
            exe: None,
        };
        let reason = if self.enforcer.snapshot().decides_udp() {
            "refused in the kernel: the relay denied this socket's flow to it".to_owned()
        } else {
            format!(
                "refused in the kernel: {}",
                tollgate_policy::udp::NO_UDP_PERMIT_REASON
            )
        };
        let dst = event.dst.addr();
        let mut state = self.state();
        self.count_refused(
            &mut state,
            event.cgroup_id,
            process,
            dst,
            EnforcedBy::Kernel,
            reason,
        );
    }

    /// Counts a refused datagram on its (process, destination) flow, made if need be.
    /// With `udp.max_flows` flows live, a process's refusals to new destinations are
    /// counted on one flow of its own to `0.0.0.0:0` instead: a job that sprays
    /// datagrams cannot grow the agent's memory or the store without bound.
    pub(super) fn count_refused(
        &self,
        state: &mut State,
        cgroup_id: u64,
        mut process: Process,
        dst: SocketAddr,
        enforced_by: EnforcedBy,
        reason: String,
    ) {
        let now = now_ms();
        let mut key = FlowKey::Refused {
            cgroup_id,
            pid: process.pid,
            dst,
        };
        let full = state.flows.len() >= self.config.max_flows;
        if full && !state.flows.contains_key(&key) {
            key = FlowKey::Refused {
                cgroup_id,
                pid: process.pid,
                dst: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            };
        }
        if let Some(flow) = state.flows.get_mut(&key) {
            flow.record.last_at = now;
            flow.record.packets_out += 1;
            return;
        }
        let FlowKey::Refused { dst, .. } = key else {
            return;
        };
        process.exe = crate::proc_info::exe(process.pid).map(|p| p.display().to_string());
        let job = self.jobs.resolve(cgroup_id);
        let mut record = self.new_record(cgroup_id, &process, dst, enforced_by);
        record.job_id = job.as_ref().map(|job| job.id.clone());
        record.hostname = job
            .as_ref()
            .and_then(|job| self.resolver.name_of(&job.id, dst.ip()));
        record.decision = DecisionLabel::Deny;
        record.packets_out = 1;
        record.reason = if full {
            format!(
                "{reason}; the relay has udp.max_flows ({}) flows, so this process's \
                 refusals to further destinations are counted here",
                self.config.max_flows
            )
        } else {
            reason
        };
        self.metrics.flow(DecisionLabel::Deny, enforced_by);
        self.recorder
            .record(RecordEvent::UdpFlow(Box::new(record.clone())));
        state.flows.insert(
            key,
            Flow {
                record,
                cookie: 0,
                process,
                principal: job.map(|job| job.principal.clone()),
                carried: None,
            },
        );
    }
}
