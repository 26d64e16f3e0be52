//! The decisions of one connection's requests, kept while the policy in force does not
//! change: a request is a pure function of the job, the process, the destination and
//! what policy reads of it (method, scheme, host, path, query, configured headers), so
//! a client that repeats a request (a poll, a retry, a keep-alive benchmark) is decided
//! once per policy generation, as a PostgreSQL session's statements are.
use std::{collections::HashMap, sync::Mutex};

use tollgate_policy::{Decision, HttpRequest, Subject};

use crate::enforce::Snapshot;

/// Decisions kept per connection; past it the map starts over.
const CAPACITY: usize = 256;

#[derive(Default)]
pub(super) struct Decisions {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    generation: u64,
    map: HashMap<HttpRequest, Decision>,
}

impl Decisions {
    /// `request`'s decision under `policy`: kept, or made and kept.
    pub(super) fn decide(
        &self,
        policy: &Snapshot,
        subject: Subject<'_>,
        request: &HttpRequest,
    ) -> Decision {
        {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.generation != policy.generation() {
                kept.generation = policy.generation();
                kept.map.clear();
            }
            if let Some(decision) = kept.map.get(request) {
                return decision.clone();
            }
        }
        let decision = policy.decide_http(subject, request);
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.generation == policy.generation() {
            if kept.map.len() >= CAPACITY {
                kept.map.clear();
            }
            kept.map.insert(request.clone(), decision.clone());
        }
        decision
    }
}
