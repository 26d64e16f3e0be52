use super::*;
use crate::{Mode, load::PolicyBundle, targets::Catalog};

fn engine(policy: &str, mode: Mode) -> PolicyEngine {
    let bundle: PolicyBundle = crate::load::load(&[crate::load::Source {
        name: "unix.cedar".to_owned(),
        text: policy.to_owned(),
    }])
    .expect("policy loads");
    PolicyEngine::new(bundle, Catalog::new(vec![]).expect("catalog"), mode)
}

fn principal(repository: &str) -> Principal {
    Principal {
        job_id: "j1".to_owned(),
        labels: [("repository".to_owned(), repository.to_owned())].into(),
        ..Principal::default()
    }
}

const DOCKER: UnixSocket<'static> = UnixSocket {
    path: "/run/docker.sock",
    engine: Some("docker"),
};
const PLAIN: UnixSocket<'static> = UnixSocket {
    path: "/run/app.sock",
    engine: None,
};

#[test]
fn engines_are_denied_and_other_paths_allowed_by_default() {
    let e = engine(
        r#"permit(principal, action == Action::"connect", resource);"#,
        Mode::Enforce,
    );
    let d = e.decide_unix(&principal("acme/api"), DOCKER);
    assert!(d.blocks());
    assert!(d.reason.contains("docker engine"), "{}", d.reason);
    assert_eq!(d.target, "/run/docker.sock");
    let d = e.decide_unix(&principal("acme/api"), PLAIN);
    assert_eq!(d.effect, Effect::Allow);
    assert_eq!(d.reason, DEFAULT_ALLOW_REASON);
    assert!(without_policy(DOCKER).blocks());
    assert!(!without_policy(PLAIN).blocks());
}

#[test]
fn a_permit_opens_an_engine_for_one_repository_and_a_forbid_closes_a_path() {
    let e = engine(
        r#"@id("infra-docker")
permit(principal, action == Action::"unix:connect", resource)
when { resource.engine == "docker" && principal.repository == "acme/infra" };
@id("no-secrets")
forbid(principal, action == Action::"unix:connect", resource)
when { resource.path like "/run/secrets/*" };
"#,
        Mode::Enforce,
    );
    let d = e.decide_unix(&principal("acme/infra"), DOCKER);
    assert_eq!(d.effect, Effect::Allow, "{}", d.reason);
    assert_eq!(d.policy_ids, vec!["infra-docker".to_owned()]);
    assert!(e.decide_unix(&principal("acme/api"), DOCKER).blocks());
    let secret = UnixSocket {
        path: "/run/secrets/vault.sock",
        engine: None,
    };
    let d = e.decide_unix(&principal("acme/infra"), secret);
    assert!(d.blocks());
    assert_eq!(d.policy_ids, vec!["no-secrets".to_owned()]);
    assert_eq!(
        e.decide_unix(&principal("acme/infra"), PLAIN).effect,
        Effect::Allow
    );
}

#[test]
fn audit_mode_records_what_it_would_refuse() {
    let e = engine(
        r#"permit(principal, action == Action::"connect", resource);"#,
        Mode::Audit,
    );
    let d = e.decide_unix(&principal("acme/api"), DOCKER);
    assert_eq!(d.label(), "would_deny");
    assert!(!d.blocks());
}

#[test]
fn connect_policies_on_ports_do_not_apply_to_unix_sockets() {
    let e = engine(
        r#"permit(principal, action, resource) when { resource.port == 80 };"#,
        Mode::Enforce,
    );
    assert!(e.decide_unix(&principal("acme/api"), DOCKER).blocks());
    assert_eq!(
        e.decide_unix(&principal("acme/api"), PLAIN).effect,
        Effect::Allow
    );
}
