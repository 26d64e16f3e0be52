//! The hash chain of the recording store. Every record the writer commits is also
//! appended, in commit order and in the same transaction, to the `chain` table: its kind,
//! its id, its canonical content (the record's JSON, as written) and a SHA-256 that
//! covers that content, its position and the hash before it. The chain is what is
//! shipped to the central store, and what `tollgate audit verify` checks against the
//! signed checkpoints (docs/fleet.md).
use ring::digest;
use rusqlite::{OptionalExtension as _, Transaction, params};
use serde::Serialize;

use super::RecordEvent;

/// The hash before the first record.
pub const GENESIS: Hash = [0; 32];

pub type Hash = [u8; 32];

/// The chain's last entry: its position (0 before the first) and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: Hash,
}

impl Head {
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: GENESIS,
    };
}

/// One entry of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub seq: i64,
    /// When it was chained (ms since the epoch).
    pub at: i64,
    pub kind: String,
    /// The record's id ("" for records without one: audit entries, kernel events, DNS
    /// queries, unix connect counts and stop markers).
    pub record_id: String,
    /// The record's canonical content (its JSON, exactly the bytes hashed).
    pub body: String,
    #[serde(serialize_with = "hex_bytes")]
    pub prev: Hash,
    #[serde(serialize_with = "hex_bytes")]
    pub hash: Hash,
}

/// The hash of an entry: SHA-256 over a domain tag, the previous hash, the position,
/// the time, the kind, the id and the content (lengths first, so no two entries share
/// their bytes).
pub fn hash(prev: &Hash, seq: i64, at: i64, kind: &str, record_id: &str, body: &str) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"tollgate-chain-v1\0");
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(&at.to_be_bytes());
    for part in [kind, record_id, body] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = GENESIS;
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Entry {
    /// Whether the entry's hash is the hash of its content, position and `prev`.
    pub fn is_intact(&self) -> bool {
        self.hash == self.rehash(self.seq)
    }

    /// The entry's hash were it at position `seq`.
    pub fn rehash(&self, seq: i64) -> Hash {
        hash(
            &self.prev,
            seq,
            self.at,
            &self.kind,
            &self.record_id,
            &self.body,
        )
    }
}

/// The kind, id and content of what `event` writes (none for markers).
pub fn content(event: &RecordEvent) -> Option<(&'static str, String, String)> {
    fn json(value: &impl Serialize) -> String {
        serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
    }
    Some(match event {
        RecordEvent::Flush(_) | RecordEvent::Committed(_) => return None,
        RecordEvent::JobStarted(job) => ("job", job.id.clone(), json(job)),
        RecordEvent::JobEnded {
            id,
            ended_at,
            exit,
            reason,
        } => (
            "job_ended",
            id.clone(),
            json(&serde_json::json!({
                "id": id, "ended_at": ended_at, "exit": exit, "reason": reason,
            })),
        ),
        RecordEvent::JobIdentity {
            id,
            identity,
            assurance,
        } => (
            "job_identity",
            id.clone(),
            json(&serde_json::json!({
                "id": id, "identity": identity, "assurance": assurance,
            })),
        ),
        RecordEvent::Audit(a) => ("audit", String::new(), json(a)),
        RecordEvent::ConnectionOpened(c) | RecordEvent::Connection(c) => {
            ("connection", c.id.clone(), json(c))
        }
        RecordEvent::CloseDangling { at } => (
            "close_dangling",
            String::new(),
            json(&serde_json::json!({ "at": at })),
        ),
        RecordEvent::Statement(st) | RecordEvent::StatementStarted(st) => {
            ("statement", st.id.clone(), json(st))
        }
        RecordEvent::Event(e) => ("event", String::new(), json(e)),
        RecordEvent::Dns(d) => ("dns_query", String::new(), json(d)),
        RecordEvent::UdpFlow(f) => ("udp_flow", f.id.clone(), json(f)),
        RecordEvent::Unix(u) => ("unix_connect", String::new(), json(u)),
        RecordEvent::Approval(a) => ("approval", a.id.clone(), json(a)),
    })
}

/// Appends entries within the writer's transaction; [`Appender::head`] is the chain's
/// head once that transaction commits.
pub struct Appender {
    head: Head,
}

impl Appender {
    pub fn new(head: Head) -> Self {
        Self { head }
    }

    pub fn head(&self) -> Head {
        self.head
    }

    pub fn append(
        &mut self,
        tx: &Transaction<'_>,
        at: i64,
        kind: &str,
        record_id: &str,
        body: &str,
    ) -> rusqlite::Result<()> {
        let seq = self.head.seq + 1;
        let entry_hash = hash(&self.head.hash, seq, at, kind, record_id, body);
        tx.prepare_cached(
            "INSERT INTO chain (seq, at, kind, record_id, body, prev, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            seq,
            at,
            kind,
            record_id,
            body,
            &self.head.hash[..],
            &entry_hash[..]
        ])?;
        self.head = Head {
            seq,
            hash: entry_hash,
        };
        Ok(())
    }
}

/// The chain's head as stored (the empty head for a new store).
pub fn load_head(conn: &rusqlite::Connection) -> rusqlite::Result<Head> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM chain ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((seq, bytes)) => Head {
            seq,
            hash: to_hash(&bytes).unwrap_or(GENESIS),
        },
        None => Head::EMPTY,
    })
}

/// A stored hash (wrong lengths read as none).
pub fn to_hash(bytes: &[u8]) -> Option<Hash> {
    bytes.try_into().ok()
}

/// Reads entries from `after` (exclusive), in order, at most `limit` of them.
pub fn read(conn: &rusqlite::Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<Entry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, kind, record_id, body, prev, hash FROM chain WHERE seq > ?1 \
         ORDER BY seq LIMIT ?2",
    )?;
    stmt.query_map(params![after, limit as i64], entry_of_row)?
        .collect()
}

pub fn entry_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let prev: Vec<u8> = row.get(5)?;
    let hash: Vec<u8> = row.get(6)?;
    Ok(Entry {
        seq: row.get(0)?,
        at: row.get(1)?,
        kind: row.get(2)?,
        record_id: row.get(3)?,
        body: row.get(4)?,
        // A stored hash of the wrong length cannot match anything: it reads as zeros
        // here, and verification reports the entry as changed.
        prev: to_hash(&prev).unwrap_or(GENESIS),
        hash: to_hash(&hash).unwrap_or(GENESIS),
    })
}

/// Bytes (a hash, a signature) as lowercase hex in JSON.
pub fn hex_bytes<T: AsRef<[u8]>, S: serde::Serializer>(bytes: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&hex(bytes.as_ref()))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_an_entry_is_covered_by_its_hash() {
        let base = hash(&GENESIS, 1, 10, "statement", "s1", "{}");
        assert_ne!(base, hash(&[1; 32], 1, 10, "statement", "s1", "{}"));
        assert_ne!(base, hash(&GENESIS, 2, 10, "statement", "s1", "{}"));
        assert_ne!(base, hash(&GENESIS, 1, 11, "statement", "s1", "{}"));
        assert_ne!(base, hash(&GENESIS, 1, 10, "connection", "s1", "{}"));
        assert_ne!(base, hash(&GENESIS, 1, 10, "statement", "s2", "{}"));
        assert_ne!(base, hash(&GENESIS, 1, 10, "statement", "s1", "{ }"));
        // Lengths keep the parts apart: moving a byte across a boundary changes the hash.
        assert_ne!(
            hash(&GENESIS, 1, 10, "ab", "c", "{}"),
            hash(&GENESIS, 1, 10, "a", "bc", "{}")
        );
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0, 10, 255]), "000aff");
    }
}
