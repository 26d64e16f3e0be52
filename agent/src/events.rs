//! The kernel's events (refused sockets, for now) turned into records on the job that
//! caused them. The ring buffer is pinned: events written while the agent was down are
//! read when it starts again.
use std::{mem::size_of, sync::Arc};

use aya::maps::{Map, MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tollgate_common::{Event, EventKind, KernelConnEvent, MAP_EVENTS, UnixEvent};

use crate::{
    bpf::BpfError,
    jobs::JobRegistry,
    metrics::JobMetrics,
    record::{self, EventRecord, RecordEvent, Recorder},
};

pub struct EventReader {
    ring: RingBuf<MapData>,
    jobs: Arc<JobRegistry>,
    recorder: Recorder,
    metrics: Arc<JobMetrics>,
    udp: Arc<crate::udp::relay::Relay>,
    unix: Arc<crate::unix::Gate>,
    kernel: Arc<crate::kernel_path::KernelPath>,
}

/// Records an event on its job: one row, one counter increment, one log line.
pub fn record_event(recorder: &Recorder, metrics: &JobMetrics, event: EventRecord) {
    metrics.event(&event.kind, &event.action);
    tracing::warn!(
        kind = event.kind,
        action = event.action,
        job = event.job_id.as_deref(),
        pid = event.pid,
        comm = event.comm,
        detail = event.detail,
        "job event"
    );
    recorder.record(RecordEvent::Event(Box::new(event)));
}

impl EventReader {
    pub fn new(
        map: Map,
        jobs: Arc<JobRegistry>,
        recorder: Recorder,
        metrics: Arc<JobMetrics>,
        udp: Arc<crate::udp::relay::Relay>,
        unix: Arc<crate::unix::Gate>,
        kernel: Arc<crate::kernel_path::KernelPath>,
    ) -> Result<Self, BpfError> {
        let ring = RingBuf::try_from(map).map_err(|source| BpfError::Map {
            name: MAP_EVENTS,
            source,
        })?;
        Ok(Self {
            ring,
            jobs,
            recorder,
            metrics,
            udp,
            unix,
            kernel,
        })
    }

    /// Reads events until the runtime stops. Must run inside a tokio runtime with IO.
    pub async fn run(self) {
        let Self {
            ring,
            jobs,
            recorder,
            metrics,
            udp,
            unix,
            kernel,
        } = self;
        // SAFETY: the ring owns its map fd, which stays open and unchanged for as long as
        // the AsyncFd owns the ring.
        let registered =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(error) => {
                tracing::error!(%error, "cannot watch the kernel's event ring; events are not recorded");
                return;
            }
        };
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(guard) => guard,
                Err(error) => {
                    tracing::error!(%error, "kernel event ring failed; events are not recorded");
                    return;
                }
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if let Some(event) = parse_unix(&item) {
                    unix.reported(&event);
                    continue;
                }
                if let Some(event) = parse_kernel(&item) {
                    kernel.event(&event);
                    continue;
                }
                match parse(&item) {
                    Some(event) if event.kind == EventKind::CgroupMove as u32 => {
                        if let Some(record) = left_job(&event, &jobs) {
                            record_event(&recorder, &metrics, record);
                        }
                    }
                    // A refused datagram is counted on its flow, not an event of its own.
                    Some(event) if event.kind == EventKind::UdpRefused as u32 => {
                        udp.refused_in_kernel(&event);
                    }
                    Some(event) => record_event(&recorder, &metrics, to_record(&event, &jobs)),
                    None => tracing::warn!(len = item.len(), "malformed kernel event ignored"),
                }
            }
            guard.clear_ready();
        }
    }
}

/// A task moved to a cgroup outside every job, and it was a job's process (seen in a
/// job, placed in one, or the child of a job's process): it left its job. It is killed.
fn left_job(event: &Event, jobs: &JobRegistry) -> Option<EventRecord> {
    if jobs.resolve(event.cgroup_id).is_some() {
        return None;
    }
    let pid = event.tgid;
    let job_id = jobs.member_of(pid).or_else(|| {
        let parent = crate::proc_info::parent_pid(pid).ok()?;
        jobs.of_process(parent)
            .ok()
            .flatten()
            .map(|job| job.id.clone())
    })?;
    let uid = crate::proc_info::uid(pid).unwrap_or(u32::MAX);
    let comm = crate::proc_info::comm(pid).unwrap_or_default();
    let exe = crate::proc_info::exe(pid).map(|p| p.display().to_string());
    let to = jobs.cgroup_of(pid).map_or_else(
        |_| format!("id {}", event.cgroup_id),
        |p| p.display().to_string(),
    );
    let killed = crate::proc_info::kill(pid);
    let job = jobs.get(&job_id);
    Some(EventRecord {
        at: record::now_ms(),
        kind: "left_job".to_owned(),
        cgroup_id: job.map_or(0, |j| j.cgroup_id),
        job_id: Some(job_id),
        pid,
        tid: pid,
        uid,
        gid: u32::MAX,
        comm,
        exe,
        action: if killed { "killed" } else { "kill_failed" }.to_owned(),
        detail: format!("moved to cgroup {to} by pid {}", event.tid),
    })
}

fn parse(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: the slice holds at least size_of::<Event>() bytes; Event is plain data
    // valid for any bytes, and read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// A [`KernelConnEvent`], told apart from an [`Event`] by its kind.
fn parse_kernel(bytes: &[u8]) -> Option<KernelConnEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    let kernel = [
        EventKind::KernelConnect as u32,
        EventKind::KernelEstablished as u32,
        EventKind::KernelClosed as u32,
    ];
    if !kernel.contains(&kind) || bytes.len() < size_of::<KernelConnEvent>() {
        return None;
    }
    // SAFETY: the slice holds a whole KernelConnEvent, which is plain data valid for any
    // bytes; read_unaligned copes with the ring's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<KernelConnEvent>()) })
}

/// A [`UnixEvent`], told apart from an [`Event`] by its kind.
fn parse_unix(bytes: &[u8]) -> Option<UnixEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    if kind != EventKind::UnixConnect as u32 || bytes.len() < size_of::<UnixEvent>() {
        return None;
    }
    // SAFETY: the slice holds a whole UnixEvent, which is plain data valid for any
    // bytes; read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<UnixEvent>()) })
}

fn to_record(event: &Event, jobs: &JobRegistry) -> EventRecord {
    let job = jobs.resolve(event.cgroup_id);
    let comm = tollgate_common::convert::comm(&event.comm);
    let exe = crate::proc_info::exe(event.tgid).map(|p| p.display().to_string());
    let (kind, action, detail) = match EventKind::from_u32(event.kind) {
        Some(EventKind::SocketRefused) => (
            "socket_refused",
            "refused",
            crate::sockets::describe(event.sock),
        ),
        Some(EventKind::UdpRefused) => (
            "udp_refused",
            "refused",
            format!("udp to {}", event.dst.addr()),
        ),
        Some(
            EventKind::UnixConnect
            | EventKind::KernelConnect
            | EventKind::KernelEstablished
            | EventKind::KernelClosed,
        ) => ("unknown", "recorded", format!("kind {}", event.kind)),
        Some(EventKind::CgroupMove) => (
            "cgroup_move",
            "recorded",
            format!("to cgroup id {}", event.cgroup_id),
        ),
        None => ("unknown", "recorded", format!("kind {}", event.kind)),
    };
    EventRecord {
        at: record::now_ms(),
        kind: kind.to_owned(),
        job_id: job.map(|j| j.id.clone()),
        cgroup_id: event.cgroup_id,
        pid: event.tgid,
        tid: event.tid,
        uid: event.uid,
        gid: event.gid,
        comm,
        exe,
        action: action.to_owned(),
        detail,
    }
}

/// Watches the processes of every job, every `interval`: one that left its job is
/// killed and recorded, and so is one the scanner finds holding a socket from outside
/// its job or (where BPF LSM is missing) a refused kind of socket.
pub async fn watch_jobs(
    scanner: crate::sockets::scan::Scanner,
    jobs: Arc<JobRegistry>,
    recorder: Recorder,
    metrics: Arc<JobMetrics>,
    interval: std::time::Duration,
) {
    let state = Arc::new(std::sync::Mutex::new((
        scanner,
        crate::leave::Members::default(),
    )));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (state, jobs, recorder, metrics) = (
            state.clone(),
            jobs.clone(),
            recorder.clone(),
            metrics.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            let (scanner, members) = &mut *state;
            let since = std::time::Instant::now();
            let mut now = std::collections::HashMap::new();
            let mut live = std::collections::HashSet::new();
            let mut cgroups = std::collections::HashSet::new();
            for job in jobs.list() {
                for pid in crate::cgroup::pids(&job.cgroup_path) {
                    now.insert(
                        pid,
                        (job.id.clone(), job.cgroup_id, job.cgroup_path.clone()),
                    );
                }
                cgroups.insert(job.cgroup_path.clone());
                for finding in scanner.scan_cgroup(&job.cgroup_path, &mut live, &jobs.brought) {
                    record_event(
                        &recorder,
                        &metrics,
                        crate::sockets::scan::finding_record(&finding, &job.id, job.cgroup_id),
                    );
                }
            }
            scanner.retain(&live);
            jobs.brought.retain(&cgroups);
            jobs.set_members(
                now.iter()
                    .map(|(pid, (job_id, _, _))| (*pid, job_id.clone()))
                    .collect(),
                since,
            );
            for event in members.update(now, jobs.mount()) {
                record_event(&recorder, &metrics, event);
            }
        })
        .await;
    }
}
