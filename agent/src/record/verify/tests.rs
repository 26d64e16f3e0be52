use super::*;
use crate::record::{
    chain::{self, Head},
    checkpoint::HostKey,
};

fn chain_of(n: i64) -> Vec<Entry> {
    let mut prev = GENESIS;
    (1..=n)
        .map(|seq| {
            let body = format!("{{\"sql\":\"SELECT {seq}\"}}");
            let id = format!("s{seq}");
            let hash = chain::hash(&prev, seq, 1000 + seq, "statement", &id, &body);
            let e = Entry {
                seq,
                at: 1000 + seq,
                kind: "statement".into(),
                record_id: id,
                body,
                prev,
                hash,
            };
            prev = hash;
            e
        })
        .collect()
}

fn key() -> (tempfile::TempDir, HostKey) {
    let dir = tempfile::tempdir().unwrap();
    let key = HostKey::load_or_create(&dir.path().join("host.key")).unwrap();
    (dir, key)
}

fn checkpoints(key: &HostKey, entries: &[Entry], at: &[i64]) -> Vec<Checkpoint> {
    at.iter()
        .enumerate()
        .map(|(i, records)| {
            let e = &entries[(*records - 1) as usize];
            Checkpoint::sign(
                key,
                "runner-1",
                i as i64 + 1,
                5000,
                Head {
                    seq: e.seq,
                    hash: e.hash,
                },
            )
        })
        .collect()
}

fn verify(key: &HostKey, entries: &[Entry], cps: Vec<Checkpoint>) -> Report {
    let mut v = Verifier::new("runner-1", key.public(), cps, Start::Genesis);
    for e in entries {
        if !v.entry(e) {
            break;
        }
    }
    v.finish()
}

#[test]
fn an_untouched_chain_verifies_with_its_unsigned_tail_counted() {
    let (_d, key) = key();
    let entries = chain_of(20);
    let report = verify(&key, &entries, checkpoints(&key, &entries, &[5, 15]));
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.records, 20);
    assert_eq!(report.checkpoints, 2);
    assert_eq!(report.latest_checkpoint, Some((2, 15)));
    assert_eq!(report.unsigned_tail, 5);
}

#[test]
fn a_changed_record_is_named() {
    let (_d, key) = key();
    let mut entries = chain_of(20);
    let cps = checkpoints(&key, &entries, &[20]);
    entries[6].body = "{\"sql\":\"DROP TABLE users\"}".into();
    let f = verify(&key, &entries, cps).failure.unwrap();
    assert_eq!((f.kind, f.seq), (FailureKind::Changed, 7));
    assert_eq!(f.record, "statement s7");
}

#[test]
fn a_rehashed_rewrite_is_caught_by_the_link_and_by_the_checkpoint() {
    let (_d, key) = key();
    let mut entries = chain_of(10);
    let cps = checkpoints(&key, &entries, &[10]);
    // The attacker recomputes the changed record's own hash: the next one's link breaks.
    entries[3].body = "{}".into();
    entries[3].hash = entries[3].rehash(4);
    let f = verify(&key, &entries, cps.clone()).failure.unwrap();
    assert_eq!((f.kind, f.seq), (FailureKind::Changed, 5));
    // Rewriting the whole tail consistently still differs from what was signed.
    let mut prev = entries[3].hash;
    for e in &mut entries[4..] {
        e.prev = prev;
        e.hash = e.rehash(e.seq);
        prev = e.hash;
    }
    let f = verify(&key, &entries, cps).failure.unwrap();
    assert_eq!((f.kind, f.seq), (FailureKind::Changed, 10));
    assert!(f.detail.contains("checkpoint 1"), "{f}");
}

#[test]
fn a_deleted_record_is_missing() {
    let (_d, key) = key();
    let mut entries = chain_of(20);
    let cps = checkpoints(&key, &entries, &[20]);
    entries.remove(11);
    let f = verify(&key, &entries, cps).failure.unwrap();
    assert_eq!((f.kind, f.seq), (FailureKind::Missing, 12));
    assert!(f.detail.contains("#12..#12"), "{f}");
}

#[test]
fn the_newest_records_deleted_after_a_checkpoint_are_a_truncation() {
    let (_d, key) = key();
    let mut entries = chain_of(30);
    let cps = checkpoints(&key, &entries, &[10, 30]);
    entries.truncate(20);
    let f = verify(&key, &entries, cps).failure.unwrap();
    assert_eq!((f.kind, f.seq), (FailureKind::Truncated, 21));
    assert!(f.detail.contains("checkpoint 2"), "{f}");
}

#[test]
fn two_swapped_positions_are_reordered() {
    let (_d, key) = key();
    let mut entries = chain_of(20);
    let cps = checkpoints(&key, &entries, &[20]);
    // Positions 8 and 9 trade places (their contents keep their hashes).
    entries[7].seq = 9;
    entries[8].seq = 8;
    entries.swap(7, 8);
    let f = verify(&key, &entries, cps).failure.unwrap();
    assert_eq!((f.kind, f.seq), (FailureKind::Reordered, 8));
    assert!(f.detail.contains("chained at #9"), "{f}");
    assert_eq!(f.record, "statement s9");
}

#[test]
fn a_forged_or_missing_checkpoint_fails() {
    let (_d, key) = key();
    let (_d2, other) = self::key();
    let entries = chain_of(10);
    let forged = checkpoints(&other, &entries, &[10]);
    let f = verify(&key, &entries, forged).failure.unwrap();
    assert_eq!(f.kind, FailureKind::BadSignature);
    let mut cps = checkpoints(&key, &entries, &[3, 6, 10]);
    cps.remove(1);
    let f = verify(&key, &entries, cps).failure.unwrap();
    assert_eq!(f.kind, FailureKind::Missing);
    assert_eq!(f.record, "checkpoint 2");
}

#[test]
fn a_pruned_start_is_accepted_only_where_the_prune_left_it() {
    let (_d, key) = key();
    let entries = chain_of(20);
    let cps = checkpoints(&key, &entries, &[20]);
    let start = Start::Pruned {
        upto: 10,
        head: entries[9].hash,
    };
    let mut v = Verifier::new("runner-1", key.public(), cps.clone(), start);
    for e in &entries[10..] {
        assert!(v.entry(e));
    }
    assert!(v.finish().ok());
    // One more record gone past the prune is missing.
    let mut v = Verifier::new("runner-1", key.public(), cps, start);
    for e in &entries[11..] {
        if !v.entry(e) {
            break;
        }
    }
    let f = v.finish().failure.unwrap();
    assert_eq!((f.kind, f.seq), (FailureKind::Missing, 11));
}
