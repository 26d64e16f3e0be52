//! The PostgreSQL frontend/backend protocol (version 3), as a man in the middle needs it:
//! framing with a size bound, parsing of the messages Tollgate inspects, and encoders for
//! the messages it writes itself. Pure and bounded: every length is checked before use,
//! and malformed input is an error, never a panic.
#![forbid(unsafe_code)]

pub mod backend;
pub mod frontend;
mod read;

/// Protocol 3.0, as in a StartupMessage.
pub const PROTOCOL_3: u32 = 196_608;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// Default bound on one message (PostgreSQL itself allows up to 1 GiB for some).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("{0} is not ASCII")]
    NotAscii(&'static str),
    #[error("unsupported startup request code {0}")]
    UnknownStartup(u32),
    #[error("malformed {what}: {detail}")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
}

/// Whether `buf` holds a complete tagged message (`tag`, Int32 length, body), and its
/// total size.
pub fn tagged_len(buf: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(WireError::BadLength(i64::from(len)));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(WireError::TooLarge { len: total, max });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Whether `buf` holds a complete untagged startup-phase message (Int32 length, body),
/// and its total size.
pub fn startup_len(buf: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(WireError::BadLength(i64::from(len)));
    }
    let total = len as usize;
    // A startup packet is small; PostgreSQL itself caps it at 10000 bytes.
    let cap = max.min(10_000);
    if total > cap {
        return Err(WireError::TooLarge {
            len: total,
            max: cap,
        });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// What a connection's first bytes say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    /// A StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.
    Postgres,
    NotPostgres,
    /// Fewer than 8 bytes so far.
    NeedMore,
}

/// Looks at a client's first bytes (a peek; nothing is consumed).
pub fn detect(first: &[u8]) -> Detect {
    if first.len() < 8 {
        return Detect::NeedMore;
    }
    let len = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
    let code = u32::from_be_bytes([first[4], first[5], first[6], first[7]]);
    let plausible = (8..=10_000).contains(&len);
    match code {
        SSL_REQUEST | GSSENC_REQUEST if len == 8 => Detect::Postgres,
        CANCEL_REQUEST if (16..=264).contains(&len) => Detect::Postgres,
        // 3.0 and later minor versions (3.2 in PostgreSQL 18).
        c if c >> 16 == 3 && plausible => Detect::Postgres,
        _ => Detect::NotPostgres,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_is_bounded() {
        assert_eq!(tagged_len(b"Q\0\0", 100), Ok(None));
        assert_eq!(tagged_len(b"Q\0\0\0\x05x", 100), Ok(Some(6)));
        assert_eq!(tagged_len(b"Q\0\0\0\x05", 100), Ok(None));
        assert_eq!(
            tagged_len(b"Q\0\0\0\x03", 100),
            Err(WireError::BadLength(3))
        );
        assert!(matches!(
            tagged_len(b"Q\x7f\0\0\0", 100),
            Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(
            tagged_len(b"Q\xff\xff\xff\xff", 100),
            Err(WireError::BadLength(-1))
        ));
        assert_eq!(startup_len(b"\0\0\0\x08\x04\xd2\x16\x2f", 100), Ok(Some(8)));
        assert!(startup_len(b"\0\x01\0\0", 1 << 20).is_err());
    }

    #[test]
    fn detects_postgres_first_bytes() {
        assert_eq!(detect(b"\0\0\0\x08\x04\xd2\x16\x2f"), Detect::Postgres);
        assert_eq!(detect(b"\0\0\0\x08\x04\xd2\x16\x30"), Detect::Postgres);
        assert_eq!(detect(b"\0\0\0\x10\x04\xd2\x16\x2e"), Detect::Postgres);
        assert_eq!(detect(b"\0\0\0\x29\0\x03\0\0"), Detect::Postgres);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detect::NotPostgres);
        assert_eq!(detect(b"\x16\x03\x01\x02\0\x01\0\x01"), Detect::NotPostgres);
        assert_eq!(detect(b"\0\0"), Detect::NeedMore);
    }
}
