use super::*;
use crate::{Effect, Mode, load::PolicyBundle, targets::Catalog};
use std::collections::BTreeMap;

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
        kernel_verdicts: None,
        tls: None,
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

#[test]
fn connects_match_dns_named_targets_by_the_name_the_job_resolved() {
    let web = TargetSpec {
        name: "web".to_owned(),
        cidrs: vec![],
        ports: vec![crate::targets::PortRange {
            first: 8080,
            last: 8080,
        }],
        dns_names: vec!["*.corp.example".to_owned()],
        protocol: None,
        tags: BTreeMap::new(),
        mode: None,
        masking: None,
        kernel_verdicts: None,
        tls: None,
        resolved: vec![],
    };
    let e = engine(
        r#"
@id("web")
permit(principal, action == Action::"connect", resource) when { resource.name == "web" };
@id("by-name")
permit(principal, action == Action::"connect", resource)
when { resource.hostname == "api.example.com" };
"#,
        vec![web],
    );
    let p = principal("acme/api");
    let process = Process::default();
    let dest: SocketAddr = "10.9.9.9:8080".parse().unwrap();
    let subject =
        |name: Option<&'static str>| crate::Subject::new(&p, &process, dest).with_hostname(name);
    let by_name = e.decide_connect(subject(Some("app.corp.example")));
    assert_eq!(
        (by_name.effect, by_name.target.as_str()),
        (Effect::Allow, "web")
    );
    // The same address without the name: no target, default deny.
    let by_ip = e.decide_connect(subject(None));
    assert_eq!(
        (by_ip.effect, by_ip.target.as_str()),
        (Effect::Deny, "(unknown)")
    );
    // Another port of the name is not the target.
    let other_port = e.decide_connect(
        crate::Subject::new(&p, &process, "10.9.9.9:22".parse().unwrap())
            .with_hostname(Some("app.corp.example")),
    );
    assert_eq!(other_port.effect, Effect::Deny);
    // resource.hostname is the resolved name.
    let named = e.decide_connect(subject(Some("api.example.com")));
    assert_eq!(named.policy_ids, ["by-name"]);
}
