//! `http:request`: one HTTP request of a job, on a connection followed at L7. The
//! resource is the connection's `Target`; the context is the request as the client sent
//! it (method, scheme, host, path, query) and the headers the agent's config names
//! (`[http] headers`), which the schema declares as a record of optional strings.
use cedar_policy::{Context, RestrictedExpression};

use crate::{
    Decision, Subject,
    eval::{PolicyEngine, string},
};

/// The action.
pub const ACTION: &str = "http:request";

/// Why requests pass when no policy names `http:request`.
pub const NO_HTTP_POLICY_REASON: &str =
    "no policy governs HTTP requests: allowed on a permitted connection";

/// One request as policy sees it: everything an `http:request` decision reads of it
/// (so it also keys a cache of those decisions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HttpRequest {
    /// As sent (methods are case-sensitive): `GET`, `DELETE`, ...
    pub method: String,
    /// `http`, or `https` where the agent terminates TLS.
    pub scheme: String,
    /// The request's host (HTTP/1.1 `Host`, HTTP/2 `:authority`), lowercase, without its
    /// port; "" when it names none.
    pub host: String,
    /// As sent (percent-encoded), without the query: `/v1/projects/7`.
    pub path: String,
    /// After the `?`, as sent; "" when there is none.
    pub query: String,
    /// The configured headers the request has: (lowercase name, values joined with
    /// ", "). Names the config does not list are left out.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// A request for `url` (`http://host[:port]/path?query`): what `policy explain` and
    /// `policy test` describe a request with.
    pub fn from_url(method: &str, url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("`{url}`: expected http://HOST/PATH or https://HOST/PATH"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{url}`: the scheme must be http or https"));
        }
        let (authority, target) = match rest.find(['/', '?']) {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "`{url}`: expected a host (and no user information)"
            ));
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Ok(Self {
            method: method.to_owned(),
            scheme,
            host: host_of(authority),
            path: if path.is_empty() { "/" } else { path }.to_owned(),
            query: query.to_owned(),
            headers: Vec::new(),
        })
    }
}

/// The host of an authority (`Example.com:8080`, `[::1]:80`): lowercase, without its
/// port or an IPv6 literal's brackets' port.
pub fn host_of(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal keeps its brackets, as in a URL.
        rest.split_once(']')
            .map_or(authority, |(inside, _)| &authority[..inside.len() + 2])
    } else {
        authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(authority, |(host, _)| host)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl PolicyEngine {
    /// Whether a policy names `http:request` (an unconstrained action does not count).
    /// Until one does, requests are allowed on a permitted connection, and HTTP is
    /// followed only to targets that declare it.
    pub fn governs_http(&self) -> bool {
        self.bundle().names_action(ACTION)
    }

    /// Decides one HTTP request on the subject's connection.
    pub fn decide_http(&self, subject: Subject<'_>, request: &HttpRequest) -> Decision {
        let target = self.target_of(&subject);
        if !self.governs_http() {
            return Decision::allow(NO_HTTP_POLICY_REASON).about(target);
        }
        let evaluated = context(request).and_then(|context| {
            let resource = self.resource(subject, target)?;
            self.authorize(
                subject.principal,
                subject.process,
                ACTION,
                resource,
                context,
            )
        });
        self.decision(target, evaluated)
    }
}

/// The header names a policy's EST reads from `context.headers` (`has` or access).
pub(crate) fn headers_read(value: &serde_json::Value, found: &mut Vec<String>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for op in [".", "has"] {
                if let Some(Value::Object(access)) = map.get(op)
                    && let Some(Value::String(attr)) = access.get("attr")
                    && let Some(Value::Object(left)) = access.get("left")
                    && let Some(Value::Object(inner)) = left.get(".")
                    && inner.get("attr").and_then(Value::as_str) == Some("headers")
                    && inner
                        .get("left")
                        .and_then(|l| l.get("Var"))
                        .and_then(Value::as_str)
                        == Some("context")
                {
                    found.push(attr.clone());
                }
            }
            map.values().for_each(|v| headers_read(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| headers_read(v, found)),
        _ => {}
    }
}

fn context(request: &HttpRequest) -> Result<Context, String> {
    let headers = RestrictedExpression::new_record(
        request
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), string(value))),
    )
    .map_err(|e| e.to_string())?;
    Context::from_pairs([
        ("method".to_owned(), string(&request.method)),
        ("scheme".to_owned(), string(&request.scheme)),
        ("host".to_owned(), string(&request.host)),
        ("path".to_owned(), string(&request.path)),
        ("query".to_owned(), string(&request.query)),
        ("headers".to_owned(), headers),
    ])
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
