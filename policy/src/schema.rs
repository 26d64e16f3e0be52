//! The Cedar schema every policy is validated against. It has no namespace, so policies
//! read plainly: `Action::"connect"`, `principal.repository`, `resource.port`.
use std::sync::OnceLock;

use cedar_policy::Schema;

/// The schema, in Cedar's schema syntax (also printed by `tollgate policy schema`).
pub const SCHEMA: &str = r#"
// A CI job (or cron/legacy script) run by Tollgate. Identity fields are "" when unknown.
// A job started without an identity (`tollgate run --label k=v`) takes them from labels of
// the same name; a job with an identity (runner hook, --identity-file) never does.
// Labels are entity tags: principal.hasTag("team") && principal.getTag("team") == "db".
entity Job = {
  job_id: String,
  name: String,
  provider: String,
  repository: String,
  workflow: String,
  workflow_ref: String,
  job: String,
  // The CI system's own id of the job (GitLab's CI_JOB_ID).
  ci_job_id: String,
  run_id: String,
  run_attempt: String,
  ref: String,
  ref_type: String,
  sha: String,
  environment: String,
  actor: String,
  event: String,
  runner: String,
  // "host-asserted" (from labels or the runner's environment) or "oidc-verified".
  assurance: String,
  // Every label as "key=value".
  labels: Set<String>,
  // The process that opened the connection, as the kernel recorded it. (No pid: a
  // decision depends only on stable facts, so the agent can cache it.)
  process: { uid: Long, gid: Long, comm: String, exe: String },
} tags String;

// A destination: a named target from the catalog, or (known == false) any other address.
// Tags are entity tags and also a set of "key=value" strings.
// hostname: for dns:query, the name queried (lowercase, no trailing dot); match suffixes
// with `like`: resource.hostname like "*.corp.example". For connect, the name the job
// resolved the address from through Tollgate's resolver; else the ClientHello's name,
// when the job resolved that name to this address; else "".
// path and engine: for unix:connect, the socket's path (an abstract name as "@name") and
// the container engine it belongs to ("docker", "containerd", "podman", else ""); ""
// for every other action. A unix socket's ip is 0.0.0.0, its port 0, its protocol "unix".
entity Target = {
  name: String,
  known: Bool,
  ip: __cedar::ipaddr,
  port: Long,
  protocol: String,
  hostname: String,
  path: String,
  engine: String,
  tags: Set<String>,
} tags String;

type SqlContext = { database: String, user: String, tables: Set<String> };

// context.sni: the host name a TLS client asked for in its ClientHello (lowercase, no
// trailing dot), read without decrypting; absent when the client did not open with a
// ClientHello naming a host. The client chooses it: compare resource.ip or
// resource.hostname too where that matters.
action connect appliesTo {
  principal: [Job],
  resource: [Target],
  context: { sni?: String },
};
// Reserved for the L7 issues.
action "sql:read" appliesTo { principal: [Job], resource: [Target], context: SqlContext };
action "sql:write" appliesTo { principal: [Job], resource: [Target], context: SqlContext };
action "sql:ddl" appliesTo { principal: [Job], resource: [Target], context: SqlContext };
action "sql:admin" appliesTo { principal: [Job], resource: [Target], context: SqlContext };
action "sql:unknown" appliesTo { principal: [Job], resource: [Target], context: SqlContext };
// Exempts a job from masking of PostgreSQL results (decided once per session).
action "mask:exempt" appliesTo { principal: [Job], resource: [Target], context: SqlContext };
// A DNS query of a job, to Tollgate's resolver. The resource is a Target whose hostname
// is the queried name (ip and port: the server the job addressed; protocol "dns").
// Queries are allowed (and recorded) until a policy names this action.
action "dns:query" appliesTo {
  principal: [Job],
  resource: [Target],
  context: { qtype: String },
};
// A job's UDP datagrams to one destination (other than DNS, which is dns:query), decided
// once per flow (a socket and a destination). Denied unless a policy permits it, so QUIC
// (UDP/443) is refused and clients fall back to TCP. The resource is as for connect.
action "udp:send" appliesTo { principal: [Job], resource: [Target] };
// A job's connect (or addressed datagram) to a unix socket, by path. Allowed unless a
// policy forbids it, except container-engine sockets (resource.engine != ""), which hand
// out containers outside every job: they are denied unless a policy permits them. The
// kernel decides at once, so a decision cannot depend on principal.process (uid and gid
// are 4294967295, comm and exe "").
action "unix:connect" appliesTo { principal: [Job], resource: [Target] };
action "http:request" appliesTo {
  principal: [Job],
  resource: [Target],
  context: { method: String, path: String, host: String },
};
"#;

/// The parsed schema. It is a constant of this crate, so a parse failure is a bug that
/// the unit tests catch.
pub fn schema() -> &'static Schema {
    static SCHEMA_PARSED: OnceLock<Schema> = OnceLock::new();
    SCHEMA_PARSED.get_or_init(|| match Schema::from_cedarschema_str(SCHEMA) {
        Ok((schema, _warnings)) => schema,
        Err(error) => panic!("the built-in Cedar schema does not parse: {error}"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn schema_parses() {
        let _ = super::schema();
    }
}
