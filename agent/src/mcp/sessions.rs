//! MCP sessions, across the connections of a job: a session's requests and its answers
//! may travel on different connections (the legacy SSE transport answers a POST on the
//! GET stream; a streamable-HTTP client pools connections), so what the agent remembers
//! of a session (the tools it listed, the requests awaiting an answer, the stream that
//! carries answers) is kept here, by job, destination and session.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::tools::Tools;
use crate::record::{RecordEvent, Recorder, StatementRecord};

/// Sessions kept per agent; past it the least recently used are forgotten.
const CAPACITY: usize = 4096;
/// A session unused this long is forgotten.
const IDLE: Duration = Duration::from_secs(3600);
/// Requests awaiting an answer per session; past it the oldest are recorded unanswered.
const PENDING: usize = 1024;

/// Which session: the job, the destination, and the session's own name (the
/// `Mcp-Session-Id` of streamable HTTP, the message endpoint of the SSE transport, ""
/// for a server that keeps no session).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub job: Option<Arc<str>>,
    pub destination: SocketAddr,
    pub id: String,
}

/// A request awaiting its answer (a `tools/call` or a `tools/list`, as its record's
/// `mcp.method` says): its record, completed when the answer comes.
pub struct Pending {
    pub record: Box<StatementRecord>,
    pub started: Instant,
}

impl Pending {
    /// Whether it is a `tools/list`.
    pub fn is_listing(&self) -> bool {
        self.record
            .mcp
            .as_ref()
            .is_some_and(|m| m.method == "tools/list")
    }

    /// Its record, ended: with its duration, and `error` if it failed.
    pub fn ended(mut self, error: Option<String>) -> Box<StatementRecord> {
        self.record.error = error;
        self.record.duration_us = Some(self.started.elapsed().as_micros() as u64);
        self.record
    }
}

#[derive(Default)]
pub struct State {
    pub tools: Tools,
    pending: HashMap<String, Pending>,
    order: std::collections::VecDeque<String>,
}

impl State {
    /// Remembers a request by its id; returns those that will get no answer now, and
    /// why: the oldest, if the session has too many, and one with the same id.
    pub fn await_answer(&mut self, id: String, pending: Pending) -> Vec<(Pending, &'static str)> {
        let mut lost = Vec::new();
        if self.pending.len() >= PENDING
            && let Some(oldest) = self.order.pop_front()
            && let Some(evicted) = self.pending.remove(&oldest)
        {
            lost.push((
                evicted,
                "no answer came before the session had too many requests in flight",
            ));
        }
        match self.pending.insert(id.clone(), pending) {
            None => self.order.push_back(id),
            Some(replaced) => lost.push((
                replaced,
                "another request with the same id was sent before its answer came",
            )),
        }
        lost
    }

    /// The request an answer with `id` answers.
    pub fn answered(&mut self, id: &str) -> Option<Pending> {
        let pending = self.pending.remove(id)?;
        self.order.retain(|k| k != id);
        Some(pending)
    }

    /// Every request still awaiting an answer (the session is going away).
    pub fn drain(&mut self) -> Vec<Pending> {
        self.order.clear();
        self.pending.drain().map(|(_, p)| p).collect()
    }
}

/// One session.
pub struct Session {
    pub key: SessionKey,
    pub state: Mutex<State>,
    /// The legacy SSE transport's stream, where answers the agent makes (a refusal) are
    /// sent: events to add to it.
    stream: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    used: Mutex<Instant>,
    recorder: Option<Recorder>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for pending in state.drain() {
            let why = "no answer came before the agent forgot the session";
            recorder.record(RecordEvent::Statement(pending.ended(Some(why.to_owned()))));
        }
    }
}

impl Session {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The SSE stream of this session now carries `sender`'s events.
    pub fn attach_stream(&self, sender: mpsc::UnboundedSender<Bytes>) {
        *self.stream.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
    }

    /// Whether answers of this session go on an SSE stream (the legacy transport).
    pub fn has_stream(&self) -> bool {
        self.stream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    /// Adds an event to the session's stream; false if it has none (or it closed).
    pub fn send(&self, event: Bytes) -> bool {
        self.stream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|s| s.send(event).is_ok())
    }
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<SessionKey, Arc<Session>>>,
    /// Where a forgotten session's unanswered requests are recorded.
    recorder: Option<Recorder>,
}

impl Sessions {
    pub fn new(recorder: Recorder) -> Self {
        Self {
            map: Mutex::default(),
            recorder: Some(recorder),
        }
    }

    /// The session `key`, made if it is new.
    /// (A session forgotten to make room, or idle, records its requests still awaiting
    /// an answer as unanswered when the last holder lets it go.)
    pub fn get(&self, key: SessionKey) -> Arc<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(session) = map.get(&key) {
            *session.used.lock().unwrap_or_else(|e| e.into_inner()) = now;
            return session.clone();
        }
        if map.len() >= CAPACITY {
            map.retain(|_, s| {
                now.duration_since(*s.used.lock().unwrap_or_else(|e| e.into_inner())) < IDLE
            });
            if map.len() >= CAPACITY
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, s)| *s.used.lock().unwrap_or_else(|e| e.into_inner()))
                    .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let session = Arc::new(Session {
            key: key.clone(),
            state: Mutex::new(State::default()),
            stream: Mutex::new(None),
            used: Mutex::new(now),
            recorder: self.recorder.clone(),
        });
        map.insert(key, session.clone());
        session
    }

    /// The session `key` if the agent knows it (a legacy SSE transport's endpoint).
    pub fn find(&self, key: &SessionKey) -> Option<Arc<Session>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> SessionKey {
        SessionKey {
            job: Some(Arc::from("j")),
            destination: "127.0.0.1:1".parse().unwrap(),
            id: id.to_owned(),
        }
    }

    #[test]
    fn sessions_are_shared_by_key() {
        let sessions = Sessions::default();
        let a = sessions.get(key("a"));
        assert!(Arc::ptr_eq(&a, &sessions.get(key("a"))));
        assert!(sessions.find(&key("b")).is_none());
        let _ = sessions.get(key("b"));
        assert_eq!(sessions.len(), 2);
    }

    #[test]
    fn answers_find_their_requests_and_too_many_push_out_the_oldest() {
        let mut state = State::default();
        let call = || Pending {
            record: Box::default(),
            started: Instant::now(),
        };
        for i in 0..PENDING {
            assert!(state.await_answer(i.to_string(), call()).is_empty());
        }
        assert_eq!(state.await_answer("new".to_owned(), call()).len(), 1);
        assert!(state.answered("0").is_none(), "pushed out");
        assert!(state.answered("new").is_some());
        assert!(state.answered("new").is_none(), "answered once");
        assert_eq!(state.drain().len(), PENDING - 1);
        // An id used again before its answer: the first request is lost, and said so.
        let mut state = State::default();
        assert!(state.await_answer("again".to_owned(), call()).is_empty());
        let lost = state.await_answer("again".to_owned(), call());
        assert_eq!(lost.len(), 1);
        assert!(lost[0].1.contains("same id"));
        assert_eq!(state.drain().len(), 1);
    }

    #[test]
    fn a_stream_carries_events_while_it_is_open() {
        let session = Sessions::default().get(key("s"));
        assert!(!session.has_stream());
        assert!(!session.send(Bytes::from_static(b"x")));
        let (tx, mut rx) = mpsc::unbounded_channel();
        session.attach_stream(tx);
        assert!(session.has_stream());
        assert!(session.send(Bytes::from_static(b"x")));
        assert_eq!(rx.try_recv().unwrap(), Bytes::from_static(b"x"));
        drop(rx);
        assert!(!session.has_stream());
    }
}
