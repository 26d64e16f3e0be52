//! `udp:send`: a job's UDP flow (one socket, one destination) other than DNS. Unlike
//! connect, it is denied unless a policy permits it, whether or not any policy is
//! configured: UDP carries tunnels and QUIC past every L7 rule.
use crate::{Decision, Mode, Subject, eval::PolicyEngine};

/// The action's name.
pub const ACTION: &str = "udp:send";

/// Why a flow is refused when no permit can apply to `udp:send`.
pub const NO_UDP_PERMIT_REASON: &str =
    "no policy permits udp:send: UDP other than DNS is denied by default";

impl PolicyEngine {
    /// Whether any permit can apply to `udp:send`, or the mode lets everything through
    /// (audit, globally or on a target): then flows must be decided one by one.
    pub fn decides_udp(&self) -> bool {
        self.bundle().may_permit_udp()
            || self.mode() == Mode::Audit
            || self
                .catalog()
                .targets()
                .iter()
                .any(|t| t.mode == Some(Mode::Audit))
    }

    /// Decides one UDP flow.
    pub fn decide_udp(&self, subject: Subject<'_>) -> Decision {
        if !self.decides_udp() {
            return Decision::deny(NO_UDP_PERMIT_REASON).about(self.target_of(&subject));
        }
        self.decide_action(subject, ACTION)
    }
}

/// The decision without any policy engine (no policy configured): denied, enforced.
pub fn without_policy() -> Decision {
    Decision::deny(NO_UDP_PERMIT_REASON)
}

#[cfg(test)]
mod tests;
