//! tracepoint cgroup/cgroup_attach_task: every move of a task to a cgroup, reported to
//! the agent, which kills a job's process that moved out of its job.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tollgate_common::{Counter, Event, EventKind, SockKind, TupleKey};

use crate::{
    caller::caller,
    maps::{EVENTS, count},
};

/// Offsets of `dst_id` and `pid` in the tracepoint's record (its format file).
const DST_ID: usize = 16;
const PID: usize = 24;

#[tracepoint(category = "cgroup", name = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    // SAFETY: both offsets lie inside the tracepoint's fixed record.
    let (Ok(dst), Ok(pid)) = (unsafe { ctx.read_at::<u64>(DST_ID) }, unsafe {
        ctx.read_at::<i32>(PID)
    }) else {
        return 0;
    };
    let c = caller();
    let event = Event {
        kind: EventKind::CgroupMove as u32,
        // The task moved; `tid` is the thread that moved it.
        tgid: pid as u32,
        tid: c.tgid,
        uid: c.uid,
        gid: c.gid,
        _pad: 0,
        cgroup_id: dst,
        ktime_ns: c.ktime_ns,
        sock: SockKind::default(),
        _pad2: 0,
        comm: c.comm,
        dst: TupleKey::default(),
    };
    if EVENTS.output::<Event>(&event, 0).is_err() {
        count(Counter::EventsLost);
    }
    0
}
