use super::*;
use crate::{Effect, Mode, Principal, Process, load::PolicyBundle, targets::Catalog};

fn engine(policy: &str, headers: &[&str]) -> PolicyEngine {
    let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let bundle: PolicyBundle = crate::load::load_with(
        &[crate::load::Source {
            name: "http.cedar".to_owned(),
            text: policy.to_owned(),
        }],
        &headers,
    )
    .expect("policy loads");
    PolicyEngine::new(
        bundle,
        Catalog::new(Vec::new()).expect("catalog"),
        Mode::Enforce,
    )
}

fn decide(engine: &PolicyEngine, repo: &str, request: &HttpRequest) -> Decision {
    let principal = Principal {
        job_id: "j1".to_owned(),
        labels: [("repository".to_owned(), repo.to_owned())].into(),
        ..Principal::default()
    };
    let process = Process::default();
    let subject = Subject::new(&principal, &process, "127.0.0.1:8080".parse().unwrap());
    engine.decide_http(subject, request)
}

fn get(url: &str) -> HttpRequest {
    HttpRequest::from_url("GET", url).unwrap()
}

const POLICY: &str = r#"
@id("connect")
permit(principal, action == Action::"connect", resource);
@id("reads")
permit(principal, action == Action::"http:request", resource)
when { context.method == "GET" || context.method == "HEAD" };
@id("no-admin")
forbid(principal, action == Action::"http:request", resource)
when { context.path like "/admin/*" && principal.repository != "acme/ops" };
"#;

#[test]
fn requests_are_decided_by_method_and_path() {
    let engine = engine(POLICY, &[]);
    assert!(engine.governs_http());
    let read = decide(
        &engine,
        "acme/api",
        &get("http://api.local/v1/projects?page=2"),
    );
    assert_eq!(read.effect, Effect::Allow, "{}", read.reason);
    assert_eq!(read.policy_ids, ["reads"]);
    let delete = HttpRequest::from_url("DELETE", "http://api.local/v1/projects/7").unwrap();
    let denied = decide(&engine, "acme/api", &delete);
    assert_eq!(denied.effect, Effect::Deny);
    assert!(
        denied.policy_ids.is_empty(),
        "default deny: {}",
        denied.reason
    );
    let admin = decide(&engine, "acme/api", &get("http://api.local/admin/users"));
    assert_eq!(admin.effect, Effect::Deny);
    assert_eq!(admin.policy_ids, ["no-admin"]);
    let ops = decide(&engine, "acme/ops", &get("http://api.local/admin/users"));
    assert_eq!(ops.effect, Effect::Allow);
}

#[test]
fn without_a_policy_naming_it_every_request_is_allowed() {
    let engine = engine(
        r#"permit(principal, action == Action::"connect", resource);
           forbid(principal, action, resource) when { resource.port == 22 };"#,
        &[],
    );
    assert!(!engine.governs_http());
    let decision = decide(
        &engine,
        "acme/api",
        &HttpRequest::from_url("DELETE", "http://x/y").unwrap(),
    );
    assert_eq!(decision.effect, Effect::Allow);
    assert_eq!(decision.reason, NO_HTTP_POLICY_REASON);
}

#[test]
fn configured_headers_are_read_and_others_do_not_validate() {
    let policy = r#"
        permit(principal, action == Action::"http:request", resource)
        when { context.headers has "x-ci-run" && context.headers["x-ci-run"] like "run-*" };
    "#;
    let engine = engine(policy, &["x-ci-run"]);
    let mut request = get("http://api.local/");
    assert_eq!(decide(&engine, "a/b", &request).effect, Effect::Deny);
    request.headers = vec![("x-ci-run".to_owned(), "run-42".to_owned())];
    assert_eq!(decide(&engine, "a/b", &request).effect, Effect::Allow);
    request.headers = vec![("x-ci-run".to_owned(), "other".to_owned())];
    assert_eq!(decide(&engine, "a/b", &request).effect, Effect::Deny);
    // A header the config does not name cannot be read: a clear error at load.
    let errors = crate::load::load_with(
        &[crate::load::Source {
            name: "http.cedar".to_owned(),
            text: policy.to_owned(),
        }],
        &[],
    )
    .unwrap_err();
    assert_eq!(errors.0[0].file, "http.cedar");
    assert_eq!(errors.0[0].line, 3, "{errors}");
}

#[test]
fn urls_split_into_host_path_and_query() {
    let request =
        HttpRequest::from_url("GET", "https://API.Example.com:8443/a/b%20c?x=1&y").unwrap();
    assert_eq!(request.scheme, "https");
    assert_eq!(request.host, "api.example.com");
    assert_eq!(request.path, "/a/b%20c");
    assert_eq!(request.query, "x=1&y");
    let bare = HttpRequest::from_url("GET", "http://[::1]:8080").unwrap();
    assert_eq!((bare.host.as_str(), bare.path.as_str()), ("[::1]", "/"));
    let query_only = HttpRequest::from_url("GET", "http://h?q").unwrap();
    assert_eq!(
        (query_only.path.as_str(), query_only.query.as_str()),
        ("/", "q")
    );
    assert!(HttpRequest::from_url("GET", "ftp://h/").is_err());
    assert!(HttpRequest::from_url("GET", "h/x").is_err());
    assert!(HttpRequest::from_url("GET", "http://u:p@h/").is_err());
    assert_eq!(host_of("Host.Example."), "host.example");
    assert_eq!(host_of("h:80"), "h");
}
