use super::*;
use crate::{Effect, Principal, Process, load::PolicyBundle, targets::Catalog};

fn engine(policy: &str, mode: Mode) -> PolicyEngine {
    let bundle: PolicyBundle = crate::load::load(&[crate::load::Source {
        name: "udp.cedar".to_owned(),
        text: policy.to_owned(),
    }])
    .expect("policy loads");
    PolicyEngine::new(bundle, Catalog::new(vec![]).expect("catalog"), mode)
}

fn decide(engine: &PolicyEngine, destination: &str) -> Decision {
    let principal = Principal {
        job_id: "j1".to_owned(),
        labels: [("repository".to_owned(), "acme/api".to_owned())].into(),
        ..Principal::default()
    };
    let process = Process::default();
    engine.decide_udp(Subject::new(
        &principal,
        &process,
        destination.parse().unwrap(),
    ))
}

#[test]
fn udp_is_denied_until_a_permit_names_it() {
    let connect_only = engine(
        r#"permit(principal, action == Action::"connect", resource);"#,
        Mode::Enforce,
    );
    assert!(!connect_only.decides_udp());
    let d = decide(&connect_only, "10.0.0.1:443");
    assert_eq!(d.effect, Effect::Deny);
    assert!(d.blocks());
    assert_eq!(d.reason, NO_UDP_PERMIT_REASON);
    assert!(without_policy().blocks());
}

#[test]
fn a_permit_decides_per_destination() {
    let statsd = engine(
        r#"permit(principal, action == Action::"udp:send", resource)
           when { resource.port == 8125 };"#,
        Mode::Enforce,
    );
    assert!(statsd.decides_udp());
    assert_eq!(decide(&statsd, "127.0.0.1:8125").effect, Effect::Allow);
    let quic = decide(&statsd, "127.0.0.1:443");
    assert_eq!(quic.effect, Effect::Deny);
    assert!(quic.reason.contains("default deny"), "{}", quic.reason);
}

#[test]
fn an_unconstrained_permit_or_audit_mode_decides_flows() {
    let any = engine("permit(principal, action, resource);", Mode::Enforce);
    assert!(any.decides_udp());
    assert_eq!(decide(&any, "[::1]:9999").effect, Effect::Allow);
    let forbid_only = engine(
        r#"forbid(principal, action == Action::"udp:send", resource);"#,
        Mode::Enforce,
    );
    assert!(!forbid_only.decides_udp(), "a forbid permits nothing");
    let audit = engine(
        r#"permit(principal, action == Action::"connect", resource);"#,
        Mode::Audit,
    );
    assert!(audit.decides_udp());
    let d = decide(&audit, "10.0.0.1:443");
    assert_eq!(d.label(), "would_deny");
    assert!(!d.blocks());
}
