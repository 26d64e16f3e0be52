//! `unix:connect`: a job's connect (or addressed datagram) to a unix socket, by path.
//! Unlike connect, it is allowed unless a policy forbids it, except for container-engine
//! sockets, which are denied unless a policy permits them: whoever reaches docker.sock
//! starts containers outside every job.
use cedar_policy::{Context, EntityUid};

use crate::{
    Decision, Effect, Principal, Process,
    eval::{PolicyEngine, Seen, target_entity_seen, uid},
};

/// The action's name.
pub const ACTION: &str = "unix:connect";

/// What a decision about a unix socket knows of it.
#[derive(Debug, Clone, Copy)]
pub struct UnixSocket<'a> {
    /// The path as the job named it; an abstract name as `@name`.
    pub path: &'a str,
    /// The container engine it belongs to (`docker`, `containerd`, `podman`), if any.
    pub engine: Option<&'a str>,
}

/// The process facts of a unix decision: the kernel decides before anyone asks, so no
/// decision may depend on the process.
pub fn unknown_process() -> Process {
    Process {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
        comm: String::new(),
        exe: None,
    }
}

/// Why a path is allowed when no policy decides it.
pub const DEFAULT_ALLOW_REASON: &str =
    "no policy forbids unix:connect to this path: allowed by default";

/// Why a container-engine socket is denied when no policy permits it.
pub fn engine_reason(engine: &str, path: &str) -> String {
    format!(
        "{path} is the {engine} engine's socket, which starts containers outside every job: \
         denied unless a policy permits unix:connect to it"
    )
}

impl PolicyEngine {
    /// Decides a job's connect to a unix socket.
    pub fn decide_unix(&self, principal: &Principal, socket: UnixSocket<'_>) -> Decision {
        let evaluated = self.evaluate_unix(principal, socket);
        let evaluated = match evaluated {
            // No policy determined it: the unix default.
            Ok((Effect::Deny, ids, _)) if ids.is_empty() => Ok(default_for(socket)),
            other => other,
        };
        let mut decision = self.decision(None, evaluated);
        decision.target = socket.path.to_owned();
        decision
    }

    fn evaluate_unix(
        &self,
        principal: &Principal,
        socket: UnixSocket<'_>,
    ) -> Result<(Effect, Vec<String>, String), String> {
        let resource_uid: EntityUid =
            uid("Target", &format!("unix:{}", socket.path)).ok_or("bad target id")?;
        let seen = Seen {
            destination: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            hostname: None,
            protocol: Some("unix"),
            unix: Some((socket.path, socket.engine.unwrap_or(""))),
        };
        let resource = target_entity_seen(resource_uid, &seen, None).map_err(|e| e.to_string())?;
        self.authorize(
            principal,
            &unknown_process(),
            ACTION,
            resource,
            Context::empty(),
        )
    }
}

fn default_for(socket: UnixSocket<'_>) -> (Effect, Vec<String>, String) {
    match socket.engine {
        Some(engine) => (Effect::Deny, Vec::new(), engine_reason(engine, socket.path)),
        None => (Effect::Allow, Vec::new(), DEFAULT_ALLOW_REASON.to_owned()),
    }
}

/// The decision without any policy engine (no policy configured): the unix default,
/// enforced.
pub fn without_policy(socket: UnixSocket<'_>) -> Decision {
    let (effect, policy_ids, reason) = default_for(socket);
    Decision {
        effect,
        enforced: true,
        policy_ids,
        reason,
        target: socket.path.to_owned(),
        protocol: None,
    }
}

#[cfg(test)]
mod tests;
