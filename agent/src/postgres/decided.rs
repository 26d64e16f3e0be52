//! A statement's decision, with what its records take of it in shared form: the
//! session's decision cache hands out one `Arc<Decided>` per (action, tables), and each
//! statement record clones its policy ids and reason without copying them.
use std::sync::{Arc, LazyLock};

use tollgate_policy::Decision;

pub struct Decided {
    pub decision: Decision,
    pub policy_ids: Arc<[String]>,
    pub reason: Arc<str>,
}

impl std::ops::Deref for Decided {
    type Target = Decision;

    fn deref(&self) -> &Decision {
        &self.decision
    }
}

/// Built once: a message of transaction control only (BEGIN, COMMIT) is common.
static TRANSACTION_CONTROL: LazyLock<Arc<Decided>> =
    LazyLock::new(|| Decided::new(Decision::allow("transaction control is always allowed")));

impl Decided {
    pub fn new(decision: Decision) -> Arc<Self> {
        Arc::new(Self {
            policy_ids: decision.policy_ids.as_slice().into(),
            reason: decision.reason.as_str().into(),
            decision,
        })
    }

    /// The decision for statements no policy decides: transaction control.
    pub fn transaction_control() -> Arc<Self> {
        TRANSACTION_CONTROL.clone()
    }
}
