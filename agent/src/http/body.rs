//! A body that counts the bytes of its data frames as they pass, and reports once when
//! it ends, fails or is dropped unfinished (the client went away mid-body).
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// How a counted body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Its last frame was read.
    Complete,
    /// Its stream failed.
    Failed(String),
    /// It was dropped before its end.
    Dropped,
}

/// Called once with the bytes counted and how the body ended.
pub type OnEnd = Box<dyn FnOnce(u64, Ended) + Send>;

/// `inner`, counted.
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    on_end: Option<OnEnd>,
}

impl<B> Counted<B> {
    /// Counts into `bytes` (shared with whoever reads the count early) and calls
    /// `on_end`, if any, once.
    pub fn new(inner: B, bytes: Arc<AtomicU64>, on_end: Option<OnEnd>) -> Self {
        Self {
            inner,
            bytes,
            on_end,
        }
    }

    fn end(&mut self, ended: Ended) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.bytes.load(Ordering::Relaxed), ended);
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.end(Ended::Dropped);
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if this.inner.is_end_stream() {
                    this.end(Ended::Complete);
                }
            }
            Poll::Ready(Some(Err(error))) => this.end(Ended::Failed(error.to_string())),
            Poll::Ready(None) => this.end(Ended::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http_body_util::{BodyExt as _, Full};

    use super::*;

    #[tokio::test]
    async fn a_read_body_reports_its_bytes_once_and_a_dropped_one_says_so() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = |seen: &Arc<Mutex<Vec<(u64, Ended)>>>| -> Option<OnEnd> {
            let seen = seen.clone();
            Some(Box::new(move |n, ended| {
                seen.lock().unwrap().push((n, ended))
            }))
        };
        let body = Counted::new(
            Full::new(Bytes::from_static(b"hello")),
            Arc::default(),
            record(&seen),
        );
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello");
        drop(Counted::new(
            Full::new(Bytes::from_static(b"unread")),
            Arc::default(),
            record(&seen),
        ));
        assert_eq!(
            *seen.lock().unwrap(),
            [(5, Ended::Complete), (0, Ended::Dropped)]
        );
    }
}
