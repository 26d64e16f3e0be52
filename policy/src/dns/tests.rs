use super::*;
use crate::{load::PolicyBundle, targets::Catalog};

fn engine(policy: &str, targets: Vec<TargetSpec>) -> PolicyEngine {
    let bundle: PolicyBundle = crate::load::load(&[crate::load::Source {
        name: "dns.cedar".to_owned(),
        text: policy.to_owned(),
    }])
    .expect("policy loads");
    PolicyEngine::new(
        bundle,
        Catalog::new(targets).expect("catalog"),
        Mode::Enforce,
    )
}

fn principal(repo: &str) -> Principal {
    Principal {
        job_id: "j1".to_owned(),
        labels: [("repository".to_owned(), repo.to_owned())].into(),
        ..Principal::default()
    }
}

fn decide(engine: &PolicyEngine, repo: &str, name: &str) -> Decision {
    let process = Process::default();
    engine.decide_dns(DnsQuery {
        principal: &principal(repo),
        process: &process,
        server: "127.0.0.53:53".parse().unwrap(),
        name,
        qtype: "A",
    })
}

#[test]
fn names_match_exactly_or_by_suffix() {
    let patterns = vec!["*.corp.example".to_owned(), "api.example.com.".to_owned()];
    assert!(name_matches(&patterns, "db.corp.example"));
    assert!(name_matches(&patterns, "a.b.corp.example"));
    assert!(
        !name_matches(&patterns, "corp.example"),
        "the suffix itself is not below it"
    );
    assert!(!name_matches(&patterns, "evilcorp.example"));
    assert!(name_matches(&patterns, "api.example.com"));
    assert!(!name_matches(&patterns, "www.example.com"));
    assert_eq!(normalize("DB.Corp.Example."), "db.corp.example");
}

#[test]
fn queries_are_allowed_until_a_policy_names_dns() {
    let connect_only = engine(
        r#"permit(principal, action == Action::"connect", resource);"#,
        vec![],
    );
    let d = decide(&connect_only, "acme/api", "anything.example");
    assert_eq!(d.effect, Effect::Allow);
    assert_eq!(d.reason, NO_DNS_POLICY_REASON);
    // An unconstrained action does not adopt DNS either.
    let any = engine(r#"permit(principal, action, resource);"#, vec![]);
    assert_eq!(
        decide(&any, "acme/api", "x.example").reason,
        NO_DNS_POLICY_REASON
    );
}

#[test]
fn a_name_policy_allows_one_domain_and_refuses_another() {
    let mut db = TargetSpec {
        name: "corp-db".to_owned(),
        cidrs: vec![],
        ports: vec![],
        dns_names: vec!["db.corp.example".to_owned()],
        protocol: Some("postgres".to_owned()),
        tags: [("env".to_owned(), "production".to_owned())].into(),
        mode: None,
        masking: None,
        resolved: vec![],
    };
    db.ports = vec![];
    let e = engine(
        r#"
@id("corp-names")
permit(principal, action == Action::"dns:query", resource)
when { resource.hostname like "*.corp.example" && context.qtype != "TXT" };
@id("no-prod-for-web")
forbid(principal, action == Action::"dns:query", resource)
when { resource.hasTag("env") && resource.getTag("env") == "production"
       && principal.repository == "acme/web" };
"#,
        vec![db],
    );
    let ok = decide(&e, "acme/api", "cache.corp.example");
    assert_eq!(ok.effect, Effect::Allow, "{}", ok.reason);
    assert_eq!(ok.policy_ids, ["corp-names"]);
    assert_eq!(ok.target, "(unknown)");
    let other = decide(&e, "acme/api", "pypi.org");
    assert_eq!(other.effect, Effect::Deny);
    assert!(other.reason.contains("default deny"), "{}", other.reason);
    // The catalog target named by dns_names lends its tags.
    let db_ok = decide(&e, "acme/api", "db.corp.example");
    assert_eq!(
        (db_ok.effect, db_ok.target.as_str()),
        (Effect::Allow, "corp-db")
    );
    let db_web = decide(&e, "acme/web", "db.corp.example");
    assert_eq!(db_web.effect, Effect::Deny);
    assert_eq!(db_web.policy_ids, ["no-prod-for-web"]);
}
