//! `dns:query`: a job's DNS query, decided by the queried name. The resource is a
//! `Target` whose `hostname` is the name (lowercase, without the trailing dot), matched
//! with Cedar's `like` for suffixes (`resource.hostname like "*.corp.example"`). A catalog
//! target whose `dns_names` hold the name lends it its name, tags and mode.
use std::net::SocketAddr;

use cedar_policy::{Context, Entity};

use crate::{
    Decision, Principal, Process,
    eval::{PolicyEngine, Seen, string, target_entity_seen, uid},
    targets::TargetSpec,
};

/// Why queries pass when no policy names `dns:query`.
pub const NO_DNS_POLICY_REASON: &str = "no policy governs DNS queries: allowed";

/// One query as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct DnsQuery<'a> {
    pub principal: &'a Principal,
    pub process: &'a Process,
    /// The server the job addressed (its query went to Tollgate's resolver instead).
    pub server: SocketAddr,
    /// Lowercase, without the trailing dot.
    pub name: &'a str,
    /// `A`, `AAAA`, `TXT`, ...
    pub qtype: &'a str,
}

/// The queried name as policy sees it: lowercase ASCII, without the root's trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `name` is one of `patterns` (exact, or `*.suffix` for any name below suffix).
pub fn name_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| {
        let p = normalize(p);
        match p.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => p == name,
        }
    })
}

impl PolicyEngine {
    /// The catalog target whose `dns_names` hold `name`, if any.
    pub fn target_named(&self, name: &str) -> Option<&TargetSpec> {
        self.catalog()
            .targets()
            .iter()
            .find(|t| name_matches(&t.dns_names, name))
    }

    /// Decides one DNS query.
    pub fn decide_dns(&self, query: DnsQuery<'_>) -> Decision {
        let target = self.target_named(query.name);
        if !self.governs_dns() {
            return Decision::allow(NO_DNS_POLICY_REASON).about(target);
        }
        let evaluated = dns_target(&query, target).and_then(|resource| {
            let context = Context::from_pairs([("qtype".to_owned(), string(query.qtype))])
                .map_err(|e| e.to_string())?;
            self.authorize(
                query.principal,
                query.process,
                "dns:query",
                resource,
                context,
            )
        });
        self.decision(target, evaluated)
    }
}

fn dns_target(query: &DnsQuery<'_>, target: Option<&TargetSpec>) -> Result<Entity, String> {
    let id = target.map_or_else(|| format!("dns:{}", query.name), |t| t.name.clone());
    let uid = uid("Target", &id).ok_or("bad target id")?;
    let seen = Seen {
        destination: query.server,
        hostname: Some(query.name),
        protocol: Some("dns"),
        unix: None,
    };
    target_entity_seen(uid, &seen, target).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
