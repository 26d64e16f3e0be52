//! Evaluating a connection (or, later, a statement) against the policy set.
use std::{collections::BTreeMap, net::SocketAddr, str::FromStr as _};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, Request, RestrictedExpression,
};

use crate::{
    Decision, Effect, Mode, Principal, Process, SqlContext, Subject,
    load::PolicyBundle,
    targets::{Catalog, TargetSpec, canonical},
};

/// The annotation on a permit policy that turns its Allow into RequireApproval.
pub const APPROVAL_ANNOTATION: &str = "approval";
/// The annotation that caps the scope a reviewer may grant: `once`, `job` or a duration.
pub const APPROVAL_SCOPE_ANNOTATION: &str = "approval_scope";

/// Policies, the targets catalog and the mode: everything a decision needs.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    bundle: PolicyBundle,
    catalog: Catalog,
    mode: Mode,
    authorizer: Authorizer,
    governs_sql: bool,
    governs_dns: bool,
    /// The first policy that reads what the kernel cannot see at connect time, found
    /// once at load (the agent asks on every connection it relays at L4).
    kernel_blind: Option<(String, &'static str)>,
    reads_hello: crate::kernel::ReadsHello,
}

/// Why statements pass when no policy governs SQL.
pub const NO_SQL_POLICY_REASON: &str =
    "no policy governs SQL statements: allowed on a permitted connection";

pub(crate) fn uid(type_name: &str, id: &str) -> Option<EntityUid> {
    Some(EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(type_name).ok()?,
        EntityId::new(id),
    ))
}

pub(crate) fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

impl PolicyEngine {
    /// The `@approval_scope` caps of these policies (by id): the agent lets a reviewer
    /// grant no wider than the narrowest of them.
    pub fn approval_scopes(&self, policy_ids: &[String]) -> Vec<String> {
        policy_ids
            .iter()
            .filter_map(|id| {
                self.bundle
                    .annotation(&PolicyId::new(id), APPROVAL_SCOPE_ANNOTATION)
                    .map(str::to_owned)
            })
            .collect()
    }
}

impl PolicyEngine {
    pub fn new(bundle: PolicyBundle, catalog: Catalog, mode: Mode) -> Self {
        Self {
            governs_sql: bundle.governs_sql(),
            governs_dns: bundle.governs_dns(),
            kernel_blind: bundle.kernel_blind_read(),
            reads_hello: bundle.reads_hello(),
            bundle,
            catalog,
            mode,
            authorizer: Authorizer::new(),
        }
    }

    pub fn policy_count(&self) -> usize {
        self.bundle.len()
    }

    /// The targets of the catalog, in order.
    pub fn targets(&self) -> &[TargetSpec] {
        self.catalog.targets()
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The first policy that reads what the kernel cannot see at connect time (see
    /// [`PolicyBundle::kernel_blind_read`]).
    pub fn kernel_blind_read(&self) -> Option<(&str, &'static str)> {
        self.kernel_blind
            .as_ref()
            .map(|(id, what)| (id.as_str(), *what))
    }

    /// What a connect decision can read from the client's ClientHello (see
    /// [`PolicyBundle::reads_hello`]).
    pub fn reads_hello(&self) -> crate::kernel::ReadsHello {
        self.reads_hello
    }

    pub(crate) fn bundle(&self) -> &PolicyBundle {
        &self.bundle
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Decides `action` on the subject's target, with no context.
    pub(crate) fn decide_action(&self, subject: Subject<'_>, action: &str) -> Decision {
        self.decide(subject, action, None)
    }

    /// Whether a policy names `dns:query` (until one does, queries are allowed).
    pub fn governs_dns(&self) -> bool {
        self.governs_dns
    }

    /// The target a destination resolves to, if any.
    pub fn target(&self, destination: SocketAddr) -> Option<&TargetSpec> {
        self.catalog
            .lookup(canonical(destination.ip()), destination.port())
    }

    /// The target of a subject: by the name the job resolved (a target's `dns_names`,
    /// on its ports) first, then by address.
    pub fn target_of(&self, subject: &Subject<'_>) -> Option<&TargetSpec> {
        subject
            .hostname
            .and_then(|name| {
                self.catalog.targets().iter().find(|t| {
                    crate::dns::name_matches(&t.dns_names, name)
                        && (t.ports.is_empty()
                            || t.ports
                                .iter()
                                .any(|r| r.contains(subject.destination.port())))
                })
            })
            .or_else(|| self.target(subject.destination))
    }

    /// Decides an L4 connect.
    pub fn decide_connect(&self, subject: Subject<'_>) -> Decision {
        self.decide(subject, "connect", None)
    }

    /// Whether SQL statements are decided by policy. A set without any policy that can
    /// apply to an `sql:` action leaves statements to the connect decision: they are
    /// allowed on a permitted connection. Once there is one, statements are default-deny
    /// like everything else.
    pub fn governs_sql(&self) -> bool {
        self.governs_sql
    }

    /// Decides one SQL statement: `action` is `sql:read`, `sql:write`, `sql:ddl`,
    /// `sql:admin` or `sql:unknown`.
    pub fn decide_sql(&self, subject: Subject<'_>, action: &str, sql: &SqlContext) -> Decision {
        if !self.governs_sql {
            return Decision::allow(NO_SQL_POLICY_REASON).about(self.target_of(&subject));
        }
        self.decide(subject, action, Some(sql))
    }

    /// Whether a policy permits `action` outright (no mode, no SQL adoption rule): for
    /// exemptions such as `mask:exempt`, which must be granted explicitly.
    pub fn permits(&self, subject: Subject<'_>, action: &str, sql: &SqlContext) -> bool {
        let target = self.target_of(&subject);
        matches!(
            self.evaluate(subject, target, action, Some(sql)),
            Ok((Effect::Allow, _, _))
        )
    }

    fn decide(&self, subject: Subject<'_>, action: &str, sql: Option<&SqlContext>) -> Decision {
        let target = self.target_of(&subject);
        let evaluated = self.evaluate(subject, target, action, sql);
        self.decision(target, evaluated)
    }

    /// A decision from an evaluation about `target`: its mode (the target's, else the
    /// engine's), and fail closed when evaluation failed.
    pub(crate) fn decision(
        &self,
        target: Option<&TargetSpec>,
        evaluated: Result<(Effect, Vec<String>, String), String>,
    ) -> Decision {
        let mode = target.and_then(|t| t.mode).unwrap_or(self.mode);
        let (effect, policy_ids, reason) = evaluated.unwrap_or_else(|error| {
            (
                Effect::Deny,
                Vec::new(),
                format!("policy evaluation failed ({error}): refused (fail closed)"),
            )
        });
        Decision {
            effect,
            enforced: mode == Mode::Enforce,
            policy_ids,
            reason,
            target: String::new(),
            protocol: None,
        }
        .about(target)
    }

    fn evaluate(
        &self,
        subject: Subject<'_>,
        target: Option<&TargetSpec>,
        action: &str,
        sql: Option<&SqlContext>,
    ) -> Result<(Effect, Vec<String>, String), String> {
        let Subject {
            principal,
            process,
            sni,
            ..
        } = subject;
        let resource = self.resource(subject, target)?;
        let context = match sql {
            None if action == "connect" => match sni {
                Some(name) => Context::from_pairs([("sni".to_owned(), string(name))])
                    .map_err(|e| e.to_string())?,
                None => Context::empty(),
            },
            None => Context::empty(),
            Some(sql) => Context::from_pairs([
                ("database".to_owned(), string(&sql.database)),
                ("user".to_owned(), string(&sql.user)),
                (
                    "tables".to_owned(),
                    RestrictedExpression::new_set(sql.tables.iter().map(|t| string(t))),
                ),
            ])
            .map_err(|e| e.to_string())?,
        };
        self.authorize(principal, process, action, resource, context)
    }

    /// The `Target` entity of the subject's destination, as `target` of the catalog.
    pub(crate) fn resource(
        &self,
        subject: Subject<'_>,
        target: Option<&TargetSpec>,
    ) -> Result<Entity, String> {
        let target_uid = uid(
            "Target",
            &target.map_or_else(|| subject.destination.to_string(), |t| t.name.clone()),
        )
        .ok_or("bad target id")?;
        target_entity(target_uid, subject.destination, subject.hostname, target)
            .map_err(|e| e.to_string())
    }

    /// Asks Cedar about `action` on `resource` by the job and process.
    pub(crate) fn authorize(
        &self,
        principal: &Principal,
        process: &Process,
        action: &str,
        resource: Entity,
        context: Context,
    ) -> Result<(Effect, Vec<String>, String), String> {
        self.authorize_noting_errors(principal, process, action, resource, context)
            .map(|(effect, ids, reason, _)| (effect, ids, reason))
    }

    /// [`Self::authorize`], and whether a permit policy failed to evaluate (so did not
    /// apply).
    pub(crate) fn authorize_noting_errors(
        &self,
        principal: &Principal,
        process: &Process,
        action: &str,
        resource: Entity,
        context: Context,
    ) -> Result<(Effect, Vec<String>, String, bool), String> {
        let job_uid = uid("Job", &principal.job_id).ok_or("bad job id")?;
        let action_uid = uid("Action", action).ok_or("bad action")?;
        let target_uid = resource.uid().clone();
        let job = job_entity(job_uid.clone(), principal, process).map_err(|e| e.to_string())?;
        let entities = Entities::from_entities([job, resource], None).map_err(|e| e.to_string())?;
        let request = Request::new(job_uid, action_uid, target_uid, context, None)
            .map_err(|e| e.to_string())?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.bundle.set, &entities);
        let determining: Vec<PolicyId> = response.diagnostics().reason().cloned().collect();
        let ids: Vec<String> = determining.iter().map(ToString::to_string).collect();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        // A permit that failed to evaluate might have permitted with other input.
        let permit_errored = response.diagnostics().errors().any(|error| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(error) = error;
            self.bundle
                .set
                .policy(error.policy_id())
                .is_some_and(|p| p.effect() == cedar_policy::Effect::Permit)
        });
        let errors_note = if errors.is_empty() {
            String::new()
        } else {
            format!(" (evaluation errors: {})", errors.join("; "))
        };
        let (effect, ids, reason) = match response.decision() {
            CedarDecision::Allow => {
                let needs_approval = determining
                    .iter()
                    .any(|id| self.bundle.annotation(id, APPROVAL_ANNOTATION) == Some("required"));
                if needs_approval {
                    let reason = format!(
                        "permitted by {}; approval is required (@approval)",
                        ids.join(", ")
                    );
                    (Effect::RequireApproval, ids, reason)
                } else {
                    let reason = format!("permitted by {}", ids.join(", "));
                    (Effect::Allow, ids, reason)
                }
            }
            CedarDecision::Deny if ids.is_empty() => (
                Effect::Deny,
                ids,
                format!("no policy permits {action} to this target (default deny){errors_note}"),
            ),
            CedarDecision::Deny => {
                let reason = format!("forbidden by {}{errors_note}", ids.join(", "));
                (Effect::Deny, ids, reason)
            }
        };
        Ok((effect, ids, reason, permit_errored))
    }
}

/// Identity fields that may come from labels of the same name.
const IDENTITY_FIELDS: [&str; 16] = [
    "provider",
    "repository",
    "workflow",
    "workflow_ref",
    "job",
    "ci_job_id",
    "run_id",
    "run_attempt",
    "ref",
    "ref_type",
    "sha",
    "environment",
    "actor",
    "event",
    "runner",
    "name",
];

fn job_entity(
    uid: EntityUid,
    principal: &Principal,
    process: &Process,
) -> Result<Entity, Box<dyn std::error::Error>> {
    let mut attrs: BTreeMap<String, RestrictedExpression> = BTreeMap::new();
    attrs.insert("job_id".to_owned(), string(&principal.job_id));
    // Labels stand in for identity fields only for jobs that have no identity at all
    // (`tollgate run --label repository=...`); a job with an identity never mixes the two,
    // so a label cannot fill in a field its verified identity lacks.
    let stand_in = principal.identity.is_empty();
    for field in IDENTITY_FIELDS {
        let value = principal
            .identity
            .get(field)
            .or_else(|| stand_in.then(|| principal.labels.get(field)).flatten())
            .map_or("", String::as_str);
        attrs.insert(field.to_owned(), string(value));
    }
    attrs.insert("assurance".to_owned(), string(principal.assurance.as_str()));
    attrs.insert(
        "labels".to_owned(),
        RestrictedExpression::new_set(
            principal
                .labels
                .iter()
                .map(|(k, v)| string(&format!("{k}={v}"))),
        ),
    );
    attrs.insert(
        "process".to_owned(),
        RestrictedExpression::new_record([
            (
                "uid".to_owned(),
                RestrictedExpression::new_long(i64::from(process.uid)),
            ),
            (
                "gid".to_owned(),
                RestrictedExpression::new_long(i64::from(process.gid)),
            ),
            ("comm".to_owned(), string(&process.comm)),
            (
                "exe".to_owned(),
                string(process.exe.as_deref().unwrap_or("")),
            ),
        ])?,
    );
    let tags = principal.labels.iter().map(|(k, v)| (k.clone(), string(v)));
    Ok(Entity::new_with_tags(uid, attrs, [], tags)?)
}

/// How a destination appears to policy, besides its catalog target.
pub(crate) struct Seen<'a> {
    pub destination: SocketAddr,
    pub hostname: Option<&'a str>,
    /// Overrides the target's protocol (`dns` for a DNS query, `unix` for a unix socket).
    pub protocol: Option<&'a str>,
    /// For a unix socket: its path, and the container engine it belongs to.
    pub unix: Option<(&'a str, &'a str)>,
}

fn target_entity(
    uid: EntityUid,
    destination: SocketAddr,
    hostname: Option<&str>,
    target: Option<&TargetSpec>,
) -> Result<Entity, Box<dyn std::error::Error>> {
    let seen = Seen {
        destination,
        hostname,
        protocol: None,
        unix: None,
    };
    target_entity_seen(uid, &seen, target)
}

/// The `Target` entity of a destination as seen, with its catalog target's name and tags.
pub(crate) fn target_entity_seen(
    uid: EntityUid,
    seen: &Seen<'_>,
    target: Option<&TargetSpec>,
) -> Result<Entity, Box<dyn std::error::Error>> {
    let Seen {
        destination,
        hostname,
        protocol,
        unix,
    } = *seen;
    let (path, engine) = unix.unwrap_or(("", ""));
    let ip = canonical(destination.ip());
    let tags = target.map(|t| t.tags.clone()).unwrap_or_default();
    let attrs: BTreeMap<String, RestrictedExpression> = [
        (
            "name".to_owned(),
            string(target.map_or("", |t| t.name.as_str())),
        ),
        (
            "known".to_owned(),
            RestrictedExpression::new_bool(target.is_some()),
        ),
        (
            "ip".to_owned(),
            RestrictedExpression::new_ip(ip.to_string()),
        ),
        (
            "port".to_owned(),
            RestrictedExpression::new_long(i64::from(destination.port())),
        ),
        (
            "protocol".to_owned(),
            string(
                protocol
                    .or_else(|| target.and_then(|t| t.protocol.as_deref()))
                    .unwrap_or(""),
            ),
        ),
        ("hostname".to_owned(), string(hostname.unwrap_or(""))),
        ("path".to_owned(), string(path)),
        ("engine".to_owned(), string(engine)),
        (
            "tags".to_owned(),
            RestrictedExpression::new_set(tags.iter().map(|(k, v)| string(&format!("{k}={v}")))),
        ),
    ]
    .into_iter()
    .collect();
    let tags = tags.into_iter().map(|(k, v)| (k, string(&v)));
    Ok(Entity::new_with_tags(uid, attrs, [], tags)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::schema;

    /// Decisions skip runtime validation for speed; this checks that the entities built
    /// for a request conform to the schema.
    #[test]
    fn entities_conform_to_the_schema() {
        let principal = Principal {
            job_id: "j1".to_owned(),
            labels: [
                ("repository".to_owned(), "acme/api".to_owned()),
                ("team".to_owned(), "db".to_owned()),
            ]
            .into(),
            ..Default::default()
        };
        let process = Process {
            pid: 1,
            uid: 2,
            gid: 3,
            comm: "psql".to_owned(),
            exe: Some("/usr/bin/psql".to_owned()),
        };
        let target = TargetSpec {
            name: "prod-db".to_owned(),
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            ports: Vec::new(),
            dns_names: Vec::new(),
            protocol: Some("postgres".to_owned()),
            tags: [("env".to_owned(), "production".to_owned())].into(),
            mode: None,
            masking: None,
            kernel_verdicts: None,
            tls: None,
            resolved: Vec::new(),
        };
        let destination: SocketAddr = "10.1.2.3:5432".parse().unwrap();
        for target in [Some(&target), None] {
            let job = job_entity(uid("Job", "j1").unwrap(), &principal, &process).unwrap();
            let resource =
                target_entity(uid("Target", "t").unwrap(), destination, None, target).unwrap();
            Entities::from_entities([job, resource], Some(schema())).unwrap();
        }
        Request::new(
            uid("Job", "j1").unwrap(),
            uid("Action", "connect").unwrap(),
            uid("Target", "t").unwrap(),
            Context::empty(),
            Some(schema()),
        )
        .unwrap();
    }
}
