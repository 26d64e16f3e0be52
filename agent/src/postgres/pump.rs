//! One direction of a session's relay after its startup: read what the side sent, hand
//! each whole message to the tracker (which writes what goes on, as it is or changed),
//! write that to the other side, and settle the direction's records.
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tollgate_pgwire::{self as wire, WireError, backend, frontend};
use tollgate_policy::SqlContext;

use tokio::sync::Notify;

use crate::approvals::Ticket;

use super::{
    error::{SessionError, Violation},
    session::{Context, finish},
    tracker::{Flow, Tracker},
};
use crate::{
    proxy::handler::{Progress, Side},
    record::{RecordEvent, StatementRecord},
};

const READ_CHUNK: usize = 16 * 1024;
/// How long a statement waits for its record under `recording.durable`.
const DURABLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A buffer of bytes read from one side, from which whole messages are taken.
pub(super) struct Inbox {
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
}

impl Inbox {
    pub(super) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
        }
    }

    /// Reads more; Ok(0) at EOF.
    pub(super) async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> std::io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > READ_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Into the spare capacity: no zeroing of a fresh chunk per read.
        self.buf.reserve(READ_CHUNK);
        reader.read_buf(&mut self.buf).await
    }

    /// The next whole message, if there is one.
    pub(super) fn next(
        &mut self,
        tagged: bool,
        max: usize,
    ) -> Result<Option<std::ops::Range<usize>>, WireError> {
        let rest = &self.buf[self.start..];
        let len = if tagged {
            wire::tagged_len(rest, max)?
        } else {
            wire::startup_len(rest, max)?
        };
        Ok(len.map(|len| {
            let range = self.start..self.start + len;
            self.start += len;
            range
        }))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }
}

/// What differs between the two directions.
pub(super) trait Direction {
    /// The side whose bytes this direction reads.
    const FROM: Side;

    /// Takes one whole message from `raw` into the tracker, writing what goes on to
    /// `out`; or holds it (nothing of it goes on yet).
    fn handle(
        &mut self,
        tracker: &mut Tracker,
        ctx: &Context,
        sql: &SqlContext,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Flow, WireError>;

    /// After a batch of messages, under the tracker's lock: takes what must be settled,
    /// and what else goes on after the batch.
    fn end_batch(&mut self, tracker: &mut Tracker, out: &mut Vec<u8>);

    /// A message was held: asks for it (and tells the client); the pump waits for the
    /// ticket.
    async fn hold(
        &mut self,
        _tracker: &Mutex<Tracker>,
        _ctx: &Context,
        _wake: &Notify,
    ) -> Option<Ticket> {
        None
    }

    /// After a batch, without the lock, before its bytes are written on: records.
    async fn settle(&mut self, ctx: &Context, progress: &Progress) -> Result<(), SessionError>;

    /// The side closed with `left` bytes of a message unread.
    fn closed(left: bool) -> Result<(), SessionError>;
}

/// Client to server: statements are classified and decided here.
#[derive(Default)]
pub(super) struct ToServer {
    /// `recording.durable`: the batch's statements, committed before its bytes go on.
    opened: Vec<StatementRecord>,
}

impl Direction for ToServer {
    const FROM: Side = Side::Client;

    fn handle(
        &mut self,
        tracker: &mut Tracker,
        ctx: &Context,
        sql: &SqlContext,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Flow, WireError> {
        let parsed = frontend::parse(raw)?;
        Ok(tracker.frontend(ctx, sql, parsed, raw, out))
    }

    fn end_batch(&mut self, tracker: &mut Tracker, _: &mut Vec<u8>) {
        self.opened = tracker.take_opened();
    }

    /// Asks the reviewers and tells the client (a NoticeResponse, at the next boundary
    /// of the server's messages).
    async fn hold(
        &mut self,
        tracker: &Mutex<Tracker>,
        ctx: &Context,
        wake: &Notify,
    ) -> Option<Ticket> {
        let lock = || tracker.lock().unwrap_or_else(|e| e.into_inner());
        let request = lock().take_held()?;
        let what = request.record.kind.clone().unwrap_or_default();
        let ticket = ctx.approvals.ask(request).await;
        let id = ticket.id().to_owned();
        let notice = format!(
            "tollgate: this {what} statement waits for approval (request {id}, up to {})",
            humantime::format_duration(ctx.approvals.timeout())
        );
        let hint = format!(
            "A reviewer runs `tollgate approvals approve {id}` or `tollgate approvals deny {id} --reason ...`."
        );
        {
            let mut tracker = lock();
            let bytes = backend::notice_response_bytes(
                "01000",
                &tracker.encode(&notice),
                None,
                Some(&tracker.encode(&hint)),
            );
            tracker.tell_client(&bytes);
        }
        wake.notify_one();
        Some(ticket)
    }

    async fn settle(&mut self, ctx: &Context, _: &Progress) -> Result<(), SessionError> {
        // recording.durable: nothing goes to the server before its statements' rows are
        // committed (with those of every other session waiting now).
        if self.opened.is_empty() {
            return Ok(());
        }
        let started = self
            .opened
            .drain(..)
            .map(|record| RecordEvent::StatementStarted(Box::new(record)));
        if ctx.recorder.commit(started, DURABLE_TIMEOUT).await {
            Ok(())
        } else {
            Err(SessionError::NotDurable(DURABLE_TIMEOUT))
        }
    }

    fn closed(left: bool) -> Result<(), SessionError> {
        if left {
            return Err(SessionError::Violation {
                side: Side::Client,
                violation: Violation::Truncated,
            });
        }
        Ok(())
    }
}

/// Server to client: results are masked here, and statements complete.
#[derive(Default)]
pub(super) struct ToClient {
    finished: Vec<StatementRecord>,
}

impl Direction for ToClient {
    const FROM: Side = Side::Server;

    fn handle(
        &mut self,
        tracker: &mut Tracker,
        ctx: &Context,
        sql: &SqlContext,
        raw: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Flow, WireError> {
        let parsed = backend::parse(raw)?;
        tracker.backend(ctx, sql, parsed, raw, out, &mut self.finished);
        Ok(Flow::Continue)
    }

    fn end_batch(&mut self, tracker: &mut Tracker, out: &mut Vec<u8>) {
        // Tollgate's own messages go between the server's whole messages.
        tracker.take_to_client(out);
    }

    async fn settle(&mut self, ctx: &Context, progress: &Progress) -> Result<(), SessionError> {
        for record in self.finished.drain(..) {
            finish(ctx, progress, record);
        }
        Ok(())
    }

    fn closed(_: bool) -> Result<(), SessionError> {
        Ok(())
    }
}

/// Relays one direction until its side closes (Ok) or the session must end (Err).
/// `progress` is fed with every byte read, as it is read.
#[expect(
    clippy::too_many_arguments,
    reason = "one direction of the relay and what it shares"
)]
pub(super) async fn pump<D, R, W>(
    mut direction: D,
    reader: &mut R,
    writer: &mut W,
    mut inbox: Inbox,
    tracker: &Mutex<Tracker>,
    ctx: &Context,
    sql: &SqlContext,
    progress: &Progress,
    wake: &Notify,
) -> Result<(), SessionError>
where
    D: Direction,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(READ_CHUNK);
    // Armed once, not per read: re-armed only after it fired.
    let mut told = std::pin::pin!(wake.notified());
    loop {
        let mut held = false;
        let malformed = {
            let mut tracker = tracker.lock().unwrap_or_else(|e| e.into_inner());
            // A reload applies from the client's next message on (an Execute of a
            // statement prepared before it included).
            tracker.refresh(ctx, sql);
            let malformed = loop {
                let range = match inbox.next(true, ctx.max_message) {
                    Ok(Some(range)) => range,
                    Ok(None) => break None,
                    Err(error) => break Some(error),
                };
                let msg = &inbox.buf[range.clone()];
                match direction.handle(&mut tracker, ctx, sql, msg, &mut out) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Hold) => {
                        // It (and what follows it) is handled again once decided.
                        inbox.start = range.start;
                        held = true;
                        break None;
                    }
                    Err(error) => break Some(error),
                }
            };
            direction.end_batch(&mut tracker, &mut out);
            malformed
        };
        direction.settle(ctx, progress).await?;
        if let Some(error) = malformed {
            // What was accepted before the bad message still goes on.
            let _ = write_flushed(writer, &out).await;
            return Err(SessionError::Violation {
                side: D::FROM,
                violation: Violation::Malformed(error),
            });
        }
        if !out.is_empty() {
            // Flushed, not only written: a TLS stream may keep records it could not send
            // at once, and nothing else writes before the next read.
            write_flushed(writer, &out)
                .await
                .map_err(|source| SessionError::Relay {
                    from: D::FROM,
                    source,
                })?;
            out.clear();
        }
        if held {
            if let Some(ticket) = direction.hold(tracker, ctx, wake).await {
                // While it waits, what the client sends is kept (handled in order once
                // decided), and a client that hangs up abandons the request.
                let decided = ticket.wait();
                tokio::pin!(decided);
                let outcome = loop {
                    tokio::select! {
                        outcome = &mut decided => break Some(outcome),
                        read = inbox.fill(reader) => match read {
                            Ok(0) | Err(_) => break None,
                            Ok(n) => progress.up(n as u64),
                        },
                    }
                };
                let Some(outcome) = outcome else {
                    let _ = writer.shutdown().await;
                    return Ok(());
                };
                tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .resolve(outcome);
            }
            continue;
        }
        // The server's direction also wakes for what Tollgate tells the client.
        let read = match D::FROM {
            Side::Server => tokio::select! {
                read = inbox.fill(reader) => Some(read),
                () = &mut told => None,
            },
            Side::Client => Some(inbox.fill(reader).await),
        };
        let Some(read) = read else {
            told.set(wake.notified());
            continue;
        };
        match read {
            Ok(0) => {
                D::closed(!inbox.is_empty())?;
                let _ = writer.shutdown().await;
                return Ok(());
            }
            Ok(n) => match D::FROM {
                Side::Client => progress.up(n as u64),
                Side::Server => progress.down(n as u64),
            },
            Err(source) => {
                return Err(SessionError::Relay {
                    from: D::FROM,
                    source,
                });
            }
        }
    }
}

/// Writes `bytes` and flushes them: a TLS stream accepts what it cannot send at once into
/// its session, and sends it only on a later write or a flush.
pub(super) async fn write_flushed<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}
