//! Live connections of this worker thread, so that a policy reload can re-decide them and
//! close those it now denies. Each worker runs a single-threaded runtime, so the
//! registry is thread-local: registering and revoking take no lock.
use std::{cell::RefCell, collections::HashMap, net::SocketAddr, sync::Arc};

use tokio::sync::oneshot;
use tollgate_policy::{Decision, Effect, Principal, Process, Subject};

use crate::enforce::Snapshot;

struct Entry {
    principal: Arc<Principal>,
    process: Process,
    destination: SocketAddr,
    hostname: Option<String>,
    revoke: oneshot::Sender<Decision>,
}

thread_local! {
    static LIVE: RefCell<(u64, HashMap<u64, Entry>)> = RefCell::new((0, HashMap::new()));
}

/// Removes the connection from the registry when dropped.
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        LIVE.with(|live| {
            live.borrow_mut().1.remove(&self.0);
        });
    }
}

/// Registers a relayed connection; the receiver fires with the new decision if a reload
/// revokes it.
pub fn register(
    principal: Arc<Principal>,
    process: Process,
    destination: SocketAddr,
    hostname: Option<String>,
) -> (Registration, oneshot::Receiver<Decision>) {
    let (revoke, revoked) = oneshot::channel();
    let id = LIVE.with(|live| {
        let mut live = live.borrow_mut();
        live.0 += 1;
        let id = live.0;
        live.1.insert(
            id,
            Entry {
                principal,
                process,
                destination,
                hostname,
                revoke,
            },
        );
        id
    });
    (Registration(id), revoked)
}

/// Re-decides this thread's live connections; revokes those now blocked. Returns how
/// many were revoked.
pub fn revoke_denied(policy: &Snapshot) -> usize {
    LIVE.with(|live| {
        let mut live = live.borrow_mut();
        let blocked: Vec<(u64, Decision)> = live
            .1
            .iter()
            .filter_map(|(id, entry)| {
                let decision = policy.decide_connect(
                    Subject::new(&entry.principal, &entry.process, entry.destination)
                        .with_hostname(entry.hostname.as_deref()),
                );
                // A live connection that now needs approval was approved (or allowed)
                // when it connected: approval applies to new connects only.
                (decision.blocks() && decision.effect != Effect::RequireApproval)
                    .then_some((*id, decision))
            })
            .collect();
        let count = blocked.len();
        for (id, decision) in blocked {
            if let Some(entry) = live.1.remove(&id) {
                let _ = entry.revoke.send(decision);
            }
        }
        count
    })
}
