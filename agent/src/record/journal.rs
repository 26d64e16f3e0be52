//! The write-ahead journal of connections and UDP flows: before a connection is relayed
//! to its upstream (or a flow's first datagram is), its row is appended here with one
//! write(2), so an agent killed before the recorder committed it still leaves it on
//! record. The next start inserts what the
//! store lacks (marked as cut by the stop) and removes the journal. Segments are rotated
//! by size once their rows are committed.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use super::{ConnectionRecord, UdpFlowRecord};

/// What an earlier agent left in the journal.
#[derive(Debug, Default)]
pub struct Left {
    pub connections: Vec<ConnectionRecord>,
    pub flows: Vec<UdpFlowRecord>,
}

/// A UDP flow's line: `{"udp_flow": {...}}` (a connection's line is the bare row).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowLine<F> {
    udp_flow: F,
}

/// A segment is rotated past this size.
const ROTATE_AT: u64 = 8 << 20;
/// A rotated segment is removed this long after rotation: by then every row appended to
/// it has been handed to the recorder (append and queue are one step) and committed.
const REMOVE_AFTER: Duration = Duration::from_secs(5);

pub struct Journal {
    dir: PathBuf,
    current: ArcSwap<Segment>,
    next: AtomicU64,
}

struct Segment {
    file: File,
    path: PathBuf,
    bytes: AtomicU64,
}

/// A rotated segment, removed once `due`.
pub struct Retired {
    path: PathBuf,
    due: Instant,
}

impl Journal {
    /// Opens the journal in `dir`: returns the rows left by an earlier agent (to insert
    /// where missing) and the segments they came from (to remove once inserted).
    pub fn open(dir: &Path) -> io::Result<(Self, Left, Vec<PathBuf>)> {
        fs::create_dir_all(dir)?;
        let mut old: Vec<PathBuf> = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        old.sort();
        let mut left = Left::default();
        for path in &old {
            let file = File::open(path)?;
            for line in io::BufReader::new(file).lines() {
                let line = line?;
                // A line cut by the kill is incomplete JSON: skipped.
                if let Ok(flow) = serde_json::from_str::<FlowLine<UdpFlowRecord>>(&line) {
                    left.flows.push(flow.udp_flow);
                } else if let Ok(row) = serde_json::from_str::<ConnectionRecord>(&line) {
                    left.connections.push(row);
                }
            }
        }
        let next = old
            .iter()
            .filter_map(|p| p.file_stem()?.to_str()?.parse::<u64>().ok())
            .max()
            .map_or(1, |n| n + 1);
        let segment = Segment::create(dir, next)?;
        Ok((
            Self {
                dir: dir.to_owned(),
                current: ArcSwap::from_pointee(segment),
                next: AtomicU64::new(next + 1),
            },
            left,
            old,
        ))
    }

    /// Appends one connection's row.
    pub fn append(&self, row: &ConnectionRecord) -> io::Result<()> {
        self.append_line(serde_json::to_vec(row).map_err(io::Error::other)?)
    }

    /// Appends one UDP flow's row.
    pub fn append_flow(&self, flow: &UdpFlowRecord) -> io::Result<()> {
        let line = FlowLine { udp_flow: flow };
        self.append_line(serde_json::to_vec(&line).map_err(io::Error::other)?)
    }

    /// One line, in one write, so concurrent appends do not interleave.
    fn append_line(&self, mut line: Vec<u8>) -> io::Result<()> {
        line.push(b'\n');
        let segment = self.current.load();
        (&segment.file).write_all(&line)?;
        segment
            .bytes
            .fetch_add(line.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Starts a new segment when the current one is large; the old one is returned, to
    /// be removed when due.
    pub fn rotate_if_large(&self) -> io::Result<Option<Retired>> {
        if self.current.load().bytes.load(Ordering::Relaxed) < ROTATE_AT {
            return Ok(None);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let old = self.current.swap(Arc::new(Segment::create(&self.dir, n)?));
        Ok(Some(Retired {
            path: old.path.clone(),
            due: Instant::now() + REMOVE_AFTER,
        }))
    }

    /// At a clean stop everything is committed: the journal goes.
    pub fn remove_all(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

impl Retired {
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.due
    }

    pub fn remove(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Segment {
    fn create(dir: &Path, n: u64) -> io::Result<Self> {
        let path = dir.join(format!("{n:012}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            file,
            path,
            bytes: AtomicU64::new(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> ConnectionRecord {
        ConnectionRecord {
            id: id.to_owned(),
            decision: crate::record::DecisionLabel::Allow,
            source: "127.0.0.1:1".to_owned(),
            ..ConnectionRecord::default()
        }
    }

    #[test]
    fn rows_survive_until_the_next_open_and_a_cut_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, left, old) = Journal::open(dir.path()).unwrap();
        assert!(left.connections.is_empty() && left.flows.is_empty() && old.is_empty());
        journal.append(&row("a")).unwrap();
        journal
            .append_flow(&UdpFlowRecord {
                id: "f".to_owned(),
                dst: "127.0.0.1:5000".to_owned(),
                packets_out: 1,
                ..UdpFlowRecord::default()
            })
            .unwrap();
        journal.append(&row("b")).unwrap();
        // A kill in the middle of a write leaves half a line.
        let path = journal.current.load().path.clone();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"id\":\"c\",\"deci")
            .unwrap();
        drop(journal);
        let (journal, left, old) = Journal::open(dir.path()).unwrap();
        let ids: Vec<&str> = left.connections.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(left.flows.len(), 1);
        assert_eq!(
            (left.flows[0].id.as_str(), left.flows[0].packets_out),
            ("f", 1)
        );
        assert_eq!(old, [path]);
        journal.append(&row("d")).unwrap();
        assert_ne!(journal.current.load().path, old[0], "a new segment");
        journal.remove_all();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
