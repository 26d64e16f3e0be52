//! Decision tables: identity × destination → expected effect, policies and reason.
use std::collections::BTreeMap;

use tollgate_policy::{
    Catalog, Effect, Mode, PolicyEngine, Principal, Process, Source, Subject, TargetSpec, load,
};

const POLICIES: &str = r#"
@id("allow-loopback")
permit(principal, action == Action::"connect", resource)
when { resource.ip.isLoopback() };

@id("prod-db-deploy")
permit(principal, action == Action::"connect", resource)
when {
  resource.name == "prod-db" &&
  principal.repository == "acme/api" &&
  principal.workflow == "deploy" &&
  principal.ref == "refs/heads/main"
};

@id("prod-db-dba")
@approval("required")
permit(principal, action == Action::"connect", resource)
when { resource.name == "prod-db" && principal.hasTag("team") && principal.getTag("team") == "dba" };

@id("staging")
permit(principal, action == Action::"connect", resource)
when { resource.hasTag("env") && resource.getTag("env") == "staging" && principal.repository like "acme/*" };

@id("web-ports")
permit(principal, action == Action::"connect", resource)
when { resource.port >= 8000 && resource.port <= 8100 && resource.tags.contains("tier=web") };

@id("v6-lab")
permit(principal, action == Action::"connect", resource)
when { resource.ip.isInRange(ip("fd00::/8")) && principal.repository == "acme/v6" };

@id("no-ssh")
forbid(principal, action == Action::"connect", resource)
when { resource.port == 22 };

@id("no-netcat")
forbid(principal, action == Action::"connect", resource)
when { principal.process.comm == "nc" };
"#;

const TARGETS: &str = r#"
[[targets]]
name = "prod-db"
cidrs = ["10.1.0.0/16"]
ports = [5432]
protocol = "postgres"
tags = { env = "production" }

[[targets]]
name = "staging-db"
cidrs = ["10.2.0.0/16"]
ports = [5432]
tags = { env = "staging" }

[[targets]]
name = "web"
cidrs = ["10.3.0.0/16"]
ports = ["8000-8100"]
tags = { tier = "web" }

[[targets]]
name = "audited"
cidrs = ["10.4.0.0/16"]
mode = "audit"
"#;

#[derive(serde::Deserialize)]
struct Targets {
    targets: Vec<TargetSpec>,
}

fn engine(mode: Mode) -> PolicyEngine {
    let bundle = load(&[Source {
        name: "test.cedar".to_owned(),
        text: POLICIES.to_owned(),
    }])
    .expect("test policies load");
    let targets: Targets = toml::from_str(TARGETS).expect("test targets parse");
    PolicyEngine::new(
        bundle,
        Catalog::new(targets.targets).expect("test catalog"),
        mode,
    )
}

fn principal(labels: &[(&str, &str)]) -> Principal {
    Principal {
        job_id: "job-1".to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

fn process(comm: &str) -> Process {
    Process {
        pid: 42,
        uid: 1000,
        gid: 1000,
        comm: comm.to_owned(),
        exe: None,
    }
}

const DEPLOY: &[(&str, &str)] = &[
    ("repository", "acme/api"),
    ("workflow", "deploy"),
    ("ref", "refs/heads/main"),
];

/// name, labels, comm, destination, effect, determining policies, reason contains
type Row = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
    Effect,
    &'static [&'static str],
    &'static str,
);

#[test]
fn decision_table() {
    let engine = engine(Mode::Enforce);
    #[rustfmt::skip]
    let table: &[Row] = &[
        // name, labels, comm, destination, effect, determining policies, reason contains
        ("deploy on main reaches prod-db", DEPLOY, "psql", "10.1.2.3:5432", Effect::Allow, &["prod-db-deploy"], "permitted by prod-db-deploy"),
        ("deploy on a branch does not", &[("repository", "acme/api"), ("workflow", "deploy"), ("ref", "refs/heads/x")], "psql", "10.1.2.3:5432", Effect::Deny, &[], "default deny"),
        ("prod-db on another port is not prod-db", DEPLOY, "psql", "10.1.2.3:5433", Effect::Deny, &[], "default deny"),
        ("a dba needs approval", &[("team", "dba")], "psql", "10.1.9.9:5432", Effect::RequireApproval, &["prod-db-dba"], "approval is required"),
        ("ssh is forbidden even on loopback", &[], "ssh", "127.0.0.1:22", Effect::Deny, &["no-ssh"], "forbidden by no-ssh"),
        ("loopback is allowed", &[], "curl", "127.0.0.1:8080", Effect::Allow, &["allow-loopback"], ""),
        ("IPv4-mapped loopback is loopback", &[], "curl", "[::ffff:127.0.0.1]:8080", Effect::Allow, &["allow-loopback"], ""),
        ("IPv6 loopback", &[], "curl", "[::1]:8080", Effect::Allow, &["allow-loopback"], ""),
        ("IPv6 range for its repository", &[("repository", "acme/v6")], "curl", "[fd00::5]:443", Effect::Allow, &["v6-lab"], ""),
        ("IPv6 range for another repository", &[("repository", "acme/api")], "curl", "[fd00::5]:443", Effect::Deny, &[], "default deny"),
        ("unknown destination", DEPLOY, "curl", "192.0.2.1:443", Effect::Deny, &[], "default deny"),
        ("tags match staging", &[("repository", "acme/web")], "psql", "10.2.0.5:5432", Effect::Allow, &["staging"], ""),
        ("tags do not match for other orgs", &[("repository", "evil/web")], "psql", "10.2.0.5:5432", Effect::Deny, &[], ""),
        ("port range bottom", &[], "curl", "10.3.0.1:8000", Effect::Allow, &["web-ports"], ""),
        ("port range top", &[], "curl", "10.3.0.1:8100", Effect::Allow, &["web-ports"], ""),
        ("outside the port range", &[], "curl", "10.3.0.1:8101", Effect::Deny, &[], ""),
        ("process facts: netcat is forbidden", &[], "nc", "127.0.0.1:8080", Effect::Deny, &["no-netcat"], "forbidden"),
    ];
    for (name, labels, comm, dest, effect, policies, reason) in table {
        let decision = engine.decide_connect(Subject::new(
            &principal(labels),
            &process(comm),
            dest.parse().unwrap(),
        ));
        assert_eq!(decision.effect, *effect, "{name}: {decision:?}");
        let mut got = decision.policy_ids.clone();
        got.sort();
        let mut want: Vec<String> = policies.iter().map(|p| (*p).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "{name}: {decision:?}");
        assert!(
            decision.reason.contains(reason),
            "{name}: {}",
            decision.reason
        );
        assert!(decision.enforced, "{name}");
    }
}

#[test]
fn labels_never_stand_in_for_the_identity_of_a_job_that_has_one() {
    let engine = engine(Mode::Enforce);
    let dest = "10.1.2.3:5432".parse().expect("addr");
    // Labels alone are the identity of a job without one.
    let labelled = principal(DEPLOY);
    assert_eq!(
        engine
            .decide_connect(Subject::new(&labelled, &process("psql"), dest))
            .effect,
        Effect::Allow
    );
    // A job with an identity (a runner hook's) does not take missing fields from labels.
    let mut hooked = principal(DEPLOY);
    hooked.identity = [
        ("provider".to_owned(), "github".to_owned()),
        ("repository".to_owned(), "acme/api".to_owned()),
    ]
    .into();
    let decision = engine.decide_connect(Subject::new(&hooked, &process("psql"), dest));
    assert_eq!(decision.effect, Effect::Deny, "{decision:?}");
    // ... and uses its own fields when it has them.
    hooked
        .identity
        .insert("workflow".to_owned(), "deploy".to_owned());
    hooked
        .identity
        .insert("ref".to_owned(), "refs/heads/main".to_owned());
    hooked.labels.clear();
    assert_eq!(
        engine
            .decide_connect(Subject::new(&hooked, &process("psql"), dest))
            .effect,
        Effect::Allow
    );
}

#[test]
fn sql_statements_are_decided_once_a_policy_governs_sql() {
    let dest = "10.1.2.3:5432".parse().expect("addr");
    let sql = |tables: &[&str]| tollgate_policy::SqlContext {
        database: "shop".to_owned(),
        user: "app".to_owned(),
        tables: tables.iter().map(|t| (*t).to_owned()).collect(),
    };
    // Connect-only policies: statements ride on the permitted connection.
    let engine = engine(Mode::Enforce);
    assert!(!engine.governs_sql());
    let decision = engine.decide_sql(
        Subject::new(&principal(DEPLOY), &process("psql"), dest),
        "sql:ddl",
        &sql(&[]),
    );
    assert_eq!(decision.effect, Effect::Allow);
    assert_eq!(decision.reason, tollgate_policy::eval::NO_SQL_POLICY_REASON);

    let bundle = load(&[Source {
        name: "sql.cedar".to_owned(),
        text: r#"
@id("reads")
permit(principal, action == Action::"sql:read", resource);
@id("no-cards")
forbid(principal, action, resource)
when { context has tables && context.tables.contains("cards") && context.user != "auditor" };
"#
        .to_owned(),
    }])
    .expect("sql policies load");
    let engine = PolicyEngine::new(
        bundle,
        Catalog::new(Vec::new()).expect("catalog"),
        Mode::Enforce,
    );
    assert!(engine.governs_sql());
    let p = principal(DEPLOY);
    let read = engine.decide_sql(
        Subject::new(&p, &process("psql"), dest),
        "sql:read",
        &sql(&["orders"]),
    );
    assert_eq!(read.effect, Effect::Allow, "{read:?}");
    let write = engine.decide_sql(
        Subject::new(&p, &process("psql"), dest),
        "sql:write",
        &sql(&["orders"]),
    );
    assert_eq!(write.effect, Effect::Deny);
    assert!(
        write.reason.contains("no policy permits sql:write"),
        "{}",
        write.reason
    );
    let cards = engine.decide_sql(
        Subject::new(&p, &process("psql"), dest),
        "sql:read",
        &sql(&["cards"]),
    );
    assert_eq!(cards.effect, Effect::Deny);
    assert_eq!(cards.policy_ids, vec!["no-cards".to_owned()]);
    let mut auditor = sql(&["cards"]);
    auditor.user = "auditor".to_owned();
    let audited = engine.decide_sql(
        Subject::new(&p, &process("psql"), dest),
        "sql:read",
        &auditor,
    );
    assert_eq!(audited.effect, Effect::Allow);
}

#[test]
fn audit_mode_records_but_never_blocks() {
    let engine = engine(Mode::Audit);
    let denied = engine.decide_connect(Subject::new(
        &principal(&[]),
        &process("curl"),
        "192.0.2.1:443".parse().unwrap(),
    ));
    assert_eq!(denied.effect, Effect::Deny);
    assert!(!denied.enforced);
    assert!(!denied.blocks());
    assert_eq!(denied.label(), "would_deny");
    let allowed = engine.decide_connect(Subject::new(
        &principal(&[]),
        &process("curl"),
        "127.0.0.1:1".parse().unwrap(),
    ));
    assert_eq!(allowed.label(), "allow");
}

#[test]
fn a_target_can_override_the_mode() {
    let engine = engine(Mode::Enforce);
    let audited = engine.decide_connect(Subject::new(
        &principal(&[]),
        &process("curl"),
        "10.4.0.1:80".parse().unwrap(),
    ));
    assert_eq!(audited.effect, Effect::Deny);
    assert!(!audited.blocks(), "target `audited` is in audit mode");
    assert_eq!(audited.target, "audited");
    let enforced = engine.decide_connect(Subject::new(
        &principal(&[]),
        &process("curl"),
        "10.9.0.1:80".parse().unwrap(),
    ));
    assert!(enforced.blocks());
    assert_eq!(enforced.target, "(unknown)");
}

#[test]
fn an_empty_policy_set_denies_everything() {
    let engine = PolicyEngine::new(load(&[]).unwrap(), Catalog::default(), Mode::Enforce);
    let decision = engine.decide_connect(Subject::new(
        &principal(DEPLOY),
        &process("psql"),
        "127.0.0.1:5432".parse().unwrap(),
    ));
    assert!(decision.blocks());
    assert!(decision.reason.contains("default deny"));
}

#[test]
fn a_connect_can_be_decided_by_the_client_hellos_name() {
    let bundle = load(&[Source {
        name: "sni.cedar".to_owned(),
        text: r#"
@id("github-api")
permit(principal, action == Action::"connect", resource)
when { context has sni && context.sni == "api.github.com" && resource.port == 443 };

@id("no-paste")
forbid(principal, action == Action::"connect", resource)
when { context has sni && context.sni like "*.paste.example" };

@id("by-host")
permit(principal, action == Action::"connect", resource)
when { resource.hostname == "named.example" };
"#
        .to_owned(),
    }])
    .expect("policies load");
    let engine = PolicyEngine::new(bundle, Catalog::default(), Mode::Enforce);
    let (job, curl) = (principal(DEPLOY), process("curl"));
    let at = |port: u16| format!("192.0.2.7:{port}").parse().unwrap();
    let decide = |sni: Option<&str>, hostname: Option<&str>, port: u16| {
        engine.decide_connect(
            Subject::new(&job, &curl, at(port))
                .with_sni(sni)
                .with_hostname(hostname),
        )
    };
    let allowed = decide(Some("api.github.com"), None, 443);
    assert_eq!(allowed.effect, Effect::Allow, "{allowed:?}");
    assert_eq!(allowed.policy_ids, ["github-api"]);
    // Another name, no name, or another port: denied by default.
    for (sni, port) in [
        (Some("gist.github.com"), 443),
        (None, 443),
        (Some("api.github.com"), 80),
    ] {
        let d = decide(sni, None, port);
        assert_eq!(d.effect, Effect::Deny, "{sni:?}:{port} {d:?}");
        assert!(d.policy_ids.is_empty(), "{d:?}");
    }
    let forbidden = decide(Some("x.paste.example"), Some("named.example"), 443);
    assert_eq!(forbidden.policy_ids, ["no-paste"], "{forbidden:?}");
    let by_host = decide(None, Some("named.example"), 443);
    assert_eq!(by_host.policy_ids, ["by-host"], "{by_host:?}");
    assert_eq!(
        engine.reads_hello(),
        tollgate_policy::kernel::ReadsHello {
            sni: true,
            hostname: true
        }
    );
}

#[test]
#[ignore = "timing probe, run by hand"]
fn timing_probe() {
    let engine = engine(Mode::Enforce);
    let p = principal(DEPLOY);
    let proc_ = process("psql");
    let dest = "10.1.2.3:5432".parse().unwrap();
    let start = std::time::Instant::now();
    for _ in 0..20_000 {
        let _ = engine.decide_connect(Subject::new(&p, &proc_, dest));
    }
    eprintln!("decide_connect: {:?} each", start.elapsed() / 20_000);
    for (name, text) in [
        (
            "syntax.cedar",
            "permit(principal, action, resource)\nwhen { principal.repository == };",
        ),
        (
            "schema.cedar",
            "permit(principal, action == Action::\"connect\", resource)\n  when { principal.repo == \"x\" };",
        ),
        (
            "type.cedar",
            "permit(principal, action == Action::\"connect\", resource)\n  when { resource.port == \"5432\" };",
        ),
    ] {
        let err = load(&[Source {
            name: name.to_owned(),
            text: text.to_owned(),
        }])
        .unwrap_err();
        eprintln!("{err}");
    }
}
