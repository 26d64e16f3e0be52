//! The queue between the data path and the writer thread. Bounded, never blocking a
//! producer, and quiet: a producer wakes the writer only for the first event of a batch,
//! a full batch, or a flush request. A channel that woke the writer for every event cost
//! a context switch per recorded statement, on hosts where the data path, the database
//! and the clients share two CPUs.
use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::RecordEvent;

/// How long an idle writer sleeps before it looks again (it is woken sooner by events).
const IDLE_WAIT: Duration = Duration::from_millis(200);

struct State {
    events: VecDeque<RecordEvent>,
    /// Live [`Sender`]s; the writer stops when none is left and the queue is empty.
    senders: usize,
    /// A flush request is queued: write without waiting for the batch to fill.
    urgent: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    capacity: usize,
    batch_size: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the queue itself consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The producers' end; clones count as producers.
pub struct Sender(Arc<Shared>);

/// The writer's end.
pub struct Receiver(Arc<Shared>);

pub fn bounded(capacity: usize, batch_size: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            events: VecDeque::new(),
            senders: 1,
            urgent: false,
        }),
        wake: Condvar::new(),
        capacity: capacity.max(1),
        batch_size: batch_size.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Queues `event`, or hands it back (boxed, off the common path) when the queue is
    /// full.
    pub fn push(&self, event: RecordEvent) -> Result<(), Box<RecordEvent>> {
        let urgent = event.is_marker();
        let mut state = self.0.lock();
        if state.events.len() >= self.0.capacity {
            return Err(Box::new(event));
        }
        state.events.push_back(event);
        state.urgent |= urgent;
        let len = state.events.len();
        drop(state);
        if urgent || len == 1 || len == self.0.batch_size {
            self.0.wake.notify_one();
        }
        Ok(())
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(self.0.clone())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            self.0.wake.notify_one();
        }
    }
}

impl Receiver {
    /// The most events the queue holds.
    pub fn capacity(&self) -> usize {
        self.0.capacity
    }

    /// The events queued now (those not yet taken into a batch).
    pub fn backlog(&self) -> usize {
        self.0.lock().events.len()
    }

    /// Waits for the next batch and moves it into `batch`: up to `batch_size` events,
    /// gathered for at most `window` after the first one arrived, and at once when a
    /// flush is queued or the producers are gone. After `idle` without any event it
    /// returns with `batch` empty (the writer has housekeeping). False when every
    /// producer is gone and the queue is empty.
    pub fn next_batch(
        &self,
        batch: &mut Vec<RecordEvent>,
        window: Duration,
        idle: Duration,
    ) -> bool {
        let shared = &*self.0;
        let mut state = shared.lock();
        let idle_until = Instant::now() + idle;
        while state.events.is_empty() {
            if state.senders == 0 {
                return false;
            }
            let left = idle_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            state = shared
                .wake
                .wait_timeout(state, left.min(IDLE_WAIT))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        let deadline = Instant::now() + window;
        while state.events.len() < shared.batch_size && !state.urgent && state.senders > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = shared
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        let n = state.events.len().min(shared.batch_size);
        batch.extend(state.events.drain(..n));
        state.urgent = state.events.iter().any(RecordEvent::is_marker);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;

    fn event(n: u64) -> RecordEvent {
        RecordEvent::JobEnded {
            id: n.to_string(),
            ended_at: n as i64,
            exit: None,
            reason: "test".into(),
        }
    }

    /// An idle timeout no test reaches.
    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn an_idle_writer_gets_an_empty_batch_for_its_housekeeping() {
        let (tx, rx) = bounded(8, 4);
        let mut batch = Vec::new();
        let start = Instant::now();
        assert!(rx.next_batch(
            &mut batch,
            Duration::from_secs(5),
            Duration::from_millis(50)
        ));
        assert!(batch.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(tx);
        assert!(!rx.next_batch(&mut batch, Duration::from_secs(5), LONG));
    }

    #[test]
    fn full_queue_hands_the_event_back_and_batches_keep_order() {
        let (tx, rx) = bounded(3, 2);
        for n in 0..3 {
            assert!(tx.push(event(n)).is_ok());
        }
        assert!(tx.push(event(3)).is_err());
        let mut batch = Vec::new();
        assert!(rx.next_batch(&mut batch, Duration::from_secs(5), LONG));
        assert_eq!(batch.len(), 2, "a full batch is written without waiting");
        assert!(rx.next_batch(&mut batch, Duration::from_millis(10), LONG));
        let ids: Vec<String> = batch
            .iter()
            .map(|e| match e {
                RecordEvent::JobEnded { id, .. } => id.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(ids, ["0", "1", "2"]);
    }

    #[test]
    fn a_flush_ends_the_gathering_at_once() {
        let (tx, rx) = bounded(100, 50);
        tx.push(event(1)).unwrap();
        let (done, _committed) = sync_channel(1);
        tx.push(RecordEvent::Flush(done)).unwrap();
        let started = Instant::now();
        let mut batch = Vec::new();
        assert!(rx.next_batch(&mut batch, Duration::from_secs(30), LONG));
        assert_eq!(batch.len(), 2);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_writer_drains_then_stops_when_every_sender_is_gone() {
        let (tx, rx) = bounded(10, 10);
        let second = tx.clone();
        tx.push(event(1)).unwrap();
        drop(tx);
        second.push(event(2)).unwrap();
        drop(second);
        let mut batch = Vec::new();
        // No producer is left, so the window is not waited out.
        let started = Instant::now();
        assert!(rx.next_batch(&mut batch, Duration::from_secs(30), LONG));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(batch.len(), 2);
        assert!(!rx.next_batch(&mut batch, Duration::from_secs(30), LONG));
    }

    #[test]
    fn a_waiting_writer_is_woken_by_the_first_event() {
        let (tx, rx) = bounded(10, 10);
        let writer = std::thread::spawn(move || {
            let mut batch = Vec::new();
            let more = rx.next_batch(&mut batch, Duration::from_millis(20), LONG);
            (more, batch.len())
        });
        std::thread::sleep(Duration::from_millis(50));
        tx.push(event(1)).unwrap();
        assert_eq!(writer.join().unwrap(), (true, 1));
    }
}
