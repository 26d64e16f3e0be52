//! The batched writer thread.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, params};

use super::{
    RecordError, RecordEvent, RecordMetrics, Recorder,
    batch::{insert_connection, to_json, write_batch},
    chain::{self, Appender, Head},
    checkpoint::{self, Checkpoint, HostKey},
    journal::{Journal, Retired},
    now_ms, queue, retention, schema,
};

/// How long a failed batch waits before it is written again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// How often the store's size is measured for its metric.
const SIZE_EVERY: Duration = Duration::from_secs(10);

/// Chunks pruned in one go before the writer goes back to recording.
const PRUNE_CHUNKS: usize = 20;

/// Owns the writer thread; `shutdown` flushes what is queued and stops it.
pub struct WriterHandle {
    thread: Option<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl WriterHandle {
    /// Call after every [`Recorder`] clone is dropped: the writer drains the queue and
    /// exits. Failing batches are retried a few times more, then reported as lost.
    pub fn shutdown(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("recording writer panicked");
        }
    }
}

/// How the writer batches, keeps and signs what it records.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Records waiting for the writer before new ones are dropped.
    pub capacity: usize,
    /// Most records in one transaction.
    pub batch_size: usize,
    /// How long the writer gathers records before it commits them.
    pub flush_interval: Duration,
    /// Deletes what ended longer ago than this.
    pub retention: Option<Duration>,
    /// Commits are synced (`synchronous = FULL`).
    pub durable: bool,
    /// Signs checkpoints of the record chain (none: the chain is kept, unsigned).
    pub signer: Option<Signer>,
    /// Chain entries are kept until shipped to a central store (not only past the
    /// retention).
    pub shipping: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            capacity: 1024,
            batch_size: 64,
            flush_interval: Duration::from_millis(50),
            retention: None,
            durable: false,
            signer: None,
            shipping: false,
        }
    }
}

/// Who signs the chain's checkpoints, and how often.
#[derive(Debug, Clone)]
pub struct Signer {
    pub host: String,
    pub key: Arc<HostKey>,
    pub interval: Duration,
}

/// Opens (creating if needed) the database at `path` and starts the writer.
pub fn spawn(
    path: &Path,
    options: WriterOptions,
    metrics: Arc<RecordMetrics>,
) -> Result<(Recorder, WriterHandle), RecordError> {
    let WriterOptions {
        capacity,
        batch_size,
        flush_interval,
        retention,
        durable,
        signer,
        shipping,
    } = options;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| RecordError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let open_err = |source| RecordError::Open {
        path: path.to_owned(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    schema::apply(&conn).map_err(open_err)?;
    if durable {
        // A commit is on disk when it returns, not only in the WAL's page cache.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
    }
    // Connections an agent killed before its recorder committed them: on record now.
    let journal_dir = path.with_extension("journal");
    let (journal, left, old) = Journal::open(&journal_dir).map_err(|source| RecordError::Dir {
        path: journal_dir.clone(),
        source,
    })?;
    let mut appender = Appender::new(chain::load_head(&conn).map_err(open_err)?);
    let connections = replay(
        &mut conn,
        &mut appender,
        "connections",
        &left.connections,
        |c| &c.id,
        |tx, mut c| {
            c.error
                .get_or_insert_with(|| "the agent stopped before the connection ended".into());
            insert_connection(tx, &c)?;
            Ok(("connection", c.id.clone(), to_json(&c)))
        },
    )
    .map_err(open_err)?;
    let flows = replay(
        &mut conn,
        &mut appender,
        "udp_flows",
        &left.flows,
        |f| &f.id,
        |tx, mut f| {
            f.ended
                .get_or_insert_with(|| "the agent stopped before the flow ended".into());
            super::flows::upsert(tx, &f)?;
            Ok(("udp_flow", f.id.clone(), to_json(&f)))
        },
    )
    .map_err(open_err)?;
    if connections + flows > 0 {
        tracing::warn!(
            connections,
            flows,
            "recorded from the journal of an agent that stopped uncleanly"
        );
    }
    for segment in old {
        let _ = std::fs::remove_file(segment);
    }
    let journal = Arc::new(journal);
    let (tx, rx) = queue::bounded(capacity, batch_size);
    let healthy = Arc::new(AtomicBool::new(true));
    let stopping = Arc::new(AtomicBool::new(false));
    let checkpointed = checkpoint::latest(&conn).map_err(open_err)?;
    let writer = Writer {
        head: appender.head(),
        signer,
        shipping,
        checkpointed: checkpointed.map_or((0, 0), |c| (c.seq, c.records)),
        next_checkpoint: Instant::now(),
        conn,
        path: path.to_owned(),
        rx,
        flush_interval,
        retention,
        next_prune: Instant::now(),
        next_size: Instant::now(),
        healthy: healthy.clone(),
        stopping: stopping.clone(),
        metrics: metrics.clone(),
        journal: journal.clone(),
        retired: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("tollgate-recorder".into())
        .spawn(move || writer.run())
        .map_err(RecordError::Spawn)?;
    Ok((
        Recorder {
            tx,
            healthy,
            metrics,
            journal,
            durable,
        },
        WriterHandle {
            thread: Some(thread),
            stopping,
        },
    ))
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    rx: queue::Receiver,
    flush_interval: Duration,
    retention: Option<Duration>,
    next_prune: Instant,
    next_size: Instant,
    healthy: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    metrics: Arc<RecordMetrics>,
    journal: Arc<Journal>,
    retired: Vec<Retired>,
    /// The chain's head as committed.
    head: Head,
    signer: Option<Signer>,
    shipping: bool,
    /// The last checkpoint: its number and the records it covered.
    checkpointed: (i64, i64),
    next_checkpoint: Instant,
}

/// A chain entry's kind, record id and content.
type Chained = (&'static str, String, String);

/// Inserts the journal's rows that `table` lacks (by id), each marked by `cut` as cut
/// by the agent's stop, and chains them. Returns how many were missing.
fn replay<T: Clone>(
    conn: &mut Connection,
    appender: &mut Appender,
    table: &str,
    rows: &[T],
    id: impl Fn(&T) -> &str,
    cut: impl Fn(&rusqlite::Transaction<'_>, T) -> rusqlite::Result<Chained>,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let mut recovered = 0;
    for row in rows {
        let exists: bool = tx.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {table} WHERE id = ?1)"),
            params![id(row)],
            |r| r.get(0),
        )?;
        if !exists {
            let (kind, record_id, body) = cut(&tx, row.clone())?;
            appender.append(&tx, now_ms(), kind, &record_id, &body)?;
            recovered += 1;
        }
    }
    tx.commit()?;
    Ok(recovered)
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::new();
        let idle = self
            .retention
            .map_or(SIZE_EVERY, |r| retention::interval(r).min(SIZE_EVERY));
        let mut priority = super::priority::Priority::new(self.rx.capacity());
        // Gather for up to one flush interval: one transaction per batch, not per
        // record. Someone waiting for a flush ends the gathering at once.
        while self.rx.next_batch(&mut batch, self.flush_interval, idle) {
            priority.follow(self.rx.backlog());
            if !batch.is_empty() {
                self.metrics.queue_depth.sub(batch.len() as i64);
                self.write_with_retry(&batch);
                for event in batch.drain(..) {
                    match event {
                        RecordEvent::Flush(done) => {
                            let _ = done.try_send(());
                        }
                        RecordEvent::Committed(done) => {
                            let _ = done.send(());
                        }
                        _ => {}
                    }
                }
                match self.journal.rotate_if_large() {
                    Ok(Some(retired)) => self.retired.push(retired),
                    Ok(None) => {}
                    Err(error) => tracing::error!(%error, "rotating the connection journal"),
                }
            }
            self.housekeeping();
        }
        // The last records are signed before the agent goes.
        self.checkpoint();
        // A clean stop: everything queued is committed (or reported lost, and then the
        // journal stays for the next start).
        if self.healthy.load(Ordering::Relaxed) {
            self.journal.remove_all();
        }
    }

    /// Between batches: prunes what is past the retention (a bounded amount at a time)
    /// and measures the store.
    fn housekeeping(&mut self) {
        let now_instant = Instant::now();
        if now_instant >= self.next_checkpoint {
            self.checkpoint();
        }
        self.retired.retain(|segment| {
            if segment.is_due(now_instant) {
                segment.remove();
                false
            } else {
                true
            }
        });
        let now = Instant::now();
        if let Some(retention) = self.retention
            && now >= self.next_prune
        {
            let cutoff =
                now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            let mut more = false;
            // Chain entries go once shipped (when shipping), never the newest.
            let shipped = if self.shipping {
                self.conn
                    .query_row("SELECT upto FROM shipped WHERE what = 'records'", [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .unwrap_or(0)
            } else {
                i64::MAX
            };
            let chain_floor = shipped.min(self.head.seq - 1);
            for _ in 0..PRUNE_CHUNKS {
                match retention::prune(&mut self.conn, cutoff, chain_floor) {
                    Ok(pruned) => {
                        for (kind, rows) in [
                            ("statement", pruned.statements),
                            ("connection", pruned.connections),
                            ("job", pruned.jobs),
                            ("audit", pruned.audit),
                            ("event", pruned.events),
                            ("dns_query", pruned.dns),
                            ("udp_flow", pruned.udp_flows),
                            ("unix_connect", pruned.unix_connects),
                            ("chain", pruned.chain),
                        ] {
                            if rows > 0 {
                                self.metrics.pruned.with_label_values(&[kind]).inc_by(rows);
                            }
                        }
                        more = pruned.more;
                        if !more {
                            break;
                        }
                    }
                    Err(error) => {
                        self.metrics.prune_failures.inc();
                        tracing::warn!(path = %self.path.display(), %error, "pruning expired records failed; will retry");
                        break;
                    }
                }
            }
            // A backlog continues after the next batch; otherwise wait an interval.
            self.next_prune = if more {
                now
            } else {
                now + retention::interval(retention)
            };
            self.next_size = now;
        }
        if now >= self.next_size {
            if let Ok(bytes) = retention::store_bytes(&self.conn) {
                self.metrics.store_bytes.set(bytes);
            }
            self.next_size = now + SIZE_EVERY;
        }
    }

    /// Signs the chain's head when it moved since the last checkpoint (and a key is
    /// configured); the next one is due an interval later.
    fn checkpoint(&mut self) {
        let Some(signer) = &self.signer else {
            return;
        };
        self.next_checkpoint = Instant::now() + signer.interval;
        let (seq, records) = self.checkpointed;
        if self.head.seq == records {
            return;
        }
        let cp = Checkpoint::sign(&signer.key, &signer.host, seq + 1, now_ms(), self.head);
        match cp.store(&self.conn) {
            Ok(()) => {
                self.checkpointed = (cp.seq, cp.records);
                self.metrics.checkpoints.inc();
            }
            Err(error) => {
                self.metrics.failures.inc();
                tracing::error!(%error, "storing a checkpoint of the record chain failed; will retry");
            }
        }
    }

    fn write_with_retry(&mut self, batch: &[RecordEvent]) {
        let mut attempts_while_stopping = 0;
        loop {
            let mut appender = Appender::new(self.head);
            match write_batch(&mut self.conn, batch, &mut appender) {
                Ok(()) => {
                    self.head = appender.head();
                    let records = batch.iter().filter(|e| !e.is_marker()).count();
                    self.metrics.written.inc_by(records as u64);
                    self.healthy.store(true, Ordering::Relaxed);
                    return;
                }
                Err(error) => {
                    self.metrics.failures.inc();
                    self.healthy.store(false, Ordering::Relaxed);
                    tracing::error!(
                        path = %self.path.display(),
                        %error,
                        records = batch.len(),
                        "recording write failed; will retry"
                    );
                    if self.stopping.load(Ordering::Relaxed) {
                        attempts_while_stopping += 1;
                        if attempts_while_stopping >= 3 {
                            self.metrics.dropped.inc_by(batch.len() as u64);
                            tracing::error!(
                                records = batch.len(),
                                "recording writer stopping; records lost"
                            );
                            return;
                        }
                    }
                    std::thread::sleep(RETRY_AFTER);
                }
            }
        }
    }
}
