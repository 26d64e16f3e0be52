use std::{sync::Arc, time::Duration};

use super::*;
use crate::config::ReviewerSpec;

/// The registry, with a real writer (kept alive by the returned handle and dir).
fn approvals(
    config: ApprovalsConfig,
) -> (
    Arc<Approvals>,
    (crate::record::writer::WriterHandle, tempfile::TempDir),
) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = crate::metrics::Metrics::new();
    let (recorder, handle) = crate::record::writer::spawn(
        &dir.path().join("records.db"),
        crate::record::writer::WriterOptions {
            capacity: 1024,
            batch_size: 64,
            flush_interval: Duration::from_millis(20),
            ..Default::default()
        },
        metrics.record.clone(),
    )
    .unwrap();
    let metrics = Arc::new(ApprovalMetrics::new(&prometheus::Registry::new()));
    (
        Arc::new(Approvals::new(&config, recorder, metrics)),
        (handle, dir),
    )
}

fn request(job: &str, actor: &str) -> NewRequest {
    NewRequest {
        record: ApprovalRecord {
            job_id: Some(job.to_owned()),
            identity: [
                ("actor".to_owned(), actor.to_owned()),
                ("repository".to_owned(), "acme/api".to_owned()),
                ("workflow".to_owned(), "deploy".to_owned()),
            ]
            .into(),
            target: Some("prod-db".to_owned()),
            action: "sql:ddl".to_owned(),
            sql: Some("ALTER TABLE t ADD c int".to_owned()),
            ..ApprovalRecord::default()
        },
        shape: Some("ALTER TABLE t ADD c int".to_owned()),
    }
}

const ROOT: Caller = Caller {
    pid: 0,
    uid: 0,
    gid: 0,
};
const ANN: Caller = Caller {
    pid: 0,
    uid: 4242,
    gid: 4242,
};
const BOB: Caller = Caller {
    pid: 0,
    uid: 4343,
    gid: 4343,
};

fn approve(scope: &str) -> Verdict {
    Verdict::Approve {
        scope: Some(scope.to_owned()),
        reason: None,
    }
}

#[tokio::test]
async fn an_approval_wakes_the_held_request_and_a_denial_carries_its_reason() {
    let (approvals, _rx) = approvals(ApprovalsConfig::default());
    let ticket = approvals.ask(request("j1", "alice")).await;
    let id = ticket.id().to_owned();
    assert_eq!(approvals.pending().len(), 1);
    let record = approvals.decide(ROOT, &id, approve("once")).unwrap();
    assert_eq!(record.state, Some(ApprovalState::Approved));
    let outcome = ticket.wait().await;
    assert!(outcome.allows(), "{outcome:?}");
    assert!(approvals.pending().is_empty());

    let ticket = approvals.ask(request("j1", "alice")).await;
    let id = ticket.id().to_owned();
    assert!(matches!(
        approvals.decide(
            ROOT,
            &id,
            Verdict::Deny {
                reason: " ".to_owned()
            }
        ),
        Err(ApprovalError::NoReason)
    ));
    approvals
        .decide(
            ROOT,
            &id,
            Verdict::Deny {
                reason: "not today".to_owned(),
            },
        )
        .unwrap();
    match ticket.wait().await {
        Outcome::Denied { reason, .. } => assert_eq!(reason, "not today"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn without_a_decision_the_request_times_out_and_a_late_decision_is_refused() {
    let config = ApprovalsConfig {
        timeout: Duration::from_millis(50),
        ..ApprovalsConfig::default()
    };
    let (approvals, _rx) = approvals(config);
    let ticket = approvals.ask(request("j1", "alice")).await;
    let id = ticket.id().to_owned();
    assert!(matches!(ticket.wait().await, Outcome::TimedOut { .. }));
    assert!(matches!(
        approvals.decide(ROOT, &id, approve("once")),
        Err(ApprovalError::NotPending(_))
    ));
}

#[tokio::test]
async fn a_dropped_ticket_is_abandoned() {
    let (approvals, _rx) = approvals(ApprovalsConfig::default());
    let ticket = approvals.ask(request("j1", "alice")).await;
    let id = ticket.id().to_owned();
    drop(ticket);
    assert!(approvals.waiting(&id).is_none());
    assert!(approvals.decide(ROOT, &id, approve("once")).is_err());
}

#[tokio::test]
async fn reviewers_self_approval_and_distinct_approvals() {
    let config = ApprovalsConfig {
        reviewers: vec![ReviewerSpec::Uid(4242), ReviewerSpec::Uid(4343)],
        min_approvals: 2,
        ..ApprovalsConfig::default()
    };
    let (approvals, _rx) = approvals(config);
    // The job's actor is ann's login (or uid:4242 where the uid has no name).
    let ann = reviewers::login(4242);
    let ticket = approvals.ask(request("j1", &ann)).await;
    let id = ticket.id().to_owned();
    let stranger = Caller {
        pid: 0,
        uid: 4444,
        gid: 4444,
    };
    assert!(matches!(
        approvals.decide(stranger, &id, approve("once")),
        Err(ApprovalError::NotReviewer(4444))
    ));
    assert!(matches!(
        approvals.decide(ANN, &id, approve("once")),
        Err(ApprovalError::SelfApproval { .. })
    ));
    let first = approvals.decide(BOB, &id, approve("once")).unwrap();
    assert_eq!(first.state, Some(ApprovalState::Pending), "one of two");
    assert!(matches!(
        approvals.decide(BOB, &id, approve("once")),
        Err(ApprovalError::AlreadyApproved { .. })
    ));
    let second = approvals.decide(ROOT, &id, approve("once")).unwrap();
    assert_eq!(second.state, Some(ApprovalState::Approved));
    assert_eq!(second.reviewers.len(), 2);
    assert!(ticket.wait().await.allows());
}

#[tokio::test]
async fn a_job_grant_covers_the_same_shape_in_that_job_until_revoked_or_ended() {
    let (approvals, _rx) = approvals(ApprovalsConfig::default());
    let ticket = approvals.ask(request("j1", "alice")).await;
    let id = ticket.id().to_owned();
    let record = approvals.decide(ROOT, &id, approve("job")).unwrap();
    let grant = record.grant_id.clone().expect("a grant");
    assert!(ticket.wait().await.allows());
    assert!(matches!(
        approvals.granted(&request("j1", "alice")),
        Some(Outcome::Granted { .. })
    ));
    assert!(
        approvals.granted(&request("j2", "alice")).is_none(),
        "another job"
    );
    let mut other_shape = request("j1", "alice");
    other_shape.shape = Some("DROP TABLE t".to_owned());
    assert!(approvals.granted(&other_shape).is_none());
    approvals.revoke(ROOT, &grant).unwrap();
    assert!(approvals.granted(&request("j1", "alice")).is_none());

    let ticket = approvals.ask(request("j1", "alice")).await;
    let id = ticket.id().to_owned();
    approvals.decide(ROOT, &id, approve("job")).unwrap();
    approvals.keep_jobs(&["j2".to_owned()]);
    assert!(approvals.granted(&request("j1", "alice")).is_none());
}

#[tokio::test]
async fn a_duration_grant_covers_the_repository_and_workflow() {
    let (approvals, _rx) = approvals(ApprovalsConfig::default());
    let ticket = approvals.ask(request("j1", "alice")).await;
    let id = ticket.id().to_owned();
    approvals.decide(ROOT, &id, approve("30m")).unwrap();
    assert!(approvals.granted(&request("j9", "bob")).is_some());
    let mut other = request("j9", "bob");
    other
        .record
        .identity
        .insert("workflow".to_owned(), "nightly".to_owned());
    assert!(approvals.granted(&other).is_none());
    assert!(matches!(
        approvals.decide(ROOT, "x", approve("sometimes")),
        Err(ApprovalError::NotPending(_)) | Err(ApprovalError::Scope(_))
    ));
    let ticket = approvals.ask(request("j1", "alice")).await;
    assert!(matches!(
        approvals.decide(ROOT, ticket.id(), approve("sometimes")),
        Err(ApprovalError::Scope(_))
    ));
}

#[test]
fn scopes_stay_within_the_policy_cap() {
    let job = GrantScope::Job;
    let hour = GrantScope::parse("1h").unwrap();
    assert!(GrantScope::Once.within("once"));
    assert!(!job.within("once"));
    assert!(job.within("job"));
    assert!(!hour.within("job"));
    assert!(hour.within("2h") && !hour.within("30m"));
    assert!(job.within("30m"));
    assert!(!job.within("job,once"), "every cap applies");
    assert!(
        !job.within("nonsense"),
        "a cap that does not parse allows once only"
    );
}

#[tokio::test]
async fn an_approval_wider_than_the_cap_is_refused() {
    let (approvals, _rx) = approvals(ApprovalsConfig::default());
    let mut capped = request("j1", "alice");
    capped.record.scope_cap = Some("once".to_owned());
    let ticket = approvals.ask(capped).await;
    let id = ticket.id().to_owned();
    assert!(matches!(
        approvals.decide(ROOT, &id, approve("job")),
        Err(ApprovalError::ScopeCapped { .. })
    ));
    assert!(approvals.decide(ROOT, &id, approve("once")).is_ok());
    assert!(ticket.wait().await.allows());
}
