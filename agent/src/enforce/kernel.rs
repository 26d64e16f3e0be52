//! What the kernel may decide on its own: which connect decisions are final at connect
//! time (see `proxy.kernel_verdicts`), and which networks stay on the proxy path.
use std::net::SocketAddr;

use ipnet::IpNet;
use tollgate_policy::{
    Decision, Effect, Mode, PortRange, ResultsMasking, TargetSpec, targets::canonical,
};

use super::Snapshot;
use crate::postgres::mask::MaskingConfig;

/// What the policy in force lets the kernel decide.
#[derive(Debug, Clone, Default)]
pub struct KernelPlan {
    /// The policy generation it was made from.
    pub generation: u64,
    /// Every connect of every job is allowed (no policy directory): jobs' connects go
    /// straight to their destination, except to [`KernelPlan::proxied`].
    pub everything: bool,
    /// Why no decision is final in the kernel, when none is.
    pub blind: Option<String>,
    /// Why not every connect is final even without policies, when it is not.
    pub partial: Option<String>,
    /// Networks (and their ports; empty: any) that always take the proxy path, with why.
    pub proxied: Vec<(IpNet, Vec<PortRange>, String)>,
}

/// Why a target keeps its connections on the proxy path, if it does.
pub fn proxied_because(target: &TargetSpec, mode: Mode) -> Option<String> {
    if target.kernel_verdicts == Some(false) {
        return Some("the target opts out (kernel_verdicts = false)".to_owned());
    }
    match target.protocol.as_deref() {
        Some("postgres") => {
            return Some(
                "an L7 target (protocol = \"postgres\"): statements are decided".to_owned(),
            );
        }
        Some("http") => {
            return Some("an L7 target (protocol = \"http\"): requests are decided".to_owned());
        }
        Some("mcp") => {
            return Some("an L7 target (protocol = \"mcp\"): tool calls are decided".to_owned());
        }
        _ => {}
    }
    if target.masking.is_some() {
        return Some("masking is configured for its sessions".to_owned());
    }
    if target.mode.unwrap_or(mode) == Mode::Audit {
        return Some("audit mode: every connection is evaluated and recorded".to_owned());
    }
    None
}

/// The networks a target matches: its CIDRs and the addresses its DNS names resolved
/// to, or every address when it names neither.
fn networks(target: &TargetSpec) -> Vec<IpNet> {
    if target.cidrs.is_empty() && target.dns_names.is_empty() {
        return vec![
            IpNet::V4(ipnet::Ipv4Net::default()),
            IpNet::V6(ipnet::Ipv6Net::default()),
        ];
    }
    let mut nets = target.cidrs.clone();
    nets.extend(target.resolved.iter().map(|ip| IpNet::from(canonical(*ip))));
    nets
}

/// Whether `[masking]` changes what clients see of results (else it only keeps values
/// out of the records, which a session that is not followed has none of).
fn masks_results(masking: &MaskingConfig) -> bool {
    masking.enabled && (masking.results == ResultsMasking::Detect || !masking.rules.is_empty())
}

/// A target that declares no protocol, where what the proxy would follow on it (a
/// PostgreSQL session under a policy on statements or the masking of results, HTTP under
/// a policy on requests) would escape unfollowed, stays on the proxy path: the next
/// connection might speak it. `followed`: why such a connection would be followed, if
/// anything would be.
fn undeclared(followed: Option<&str>, protocol: Option<&str>) -> Result<(), String> {
    match followed {
        Some(why) if protocol.is_none() => Err(format!(
            "the target declares no protocol, and {why}: a connection to it would be followed"
        )),
        _ => Ok(()),
    }
}

/// Why a connection to a target that declares no protocol would be followed at L7.
fn followed_because(sql: bool, masking: &MaskingConfig, http: bool) -> Option<&'static str> {
    if sql {
        Some("a policy governs SQL")
    } else if masks_results(masking) {
        Some("[masking] masks PostgreSQL results")
    } else if http {
        Some("a policy governs HTTP requests or MCP tool calls")
    } else {
        None
    }
}

impl Snapshot {
    /// What the kernel may decide under this policy.
    pub fn kernel_plan(&self) -> KernelPlan {
        let active = &self.active;
        let mut plan = KernelPlan {
            generation: active.generation,
            ..KernelPlan::default()
        };
        let catalog: &[TargetSpec] = match &active.engine {
            Some(engine) => engine.targets(),
            // Without a policy directory there is no catalog: the configured targets.
            None => &active.settings.targets,
        };
        if active.settings.mode == Mode::Audit {
            plan.blind = Some("policy mode is audit: every connection is evaluated".to_owned());
        } else if let Some((id, what)) = active
            .engine
            .as_ref()
            .and_then(|engine| engine.kernel_blind_read())
        {
            plan.blind = Some(format!(
                "policy {id} reads {what}, which the kernel does not see at connect()"
            ));
        }
        if masks_results(&active.settings.masking) {
            plan.partial = Some(
                "[masking] masks results: a PostgreSQL session to a target that declares no \
                 protocol must be followed, so such targets stay on the proxy path"
                    .to_owned(),
            );
        }
        plan.everything = active.engine.is_none() && plan.blind.is_none() && plan.partial.is_none();
        for target in catalog {
            if let Some(why) = proxied_because(target, active.settings.mode) {
                for net in networks(target) {
                    plan.proxied.push((
                        net,
                        target.ports.clone(),
                        format!("{}: {why}", target.name),
                    ));
                }
            }
        }
        plan
    }

    /// Whether an allowed connect decision is final at connect time, so the kernel may
    /// repeat it for the same key: `Err` says why not.
    pub fn kernel_final(
        &self,
        destination: SocketAddr,
        hostname: Option<&str>,
        decision: &Decision,
    ) -> Result<(), String> {
        if decision.effect != Effect::Allow || !decision.enforced {
            return Err(format!("the decision is {}", decision.label()));
        }
        let active = &self.active;
        let Some(engine) = active.engine.as_ref() else {
            // No catalog without a policy directory: the configured targets.
            let target = active
                .settings
                .targets
                .iter()
                .find(|t| t.matches(destination.ip(), destination.port()));
            if let Some(why) = target.and_then(|t| proxied_because(t, active.settings.mode)) {
                return Err(why);
            }
            return undeclared(
                followed_because(false, &active.settings.masking, false),
                target.and_then(|t| t.protocol.as_deref()),
            );
        };
        if let Some((id, what)) = engine.kernel_blind_read() {
            return Err(format!("policy {id} reads {what}"));
        }
        let by_address = engine.target(destination);
        if let Some(target) = by_address
            && let Some(why) = proxied_because(target, active.settings.mode)
        {
            return Err(why);
        }
        undeclared(
            followed_because(
                engine.governs_sql(),
                &active.settings.masking,
                engine.governs_http() || engine.governs_mcp(),
            ),
            by_address.and_then(|t| t.protocol.as_deref()),
        )?;
        // A name the job resolved may pick another target than the address alone.
        if hostname.is_some()
            && by_address.map_or("(unknown)", |t| t.name.as_str()) != decision.target
        {
            return Err("the target was chosen by the name the job resolved".to_owned());
        }
        Ok(())
    }
}
