//! Verification of a host's record chain against its signed checkpoints: content,
//! order and completeness. Pure: the entries come from the local store or the central
//! one, in position order, and the first failure is named with its kind.
use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    chain::{Entry, GENESIS, Hash},
    checkpoint::Checkpoint,
};

/// How far from its position a moved record is looked for.
const MOVED_WITHIN: i64 = 100_000;

/// What went wrong first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A record's content (or its link to the one before) is not what was chained.
    Changed,
    /// Records are absent between two that are present.
    Missing,
    /// A record sits at a position other than the one it was chained at.
    Reordered,
    /// Records a checkpoint covers are gone from the end.
    Truncated,
    /// A checkpoint's signature does not verify with the host's key.
    BadSignature,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Changed => "changed",
            Self::Missing => "missing",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated after a checkpoint",
            Self::BadSignature => "bad checkpoint signature",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub kind: FailureKind,
    /// The position of the first record that fails.
    pub seq: i64,
    /// That record, as `kind id` (or what is known of it).
    pub record: String,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "record #{} ({}): {}: {}",
            self.seq, self.record, self.kind, self.detail
        )
    }
}

/// The outcome for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub host: String,
    /// Records checked, and the first and last position seen.
    pub records: u64,
    pub first: Option<i64>,
    pub last: Option<i64>,
    /// Checkpoints whose signature and head were checked.
    pub checkpoints: u64,
    /// The newest checkpoint: its number and the records it covers.
    pub latest_checkpoint: Option<(i64, i64)>,
    /// Records after the newest checkpoint (present, not yet signed).
    pub unsigned_tail: u64,
    pub failure: Option<Failure>,
}

impl Report {
    /// A host whose chain was not read (its report says nothing was checked).
    pub fn unchecked(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            records: 0,
            first: None,
            last: None,
            checkpoints: 0,
            latest_checkpoint: None,
            unsigned_tail: 0,
            failure: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Where the chain starts being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the first record (`prev` is the genesis hash).
    Genesis,
    /// After records pruned up to `upto`, whose last hash was `head`.
    Pruned { upto: i64, head: Hash },
    /// From whatever record comes first (`--since`): its link back is not checked.
    Anywhere,
}

/// Checks entries one at a time, in position order, stopping at the first failure.
pub struct Verifier {
    host: String,
    start: Start,
    /// Checkpoints by the records they cover (verified signatures only).
    by_records: BTreeMap<i64, Checkpoint>,
    checked_checkpoints: u64,
    latest: Option<Checkpoint>,
    prev: Option<(i64, Hash, String)>,
    records: u64,
    first: Option<i64>,
    failure: Option<Failure>,
}

impl Verifier {
    /// `public`: the host's Ed25519 public key; `checkpoints` in order.
    pub fn new(host: &str, public: &[u8], checkpoints: Vec<Checkpoint>, start: Start) -> Self {
        let mut verifier = Self {
            host: host.to_owned(),
            start,
            by_records: BTreeMap::new(),
            checked_checkpoints: 0,
            latest: None,
            prev: None,
            records: 0,
            first: None,
            failure: None,
        };
        let mut expected_seq = None;
        for cp in checkpoints {
            if verifier.failure.is_some() {
                break;
            }
            if !cp.is_signed_by(public) || cp.host != host {
                verifier.failure = Some(Failure {
                    kind: FailureKind::BadSignature,
                    seq: cp.records,
                    record: format!("checkpoint {}", cp.seq),
                    detail: format!(
                        "checkpoint {} (covering #{}) is not signed by {host}'s key",
                        cp.seq, cp.records
                    ),
                });
                break;
            }
            if let Some(expected) = expected_seq
                && cp.seq != expected
            {
                verifier.failure = Some(Failure {
                    kind: FailureKind::Missing,
                    seq: cp.records,
                    record: format!("checkpoint {expected}"),
                    detail: format!(
                        "checkpoints {expected}..{} are gone (the next present is {})",
                        cp.seq - 1,
                        cp.seq
                    ),
                });
                break;
            }
            expected_seq = Some(cp.seq + 1);
            verifier.checked_checkpoints += 1;
            verifier.latest = Some(cp.clone());
            verifier.by_records.insert(cp.records, cp);
        }
        verifier
    }

    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    fn fail(&mut self, kind: FailureKind, seq: i64, record: String, detail: String) {
        self.failure.get_or_insert(Failure {
            kind,
            seq,
            record,
            detail,
        });
    }

    /// Checks the next entry. False once something failed (stop feeding).
    pub fn entry(&mut self, e: &Entry) -> bool {
        if self.failure.is_some() {
            return false;
        }
        let name = describe(e);
        let (expected_seq, expected_prev) = match (&self.prev, self.start) {
            (Some((seq, hash, _)), _) => (Some(seq + 1), Some(*hash)),
            (None, Start::Genesis) => (Some(1), Some(GENESIS)),
            (None, Start::Pruned { upto, head }) => (Some(upto + 1), Some(head)),
            (None, Start::Anywhere) => (None, None),
        };
        if let Some(expected) = expected_seq {
            if e.seq < expected {
                self.fail(
                    FailureKind::Reordered,
                    e.seq,
                    name,
                    format!("a second record at #{} (after #{})", e.seq, expected - 1),
                );
                return false;
            }
            if e.seq > expected {
                let after = self
                    .prev
                    .as_ref()
                    .map_or("the start".to_owned(), |(s, _, n)| format!("#{s} ({n})"));
                self.fail(
                    FailureKind::Missing,
                    expected,
                    "absent".to_owned(),
                    format!(
                        "records #{expected}..#{} are gone (between {after} and #{} ({}))",
                        e.seq - 1,
                        e.seq,
                        describe(e)
                    ),
                );
                return false;
            }
        }
        if !e.is_intact() {
            let moved_from = (e.seq - MOVED_WITHIN..=e.seq + MOVED_WITHIN)
                .filter(|s| *s != e.seq && *s > 0)
                .find(|s| e.rehash(*s) == e.hash);
            match moved_from {
                Some(from) => self.fail(
                    FailureKind::Reordered,
                    e.seq,
                    name,
                    format!("this record was chained at #{from}"),
                ),
                None => self.fail(
                    FailureKind::Changed,
                    e.seq,
                    name,
                    "its content does not match its hash".to_owned(),
                ),
            }
            return false;
        }
        if let Some(prev) = expected_prev
            && e.prev != prev
        {
            self.fail(
                FailureKind::Changed,
                e.seq,
                name,
                format!(
                    "it does not follow #{}: the chain was rewritten from here",
                    e.seq - 1
                ),
            );
            return false;
        }
        if let Some(cp) = self.by_records.get(&e.seq)
            && cp.head != e.hash
        {
            let seq = cp.seq;
            self.fail(
                FailureKind::Changed,
                e.seq,
                name,
                format!("checkpoint {seq} signed a different record at this position"),
            );
            return false;
        }
        self.records += 1;
        self.first.get_or_insert(e.seq);
        self.prev = Some((e.seq, e.hash, name));
        true
    }

    /// The report, once every entry was fed.
    pub fn finish(mut self) -> Report {
        let last = self.prev.as_ref().map(|(seq, _, _)| *seq);
        if self.failure.is_none()
            && let Some(cp) = &self.latest
        {
            let have = last.unwrap_or(match self.start {
                Start::Pruned { upto, .. } => upto,
                _ => 0,
            });
            if have < cp.records {
                let (seq, records) = (cp.seq, cp.records);
                self.fail(
                    FailureKind::Truncated,
                    have + 1,
                    "absent".to_owned(),
                    format!(
                        "records #{}..#{records} are gone: checkpoint {seq} covers them",
                        have + 1
                    ),
                );
            }
        }
        let latest = self.latest.as_ref().map(|c| (c.seq, c.records));
        let unsigned_tail = match (last, latest) {
            (Some(last), Some((_, records))) => (last - records).max(0) as u64,
            (Some(_), None) => self.records,
            _ => 0,
        };
        Report {
            host: self.host,
            records: self.records,
            first: self.first,
            last,
            checkpoints: self.checked_checkpoints,
            latest_checkpoint: latest,
            unsigned_tail,
            failure: self.failure,
        }
    }
}

/// `kind id`, or `kind` with what identifies it in its content.
fn describe(e: &Entry) -> String {
    if e.record_id.is_empty() {
        format!("{} at {}", e.kind, e.at)
    } else {
        format!("{} {}", e.kind, e.record_id)
    }
}

pub mod local;
#[cfg(test)]
mod tests;
