//! A held statement's or connection's claim on its request: it waits for the decision,
//! and abandons the request when dropped first.
use std::{sync::Arc, time::Duration};

use tokio::sync::oneshot;

use super::{ApprovalState, Approvals, Outcome};

/// A held statement's or connection's claim on its request. Dropped before a decision
/// (its connection ended), the request is recorded as abandoned.
pub struct Ticket {
    approvals: Arc<Approvals>,
    id: String,
    woken: Option<oneshot::Receiver<Outcome>>,
}

impl Ticket {
    pub(super) fn new(
        approvals: Arc<Approvals>,
        id: String,
        woken: oneshot::Receiver<Outcome>,
    ) -> Self {
        Self {
            approvals,
            id,
            woken: Some(woken),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the decision, or for `approvals.timeout`. Dropped while it waits (the
    /// connection ended), the request is recorded as abandoned.
    pub async fn wait(mut self) -> Outcome {
        let timeout = self.approvals.config.timeout;
        let Some(woken) = self.woken.as_mut() else {
            return self.timed_out(timeout);
        };
        let outcome = match tokio::time::timeout(timeout, &mut *woken).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => self.timed_out(timeout),
            Err(_) => {
                let reason = format!(
                    "no reviewer decided within {}",
                    humantime::format_duration(timeout)
                );
                if self
                    .approvals
                    .give_up(&self.id, ApprovalState::TimedOut, reason)
                {
                    self.timed_out(timeout)
                } else {
                    // A reviewer decided as the time ran out: that decision stands.
                    match woken.await {
                        Ok(outcome) => outcome,
                        Err(_) => self.timed_out(timeout),
                    }
                }
            }
        };
        self.woken = None;
        outcome
    }

    fn timed_out(&self, after: Duration) -> Outcome {
        Outcome::TimedOut {
            request: self.id.clone(),
            after,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.woken.is_some() {
            let _ = self.approvals.give_up(
                &self.id,
                ApprovalState::Abandoned,
                "the connection ended before a reviewer decided".to_owned(),
            );
        }
    }
}
