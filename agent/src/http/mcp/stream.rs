//! An SSE response of an MCP server, read event by event as it passes: answers are read
//! (and changed where a listing is filtered or a result masked), every other event goes
//! on byte for byte. On the legacy transport the stream's `endpoint` event names the
//! session, and the agent's own answers (refusals) are added to the stream.
use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::answers::Answering;
use crate::mcp::{
    jsonrpc::Batch,
    sessions::SessionKey,
    sse::{self, Event, SseReader},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(super) struct SseFilter {
    inner: Incoming,
    reader: SseReader,
    answering: Answering,
    out: VecDeque<Bytes>,
    /// Events the agent adds to a legacy session's stream.
    added: Option<mpsc::UnboundedReceiver<Bytes>>,
    ended: bool,
    /// The stream failed: passed on once what came before it is, and written.
    failed: Option<BoxError>,
    /// A poll has returned Pending since the last bytes (hyper writes them out then).
    yielded: bool,
}

impl SseFilter {
    pub(super) fn new(inner: Incoming, answering: Answering) -> Self {
        Self {
            inner,
            reader: SseReader::new(answering.mcp.config.max_message_size),
            answering,
            out: VecDeque::new(),
            added: None,
            ended: false,
            failed: None,
            yielded: false,
        }
    }

    /// The bytes that carry `event` on.
    fn event(&mut self, event: Event) -> Bytes {
        let Some(data) = event.data.as_deref() else {
            return event.raw;
        };
        match event.kind() {
            "endpoint" => {
                self.endpoint(data);
                event.raw
            }
            "message" => {
                let Ok(mut batch) = Batch::parse(data.as_bytes()) else {
                    return event.raw;
                };
                let mut changed = false;
                for message in &mut batch.messages {
                    changed |= self.answering.answer(message);
                }
                if !changed {
                    return event.raw;
                }
                let data = String::from_utf8(batch.to_bytes()).unwrap_or_default();
                sse::encode(event.event.as_deref(), event.id.as_deref(), &data)
            }
            _ => event.raw,
        }
    }

    /// The legacy transport's first event: where the client POSTs its messages, which
    /// names the session.
    fn endpoint(&mut self, data: &str) {
        let endpoint = endpoint_path(data);
        let shared = &self.answering.shared;
        let session = self.answering.mcp.sessions.get(SessionKey {
            job: shared.ctx.job_id.clone(),
            destination: shared.ctx.destination,
            id: endpoint,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        session.attach_stream(tx);
        self.added = Some(rx);
        self.answering.session = session;
    }

    /// The stream ended: an event cut in the middle is passed on as it came (the client
    /// sees what it would have seen), and the requests it was to answer are recorded so.
    fn ended(&mut self) {
        self.ended = true;
        if let Some(rest) = self.reader.unfinished() {
            self.out.push_back(Bytes::copy_from_slice(rest));
            self.answering.mcp.metrics.malformed.inc();
            self.answering
                .unanswered("the answer's stream ended in the middle of an event");
        }
        // A POST's stream that ended without answering all it was sent.
        self.answering
            .unanswered("the answer's stream ended before the answer came");
        if self.added.is_some() {
            // The legacy transport's stream carried the session's answers: none will come.
            let pending = self.answering.session.state().drain();
            for pending in pending {
                super::calls::unanswered(
                    &self.answering.shared,
                    pending,
                    "the session's stream ended before the answer came",
                );
            }
        }
    }
}

/// The path and query of an endpoint URL (absolute or not).
fn endpoint_path(data: &str) -> String {
    let data = data.trim();
    match data.parse::<http::Uri>() {
        Ok(uri) if uri.scheme().is_some() => uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        _ => data.to_owned(),
    }
}

impl Body for SseFilter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.out.pop_front() {
                this.yielded = false;
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.failed.is_some() && !this.yielded {
                // Once, so that hyper writes what came before the failure: an error
                // right after its bytes would abort the connection with them unsent.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(error) = this.failed.take() {
                return Poll::Ready(Some(Err(error)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(added) = &mut this.added
                && let Poll::Ready(Some(bytes)) = added.poll_recv(cx)
            {
                this.out.push_back(bytes);
                continue;
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.ended(),
                Poll::Ready(Some(Err(error))) => {
                    // What came of the event it cut goes on first, as it would directly.
                    let why = format!("the answer's stream failed: {error}");
                    if let Some(rest) = this.reader.unfinished() {
                        this.out.push_back(Bytes::copy_from_slice(rest));
                    }
                    this.ended = true;
                    this.failed = Some(error.into());
                    this.answering.unanswered(&why);
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match this.reader.push(&data) {
                        Ok(events) => {
                            for event in events {
                                let bytes = this.event(event);
                                this.out.push_back(bytes);
                            }
                        }
                        Err(error) => {
                            this.ended = true;
                            this.answering.mcp.metrics.malformed.inc();
                            let why = format!("the answer's stream: {error}");
                            this.answering.unanswered(&why);
                            return Poll::Ready(Some(Err(why.into())));
                        }
                    },
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }
}

/// A body that fails at once with `why` (an answer that could not be read).
pub(super) fn failed(why: String) -> Failed {
    Failed(Some(why))
}

pub(super) struct Failed(Option<String>);

impl Body for Failed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.get_mut().0.take().map(|why| Err(why.into())))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_are_their_path_and_query() {
        assert_eq!(
            super::endpoint_path("/messages/?session_id=ab"),
            "/messages/?session_id=ab"
        );
        assert_eq!(
            super::endpoint_path("http://127.0.0.1:8000/messages/?session_id=ab\n"),
            "/messages/?session_id=ab"
        );
    }
}
