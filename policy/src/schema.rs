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
// An HTTP request of a job, on a connection followed at L7: to a target with
// protocol = "http", or any HTTP a job speaks once a policy names this action. Allowed
// (and recorded) on a permitted connection until a policy names it.
// method: as sent ("GET", "DELETE"); scheme: "http", or "https" where Tollgate terminates
// TLS (tls = "terminate"); host: the Host (HTTP/1.1) or :authority (HTTP/2), lowercase,
// without the port, "" if none; path: as sent (percent-encoded), without the query;
// query: what follows "?", as sent, "" if none. The client chooses host: compare
// resource.ip or resource.hostname too where that matters.
// headers: the request headers that `[http] headers` names (lowercase), each present
// only when the request has it (several values joined with ", "):
// context.headers has "x-request-id" && context.headers["x-request-id"] like "ci-*".
type HttpHeaders = {};
action "http:request" appliesTo {
  principal: [Job],
  resource: [Target],
  context: {
    method: String,
    scheme: String,
    host: String,
    path: String,
    query: String,
    headers: HttpHeaders,
  },
};
// An MCP tool call of a job (JSON-RPC `tools/call`), on a connection followed at L7: to
// a target with protocol = "mcp", or any MCP a job speaks over HTTP once a policy names
// this action. Allowed (and recorded) on a permitted connection until a policy names it.
// tool: the tool's name (params.name).
// arguments: params.arguments as a record (objects are records, arrays sets, integers
// Longs, other numbers decimals, null absent). A tool's arguments are its server's, so
// this schema declares none and any attribute may be read:
// context.tool == "query" && context.arguments has table && context.arguments.table == "users".
// A policy reading an argument a call lacks (or of another type) does not apply to it.
// changed: the tool's name, description or input schema changed within the MCP session
// since the job first listed it (a "rug pull"): forbid(...) when { context.changed };
// `tools/list` shows a job only the tools it may call (with some arguments).
action "mcp:call" appliesTo {
  principal: [Job],
  resource: [Target],
  context: { tool: String, arguments: {}, changed: Bool },
};
"#;

/// The line of [`SCHEMA`] that [`text`] replaces with the configured headers.
const HEADERS_TYPE: &str = "type HttpHeaders = {};";

/// Whether `name` may be a configured header: a lowercase HTTP token.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// The schema's text with `headers` (`[http] headers`) as `http:request`'s
/// `context.headers`.
pub fn text(headers: &[String]) -> Result<String, String> {
    if let Some(bad) = headers.iter().find(|h| !valid_header_name(h)) {
        return Err(format!(
            "`{bad}` is not a header name a policy can read: lowercase letters, digits and              !#$%&'*+-.^_`|~"
        ));
    }
    let fields: Vec<String> = headers
        .iter()
        .map(|h| format!("\"{h}\"?: String"))
        .collect();
    Ok(SCHEMA.replace(
        HEADERS_TYPE,
        &format!("type HttpHeaders = {{ {} }};", fields.join(", ")),
    ))
}

/// The schema with `headers` configured; the one without is parsed once.
pub fn with_headers(headers: &[String]) -> Result<Schema, String> {
    if headers.is_empty() {
        return Ok(schema().clone());
    }
    let text = text(headers)?;
    Schema::from_cedarschema_str(&text)
        .map(|(schema, _warnings)| schema)
        .map_err(|error| format!("the schema with these headers does not parse: {error}"))
}

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

    #[test]
    fn configured_headers_are_optional_fields_and_bad_names_are_refused() {
        let headers = ["x-request-id".to_owned(), "user-agent".to_owned()];
        let text = super::text(&headers).unwrap();
        assert!(
            text.contains(
                r#"type HttpHeaders = { "x-request-id"?: String, "user-agent"?: String };"#
            )
        );
        super::with_headers(&headers).unwrap();
        let error = super::with_headers(&["X-Upper".to_owned()]).unwrap_err();
        assert!(error.contains("`X-Upper`"), "{error}");
        assert!(super::with_headers(&["a b".to_owned()]).is_err());
    }
}
