//! Server-sent events as MCP servers send them (`text/event-stream`): a reader that cuts
//! a stream into events, whatever the chunking, keeping each event's bytes as they came
//! (an event the agent leaves alone is forwarded byte for byte), and the encoding of an
//! event the agent writes (a filtered list, a masked result, a refusal).
use bytes::Bytes;

/// Why a stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an event larger than {0} bytes")]
    TooLarge(usize),
}

/// One event (or a block of comments only: `data` is then `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event's bytes as read, with the blank line that ends it.
    pub raw: Bytes,
    /// `event:` (the last one); `None` means "message".
    pub event: Option<String>,
    /// The `data:` lines joined with "\n"; `None` when there were none.
    pub data: Option<String>,
    /// `id:` (the last one).
    pub id: Option<String>,
}

impl Event {
    /// The event's type: `message` unless it says otherwise.
    pub fn kind(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }
}

/// Cuts a stream into events.
#[derive(Debug)]
pub struct SseReader {
    buf: Vec<u8>,
    /// Where the next line starts (everything before is of the current event).
    line: usize,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    max: usize,
}

impl SseReader {
    /// A reader of events up to `max` bytes each.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            line: 0,
            event: None,
            data: None,
            id: None,
            max,
        }
    }

    /// Reads `bytes`, returning the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        loop {
            let rest = &self.buf[self.line..];
            let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                break;
            };
            // A CR at the end of what has come may be the start of a CRLF.
            let terminator = match rest[end] {
                b'\r' if end + 1 == rest.len() => break,
                b'\r' if rest[end + 1] == b'\n' => 2,
                _ => 1,
            };
            let text = String::from_utf8_lossy(&rest[..end]).into_owned();
            self.line += end + terminator;
            if text.is_empty() {
                let raw = Bytes::copy_from_slice(&self.buf[..self.line]);
                self.buf.drain(..self.line);
                self.line = 0;
                events.push(Event {
                    raw,
                    event: self.event.take(),
                    data: self.data.take(),
                    id: self.id.take(),
                });
                continue;
            }
            self.field(&text);
        }
        if self.buf.len() > self.max {
            return Err(SseError::TooLarge(self.max));
        }
        Ok(events)
    }

    fn field(&mut self, line: &str) {
        if line.starts_with(':') {
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
    }

    /// The bytes of an event the stream ended in the middle of, if it did.
    pub fn unfinished(&self) -> Option<&[u8]> {
        (!self.buf.is_empty()).then_some(&self.buf[..])
    }
}

/// An event's bytes: `event:` (unless a message), `id:`, each line of `data`, a blank
/// line.
pub fn encode(event: Option<&str>, id: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(event) = event.filter(|e| *e != "message") {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b": keep-alive\n\nevent: endpoint\r\ndata: /messages/?session_id=1\r\n\r\nid: 7\ndata: {\"a\":\ndata: 1}\n\nretry: 10\nevent: message\rdata: x\r\r\n";

    #[test]
    fn events_are_the_same_however_the_stream_is_cut() {
        let mut whole = SseReader::new(1 << 20);
        let expected = whole.push(STREAM).unwrap();
        assert_eq!(expected.len(), 4);
        assert_eq!(expected[0].data, None);
        assert_eq!(expected[1].kind(), "endpoint");
        assert_eq!(expected[1].data.as_deref(), Some("/messages/?session_id=1"));
        assert_eq!(expected[2].id.as_deref(), Some("7"));
        assert_eq!(expected[2].data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(expected[3].kind(), "message");
        assert_eq!(expected[3].data.as_deref(), Some("x"));
        let raw: Vec<u8> = expected.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(raw, STREAM, "the bytes pass unchanged");
        assert!(whole.unfinished().is_none());
        for cut in 1..STREAM.len() {
            let mut reader = SseReader::new(1 << 20);
            let mut events = reader.push(&STREAM[..cut]).unwrap();
            events.extend(reader.push(&STREAM[cut..]).unwrap());
            assert_eq!(events, expected, "cut at {cut}");
        }
        let mut bytewise = SseReader::new(1 << 20);
        let events: Vec<Event> = STREAM
            .iter()
            .flat_map(|b| bytewise.push(&[*b]).unwrap())
            .collect();
        assert_eq!(events, expected);
    }

    #[test]
    fn a_stream_cut_mid_event_leaves_it_unfinished_and_a_huge_event_is_refused() {
        let mut reader = SseReader::new(64);
        assert!(reader.push(b"data: {\"jsonrpc\"").unwrap().is_empty());
        assert_eq!(reader.unfinished(), Some(&b"data: {\"jsonrpc\""[..]));
        let error = reader.push(&[b'x'; 100]).unwrap_err();
        assert_eq!(error, SseError::TooLarge(64));
    }

    #[test]
    fn encoded_events_read_back() {
        let bytes = encode(Some("message"), Some("3"), "{\"a\":1}\nsecond");
        assert_eq!(&bytes[..], b"id: 3\ndata: {\"a\":1}\ndata: second\n\n");
        let events = SseReader::new(1024).push(&bytes).unwrap();
        assert_eq!(events[0].data.as_deref(), Some("{\"a\":1}\nsecond"));
        let named = encode(Some("endpoint"), None, "/m");
        assert_eq!(&named[..], b"event: endpoint\ndata: /m\n\n");
    }
}
