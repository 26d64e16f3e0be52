//! Kernel-path connections, recorded from the kernel's events: the connect (the facts
//! the proxy path records), the establish (the client's own address) and the close (the
//! bytes each way). One record and one access-log event per connection, as on the proxy
//! path.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tollgate_common::{AF_INET6, ConnInfo, EventKind, KernelConnEvent, TupleKey, VerdictKey};
use tollgate_policy::{Decision, Subject};

use super::{KernelPath, destroy};
use crate::{
    bpf::monotonic_ns,
    jobs::Job,
    proxy::attribute::{Attributed, process},
    record::DecisionLabel,
    record::{ConnectionRecord, now_ms},
};

/// How long a connection whose socket is gone may wait for its close event.
const LOST_AFTER: Duration = Duration::from_secs(5);

struct Conn {
    record: ConnectionRecord,
    job: Option<Arc<Job>>,
    info: ConnInfo,
    local: Option<SocketAddr>,
    /// A decision that blocks it, to apply once the socket has a tuple.
    revoke: Option<Decision>,
    seen: Instant,
}

#[derive(Default)]
pub struct Live {
    conns: Mutex<HashMap<u64, Conn>>,
}

const TCP_SYN_SENT: u32 = 2;
const TCP_FIN_WAIT2: u32 = 5;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const TCP_CLOSING: u32 = 11;

/// The data bytes each way of a closed connection, as the proxy path counts them: the
/// kernel's `bytes_acked` counts the SYN and an acknowledged FIN too, and its
/// `bytes_received` a received FIN; the state the connection closed from tells which.
fn data_bytes(event: &KernelConnEvent) -> (u64, u64) {
    let old = event.old_state;
    if old == TCP_SYN_SENT {
        return (0, 0);
    }
    let fin_acked = matches!(old, TCP_FIN_WAIT2 | TCP_CLOSING | TCP_LAST_ACK);
    let fin_received = matches!(
        old,
        TCP_FIN_WAIT2 | TCP_CLOSING | TCP_LAST_ACK | TCP_CLOSE_WAIT
    );
    (
        event.bytes_acked.saturating_sub(1 + u64::from(fin_acked)),
        event.bytes_received.saturating_sub(u64::from(fin_received)),
    )
}

/// What the kernel saw of a connect: its verdict key.
pub fn verdict_key(info: &ConnInfo) -> VerdictKey {
    VerdictKey {
        cgroup_id: info.cgroup_id,
        uid: info.uid,
        gid: info.gid,
        comm: info.comm,
        dst: TupleKey {
            family: u32::from(info.orig_family),
            port: u32::from(info.orig_port),
            ip: info.orig_ip,
        },
    }
}

impl Live {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.conns().len()
    }

    pub fn event(&self, kp: &KernelPath, event: &KernelConnEvent) {
        let cookie = event.info.cookie;
        match EventKind::from_u32(event.kind) {
            Some(EventKind::KernelConnect) => {
                let conn = connected(kp, event);
                self.conns().insert(cookie, conn);
            }
            Some(EventKind::KernelEstablished) => {
                let mut conns = self.conns();
                let Some(conn) = conns.get_mut(&cookie) else {
                    return;
                };
                conn.seen = Instant::now();
                let local = event.local.addr();
                conn.local = Some(local);
                conn.record.source = local.to_string();
                let elapsed = event.ktime_ns.saturating_sub(conn.info.ktime_ns) / 1_000;
                conn.record.connect_us = Some(elapsed);
                if let Some(decision) = conn.revoke.take() {
                    revoke(kp, cookie, conn, &decision);
                }
            }
            Some(EventKind::KernelClosed) => {
                let Some(mut conn) = self.conns().remove(&cookie) else {
                    return;
                };
                let (up, down) = data_bytes(event);
                conn.record.bytes_up = up;
                conn.record.bytes_down = down;
                if event.old_state == TCP_SYN_SENT && conn.record.error.is_none() {
                    conn.record.error = Some(
                        "no connection was established (refused, unreachable or timed out)"
                            .to_owned(),
                    );
                }
                finish(kp, conn);
            }
            _ => {}
        }
    }

    /// Ends the records of connections whose socket is gone but whose close event never
    /// came (the ring was full).
    pub fn sweep_lost(&self, kp: &KernelPath) {
        let lost: Vec<Conn> = {
            let mut conns = self.conns();
            let mut gone = Vec::new();
            // Each connection is looked up at most once per LOST_AFTER.
            for (cookie, conn) in conns.iter_mut() {
                if conn.seen.elapsed() < LOST_AFTER {
                    continue;
                }
                match kp.maps.connecting(*cookie) {
                    Ok(false) => gone.push(*cookie),
                    _ => conn.seen = Instant::now(),
                }
            }
            gone.into_iter()
                .filter_map(|cookie| conns.remove(&cookie))
                .collect()
        };
        for mut conn in lost {
            conn.record.error = Some("its close was not reported (kernel events lost)".to_owned());
            finish(kp, conn);
        }
    }

    /// Re-decides every live connection after a reload; destroys the denied ones.
    pub fn revoke_denied(&self, kp: &KernelPath) -> usize {
        let policy = kp.enforcer.snapshot();
        let mut conns = self.conns();
        let mut revoked = 0;
        for (cookie, conn) in conns.iter_mut() {
            let Some(job) = conn.job.clone() else {
                continue;
            };
            let process = process(&conn.info, conn.record.exe.clone());
            let destination = conn.info.original_destination();
            let decision =
                policy.decide_connect(Subject::new(&job.principal, &process, destination));
            if decision.blocks() && decision.effect != tollgate_policy::Effect::RequireApproval {
                revoked += 1;
                if conn.local.is_some() {
                    revoke(kp, *cookie, conn, &decision);
                } else {
                    conn.revoke = Some(decision);
                }
            }
        }
        revoked
    }
}

/// The record of a connect that went straight to its destination.
fn connected(kp: &KernelPath, event: &KernelConnEvent) -> Conn {
    let conn = Attributed::from_record(event.info, &kp.jobs);
    let info = conn.info;
    let age_ms = monotonic_ns().saturating_sub(info.ktime_ns) / 1_000_000;
    let mut record = ConnectionRecord {
        id: uuid::Uuid::now_v7().to_string(),
        started_at: now_ms() - age_ms as i64,
        path: Some("kernel".to_owned()),
        ..Default::default()
    };
    conn.fill(&mut record);
    let key = verdict_key(&info);
    // A verdict dropped since the kernel used it (a reload, an attest): decided anew,
    // and destroyed once it has a tuple if that decision blocks it.
    let (decision, revoke) = match kp.decision_for(&key) {
        Some(decision) => (decision, None),
        None => {
            let decision = match conn.subject(None) {
                Some(subject) => kp.enforcer.snapshot().decide_connect(subject),
                None => Decision::deny(format!(
                    "cgroup {} is not an active Tollgate job: refused",
                    info.cgroup_id
                )),
            };
            let revoke = decision.blocks().then(|| decision.clone());
            (decision, revoke)
        }
    };
    kp.proxy_metrics.decision(record.decided(&decision));
    kp.recorder.opened(&record);
    Conn {
        record,
        job: conn.job,
        info,
        local: None,
        revoke,
        seen: Instant::now(),
    }
}

/// Destroys a live connection's socket and records it as revoked.
fn revoke(kp: &KernelPath, cookie: u64, conn: &mut Conn, decision: &Decision) {
    let Some(local) = conn.local else {
        return;
    };
    let remote = conn.info.original_destination();
    let v6_socket = conn.info.sock_family == AF_INET6;
    match destroy::destroy(local, remote, cookie, v6_socket) {
        Ok(_) => {
            kp.policy_metrics.revoked.inc();
            conn.record.decision = DecisionLabel::Revoked;
            conn.record.reason = format!("revoked by a policy reload: {}", decision.reason);
            conn.record.policy_ids = decision.policy_ids.clone();
        }
        Err(error) => {
            tracing::error!(%error, %local, %remote, "destroying a revoked kernel-path connection");
            conn.record.error = Some(format!("revocation failed: {error}"));
        }
    }
}

fn finish(kp: &KernelPath, mut conn: Conn) {
    crate::proxy::access::finish(
        &mut conn.record,
        conn.job.as_deref(),
        &kp.proxy_metrics,
        &kp.recorder,
        None,
    );
}
