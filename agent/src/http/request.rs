//! A request as policy sees it, what is taken off it before it is forwarded, and the
//! answer to a refused one.
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version, header, request::Parts};
use http_body_util::Full;
use tollgate_policy::{Decision, Effect, HttpRequest};

/// The request of `parts` for policy, with the `configured` headers it has.
pub fn for_policy(parts: &Parts, scheme: &str, configured: &[String]) -> HttpRequest {
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let headers = configured
        .iter()
        .filter_map(|name| {
            let values: Vec<&str> = parts
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.to_str().unwrap_or(""))
                .collect();
            (!values.is_empty()).then(|| (name.clone(), values.join(", ")))
        })
        .collect();
    HttpRequest {
        method: parts.method.as_str().to_owned(),
        scheme: scheme.to_owned(),
        host: tollgate_policy::http::host_of(&authority),
        path: match parts.method {
            // CONNECT's target is an authority, not a path.
            http::Method::CONNECT => String::new(),
            _ => parts.uri.path().to_owned(),
        },
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers,
    }
}

/// The headers of one connection (RFC 9110, 7.6.1) that a proxy does not forward,
/// besides those `Connection` names. `Upgrade` stays for the upgrades a proxy carries
/// (WebSocket); an upgrade to h2c is declined (see [`strip_hop_by_hop`]).
const HOP_BY_HOP: [&str; 4] = ["keep-alive", "proxy-connection", "te", "http2-settings"];

/// Takes off what belongs to the client's connection, not the request: the headers
/// `Connection` names and the hop-by-hop ones. An upgrade to h2c (HTTP/2 over
/// cleartext, RFC 7540 3.2) is declined by dropping its `Upgrade`: the server answers
/// over HTTP/1.1, as a server that does not take the upgrade does, so every request
/// stays decided. Other upgrades (WebSocket) keep `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let h2c = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")));
    if h2c {
        headers.remove(header::UPGRADE);
    }
    let upgrade = headers.contains_key(header::UPGRADE);
    for name in named.iter().map(String::as_str) {
        if name != "upgrade" && name != "close" && name != "keep-alive" {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::CONNECTION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if named.iter().any(|t| t == "close") {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// The answer to a request that policy refused: 403 with a JSON body that names the
/// policies and the reason, and the request's record id.
pub fn refused(decision: &Decision, request_id: &str, version: Version) -> Response<Full<Bytes>> {
    let status = StatusCode::FORBIDDEN;
    let error = match decision.effect {
        Effect::RequireApproval => "approval_required",
        _ => "forbidden",
    };
    let body = serde_json::json!({
        "error": error,
        "message": format!("Tollgate refused this request: {}", decision.reason),
        "policy_ids": decision.policy_ids,
        "decision": decision.label(),
        "request_id": request_id,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    *response.version_mut() = version;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(request: Request<()>) -> Parts {
        request.into_parts().0
    }

    #[test]
    fn policy_sees_the_host_without_port_the_path_and_the_configured_headers() {
        let p = parts(
            Request::get("/v1/projects?page=2")
                .header("host", "API.corp:8080")
                .header("x-ci-run", "a")
                .header("x-ci-run", "b")
                .header("authorization", "secret")
                .body(())
                .unwrap(),
        );
        let seen = for_policy(&p, "http", &["x-ci-run".to_owned(), "x-missing".to_owned()]);
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.host, "api.corp");
        assert_eq!(seen.path, "/v1/projects");
        assert_eq!(seen.query, "page=2");
        assert_eq!(seen.headers, [("x-ci-run".to_owned(), "a, b".to_owned())]);
        // HTTP/2: the authority of the URI.
        let p = parts(
            Request::delete("http://h2.corp/x")
                .version(Version::HTTP_2)
                .body(())
                .unwrap(),
        );
        let seen = for_policy(&p, "http", &[]);
        assert_eq!((seen.host.as_str(), seen.path.as_str()), ("h2.corp", "/x"));
    }

    #[test]
    fn connection_headers_go_and_an_h2c_upgrade_is_declined() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("Upgrade, HTTP2-Settings, x-private"),
        );
        headers.insert("upgrade", HeaderValue::from_static("h2c"));
        headers.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept"]);
        let mut ws = HeaderMap::new();
        ws.insert("connection", HeaderValue::from_static("Upgrade"));
        ws.insert("upgrade", HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut ws);
        assert_eq!(ws.get("connection").unwrap(), "upgrade");
        assert_eq!(ws.get("upgrade").unwrap(), "websocket");
    }
}
