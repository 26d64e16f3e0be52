//! The facts about the calling task that every record and event carries.
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_uid_gid, generated::bpf_ktime_get_ns,
};

pub struct Caller {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    pub comm: [u8; 16],
}

#[inline(always)]
pub fn caller() -> Caller {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: helpers allowed in every program type that calls this (cgroup sock,
    // sock_addr and LSM programs run in the caller's context).
    let (cgroup_id, ktime_ns) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_ns()) };
    Caller {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        ktime_ns,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}
