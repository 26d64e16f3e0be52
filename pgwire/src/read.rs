//! A bounds-checked reader over a message body.
use crate::WireError;

pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn i16(&mut self) -> Result<i16, WireError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count (Int16) that must not be negative.
    pub fn count16(&mut self) -> Result<usize, WireError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| WireError::Malformed {
            what: self.what,
            detail: "negative count",
        })
    }

    /// A NUL-terminated string, as bytes: its encoding is the session's client
    /// encoding, which only the caller knows.
    pub fn cstr(&mut self) -> Result<&'a [u8], WireError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::Truncated(self.what))?;
        let text = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(text)
    }

    /// A NUL-terminated string that the protocol defines as ASCII (SASL mechanism
    /// names).
    pub fn ascii(&mut self) -> Result<&'a str, WireError> {
        let what = self.what;
        let bytes = self.cstr()?;
        if !bytes.is_ascii() {
            return Err(WireError::NotAscii(what));
        }
        std::str::from_utf8(bytes).map_err(|_| WireError::NotAscii(what))
    }

    /// An Int32 length then that many bytes; -1 is NULL.
    pub fn value(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        let len = self.i32()?;
        match len {
            -1 => Ok(None),
            n if n < 0 => Err(WireError::BadLength(i64::from(n))),
            n => Ok(Some(self.bytes(n as usize)?)),
        }
    }

    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed {
                what: self.what,
                detail: "trailing bytes",
            })
        }
    }
}
