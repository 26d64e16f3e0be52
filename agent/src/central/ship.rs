//! The shipper: a thread of its own that sends the local record chain to the central
//! store, in order and in batches, and then the checkpoints that cover what it sent.
//!
//! At least once, exactly once in effect: a batch is inserted in one transaction that
//! skips rows the store already has (by host, position and time), and the local position
//! moves only after that transaction commits. While the store is down the chain waits on
//! local disk, through agent restarts, and the lag and backlog are measured all along.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{OptionalExtension as _, params};
use tokio_postgres::Client;

use super::{CentralError, CentralMetrics, Target, schema};
use crate::record::{Gate, chain, checkpoint, now_ms};

/// How often the shipper looks for new records when it has caught up.
const POLL: Duration = Duration::from_millis(100);
/// The longest wait between two attempts to reach a store that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often the backlog's bytes are measured (a scan of the backlog).
const BYTES_EVERY: Duration = Duration::from_secs(5);
/// How often `central.prune_older_than` prunes (the first a minute after start).
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long a stopping agent keeps trying to ship what is left.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// What the shipper needs.
pub struct Options {
    pub target: Target,
    /// The local recording store.
    pub db: PathBuf,
    pub host: String,
    pub batch_size: usize,
    pub max_lag: Option<Duration>,
    /// `central.prune_older_than`: prune the central store once a day.
    pub prune_older_than: Option<Duration>,
    pub gate: Gate,
    pub metrics: Arc<CentralMetrics>,
}

/// The running shipper; `shutdown` ships what it can (briefly) and stops it.
pub struct ShipperHandle {
    thread: Option<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl ShipperHandle {
    /// Call after the recording writer has stopped: its last records and checkpoint are
    /// shipped if the store takes them within a few seconds, else they wait for the next
    /// start.
    pub fn shutdown(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the central shipper panicked");
        }
    }
}

pub fn spawn(options: Options) -> std::io::Result<ShipperHandle> {
    let stopping = Arc::new(AtomicBool::new(false));
    let stop = stopping.clone();
    let thread = crate::runtime_thread::spawn("tollgate-shipper".into(), move || {
        Shipper::new(options, stop).run()
    })?;
    Ok(ShipperHandle {
        thread: Some(thread),
        stopping,
    })
}

struct Shipper {
    options: Options,
    stopping: Arc<AtomicBool>,
    local: Option<rusqlite::Connection>,
    client: Option<Client>,
    /// The last chain position and checkpoint the store has.
    shipped: i64,
    shipped_checkpoint: i64,
    /// Months whose partition exists.
    months: std::collections::HashSet<i64>,
    backoff: Duration,
    last_error: Option<String>,
    next_bytes: Instant,
    next_prune: Instant,
}

impl Shipper {
    fn new(options: Options, stopping: Arc<AtomicBool>) -> Self {
        Self {
            options,
            stopping,
            local: None,
            client: None,
            shipped: 0,
            shipped_checkpoint: 0,
            months: Default::default(),
            backoff: Duration::from_millis(500),
            last_error: None,
            next_bytes: Instant::now(),
            next_prune: Instant::now() + Duration::from_secs(60),
        }
    }

    async fn run(mut self) {
        let mut drain_until = None;
        // Attempts since the agent began to stop.
        let mut attempts = 0u32;
        // Whether the last attempt failed.
        let failed = loop {
            if self.stopping.load(Ordering::Relaxed) && drain_until.is_none() {
                drain_until = Some(Instant::now() + DRAIN_FOR);
            }
            attempts += u32::from(drain_until.is_some());
            let caught_up = match self.step().await {
                Ok(caught_up) => {
                    self.backoff = Duration::from_millis(500);
                    caught_up
                }
                Err(error) => {
                    self.failed(error);
                    match drain_until {
                        // Stopping: the next attempt still waits its turn, so that an
                        // agent going down does not hammer a store that is down.
                        Some(until) => {
                            let left = until.saturating_duration_since(Instant::now());
                            if left.is_zero() {
                                break true;
                            }
                            tokio::time::sleep(self.backoff.min(left)).await;
                        }
                        None => self.sleep(self.backoff).await,
                    }
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if let Some(until) = drain_until
                && (caught_up || Instant::now() >= until)
            {
                break false;
            }
            if caught_up {
                self.sleep(POLL).await;
            }
        };
        if failed {
            tracing::warn!(
                attempts,
                "stopping with records the central store has not taken; they stay on local \
                 disk and are shipped after the next start"
            );
        }
        self.measure();
    }

    /// Sleeps `for_`, waking early when the agent stops.
    async fn sleep(&self, for_: Duration) {
        let until = Instant::now() + for_;
        while Instant::now() < until && !self.stopping.load(Ordering::Relaxed) {
            tokio::time::sleep(POLL.min(until - Instant::now())).await;
        }
    }

    fn failed(&mut self, error: CentralError) {
        let stage = match &error {
            CentralError::Connect { .. } | CentralError::Tls(_) | CentralError::Password { .. } => {
                "connect"
            }
            CentralError::NoSchema | CentralError::SchemaVersion { .. } => "schema",
            CentralError::Local(_) => "local",
            _ => "ship",
        };
        self.options.metrics.error(stage);
        self.options.metrics.up.set(0);
        let text = error.to_string();
        // The same error again is not logged again, so a long outage is one line.
        if self.last_error.as_deref() != Some(&text) {
            tracing::error!(error = %text, "shipping records to the central store failed; they wait on local disk and are retried");
            self.last_error = Some(text);
        }
        self.client = None;
        self.measure();
    }

    fn local(&mut self) -> Result<&rusqlite::Connection, CentralError> {
        if self.local.is_none() {
            let conn = open_local(&self.options.db)?;
            self.shipped = position(&conn, "records")?;
            self.shipped_checkpoint = position(&conn, "checkpoints")?;
            self.local = Some(conn);
        }
        self.local
            .as_ref()
            .ok_or(CentralError::Local(rusqlite::Error::InvalidQuery))
    }

    async fn connect(&mut self) -> Result<(), CentralError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let client = self.options.target.connect().await?;
        schema::check(&client).await?;
        let central: Option<i64> = client
            .query_one(
                "SELECT max(seq) FROM tollgate.records WHERE host = $1",
                &[&self.options.host],
            )
            .await?
            .get(0);
        let head = chain::load_head(self.local()?)?.seq;
        if let Some(central) = central
            && central > head
        {
            return Err(CentralError::Url(format!(
                "the central store holds records of host {:?} up to #{central}, beyond this \
                 host's chain (#{head}): is another agent shipping under this host name, or was \
                 the local store replaced? Set central.host to a name of its own",
                self.options.host
            )));
        }
        if self.last_error.take().is_some() {
            tracing::info!(
                url = self.options.target.shown(),
                "central store reachable again"
            );
        }
        self.options.metrics.up.set(1);
        self.client = Some(client);
        Ok(())
    }

    /// Ships one batch of records (and the checkpoints it completes). True when nothing
    /// was left to ship.
    async fn step(&mut self) -> Result<bool, CentralError> {
        self.local()?;
        self.measure();
        self.connect().await?;
        let (shipped, size) = (self.shipped, self.options.batch_size);
        let batch = chain::read(self.local()?, shipped, size)?;
        let full = batch.len() == size;
        if let Some(last) = batch.last() {
            let last = last.seq;
            self.ship_records(&batch).await?;
            self.shipped = last;
            set_position(self.local()?, "records", last)?;
            self.options.metrics.shipped("records", batch.len());
        }
        let after = self.shipped_checkpoint;
        let checkpoints: Vec<_> = checkpoint::read(self.local()?, after)?
            .into_iter()
            .take_while(|c| c.records <= self.shipped)
            .collect();
        if let Some(last) = checkpoints.last() {
            let last = last.seq;
            self.ship_checkpoints(&checkpoints).await?;
            self.shipped_checkpoint = last;
            set_position(self.local()?, "checkpoints", last)?;
            self.options
                .metrics
                .shipped("checkpoints", checkpoints.len());
        }
        self.measure();
        self.prune_if_due().await;
        Ok(!full)
    }

    /// `central.prune_older_than`, once a day.
    async fn prune_if_due(&mut self) {
        let Some(older_than) = self.options.prune_older_than else {
            return;
        };
        if Instant::now() < self.next_prune {
            return;
        }
        self.next_prune = Instant::now() + PRUNE_EVERY;
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let before = now_ms().saturating_sub(older_than.as_millis() as i64);
        match super::admin::prune(client, before).await {
            Ok(pruned) => {
                let records: u64 = pruned.iter().map(|p| p.records).sum();
                tracing::info!(
                    records,
                    hosts = pruned.len(),
                    "pruned the central store (central.prune_older_than)"
                );
            }
            Err(error) => {
                tracing::error!(%error, "pruning the central store failed; retried tomorrow")
            }
        }
    }

    async fn ship_records(&mut self, batch: &[chain::Entry]) -> Result<(), CentralError> {
        let client = self.client.as_mut().ok_or(CentralError::NoSchema)?;
        for entry in batch {
            let (start, _, _) = schema::month_of(entry.at);
            if self.months.insert(start) {
                schema::ensure_partition(client, entry.at).await?;
            }
        }
        let mut seqs = Vec::with_capacity(batch.len());
        let mut ats = Vec::with_capacity(batch.len());
        let mut kinds = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        let mut bodies = Vec::with_capacity(batch.len());
        let mut prevs = Vec::with_capacity(batch.len());
        let mut hashes = Vec::with_capacity(batch.len());
        for e in batch {
            seqs.push(e.seq);
            ats.push(e.at);
            kinds.push(e.kind.as_str());
            ids.push(e.record_id.as_str());
            bodies.push(e.body.as_str());
            prevs.push(&e.prev[..]);
            hashes.push(&e.hash[..]);
        }
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO tollgate.records (host, seq, at, kind, record_id, body, prev, hash) \
             SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], \
             $6::text[], $7::bytea[], $8::bytea[]) ON CONFLICT DO NOTHING",
            &[
                &self.options.host,
                &seqs,
                &ats,
                &kinds,
                &ids,
                &bodies,
                &prevs,
                &hashes,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ship_checkpoints(
        &mut self,
        checkpoints: &[checkpoint::Checkpoint],
    ) -> Result<(), CentralError> {
        let client = self.client.as_mut().ok_or(CentralError::NoSchema)?;
        let tx = client.transaction().await?;
        for c in checkpoints {
            tx.execute(
                "INSERT INTO tollgate.checkpoints (host, seq, at, records, head, signature) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &c.host,
                    &c.seq,
                    &c.at,
                    &c.records,
                    &&c.head[..],
                    &c.signature,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The lag (age of the oldest unshipped record) and the backlog, and the gate that
    /// `central.max_lag` sets from them.
    fn measure(&mut self) {
        let Some(local) = self.local.as_ref() else {
            return;
        };
        let shipped = self.shipped;
        let oldest: Option<i64> = local
            .query_row(
                "SELECT at FROM chain WHERE seq > ?1 ORDER BY seq LIMIT 1",
                params![shipped],
                |r| r.get(0),
            )
            .optional()
            .ok()
            .flatten();
        let head = chain::load_head(local).map_or(shipped, |h| h.seq);
        let lag = oldest.map_or(Duration::ZERO, |at| {
            Duration::from_millis(now_ms().saturating_sub(at).max(0) as u64)
        });
        let metrics = &self.options.metrics;
        metrics.lag_seconds.set(lag.as_secs_f64());
        metrics.backlog_records.set(head.saturating_sub(shipped));
        if Instant::now() >= self.next_bytes || head == shipped {
            let bytes: i64 = local
                .query_row(
                    "SELECT coalesce(sum(length(body)), 0) FROM chain WHERE seq > ?1",
                    params![shipped],
                    |r| r.get(0),
                )
                .unwrap_or(0);
            metrics.backlog_bytes.set(bytes);
            self.next_bytes = Instant::now() + BYTES_EVERY;
        }
        let lagging = self.options.max_lag.is_some_and(|max| lag > max);
        metrics.refusing.set(i64::from(lagging));
        self.options.gate.set_lagging(lagging);
    }
}

fn open_local(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// How far `what` (records, checkpoints) has been shipped.
fn position(conn: &rusqlite::Connection, what: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT upto FROM shipped WHERE what = ?1",
            params![what],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

fn set_position(conn: &rusqlite::Connection, what: &str, upto: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO shipped (what, upto) VALUES (?1, ?2) \
         ON CONFLICT (what) DO UPDATE SET upto = excluded.upto",
        params![what, upto],
    )?;
    Ok(())
}
