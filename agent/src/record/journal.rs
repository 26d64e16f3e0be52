//! The write-ahead journal of connections: before a connection is relayed to its
//! upstream, its row is appended here with one write(2), so an agent killed before the
//! recorder committed it still leaves it on record. The next start inserts what the
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

use super::ConnectionRecord;

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
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<ConnectionRecord>, Vec<PathBuf>)> {
        fs::create_dir_all(dir)?;
        let mut old: Vec<PathBuf> = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        old.sort();
        let mut rows = Vec::new();
        for path in &old {
            let file = File::open(path)?;
            for line in io::BufReader::new(file).lines() {
                // A line cut by the kill is incomplete JSON: skipped.
                if let Ok(row) = serde_json::from_str::<ConnectionRecord>(&line?) {
                    rows.push(row);
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
            rows,
            old,
        ))
    }

    /// Appends one row (one write, so concurrent appends do not interleave).
    pub fn append(&self, row: &ConnectionRecord) -> io::Result<()> {
        let mut line = serde_json::to_vec(row).map_err(io::Error::other)?;
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
            decision: "allow".to_owned(),
            source: "127.0.0.1:1".to_owned(),
            ..ConnectionRecord::default()
        }
    }

    #[test]
    fn rows_survive_until_the_next_open_and_a_cut_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, rows, old) = Journal::open(dir.path()).unwrap();
        assert!(rows.is_empty() && old.is_empty());
        journal.append(&row("a")).unwrap();
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
        let (journal, rows, old) = Journal::open(dir.path()).unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(old, [path]);
        journal.append(&row("d")).unwrap();
        assert_ne!(journal.current.load().path, old[0], "a new segment");
        journal.remove_all();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
