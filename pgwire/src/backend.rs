//! Messages from the server (backend), and the ones Tollgate writes to clients itself.
use crate::{WireError, read::Reader};

/// SASL authentication request (`AuthenticationSASL`).
pub const AUTH_SASL: i32 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column<'a> {
    /// In the session's client encoding.
    pub name: &'a [u8],
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// A server message. Strings are bytes in the session's client encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Authentication {
        code: i32,
        data: &'a [u8],
    },
    /// Error or notice fields: (field type, value), e.g. (b'C', b"42501").
    Error(Vec<(u8, &'a [u8])>),
    Notice(Vec<(u8, &'a [u8])>),
    /// A run-time parameter the server reports (`client_encoding`, ...).
    ParameterStatus {
        name: &'a [u8],
        value: &'a [u8],
    },
    /// `I` idle, `T` in a transaction block, `E` in a failed transaction block.
    ReadyForQuery(u8),
    CommandComplete(&'a [u8]),
    RowDescription(Vec<Column<'a>>),
    DataRow(Vec<Option<&'a [u8]>>),
    EmptyQuery,
    /// Any other message, by tag.
    Other(u8),
}

/// Parses a complete tagged backend message (`msg` includes tag and length).
pub fn parse(msg: &[u8]) -> Result<Message<'_>, WireError> {
    let (&tag, rest) = msg.split_first().ok_or(WireError::Truncated("message"))?;
    let body = rest.get(4..).ok_or(WireError::Truncated("message"))?;
    let message = match tag {
        b'R' => {
            let mut r = Reader::new(body, "Authentication");
            let code = r.i32()?;
            Message::Authentication {
                code,
                data: r.rest(),
            }
        }
        b'E' | b'N' => {
            let mut r = Reader::new(body, "ErrorResponse");
            let mut fields = Vec::new();
            loop {
                let kind = r.u8()?;
                if kind == 0 {
                    break;
                }
                fields.push((kind, r.cstr()?));
            }
            r.finish()?;
            if tag == b'E' {
                Message::Error(fields)
            } else {
                Message::Notice(fields)
            }
        }
        b'Z' => {
            let mut r = Reader::new(body, "ReadyForQuery");
            let status = r.u8()?;
            r.finish()?;
            if !matches!(status, b'I' | b'T' | b'E') {
                return Err(WireError::Malformed {
                    what: "ReadyForQuery",
                    detail: "unknown transaction status",
                });
            }
            Message::ReadyForQuery(status)
        }
        b'C' => {
            let mut r = Reader::new(body, "CommandComplete");
            let tag = r.cstr()?;
            r.finish()?;
            Message::CommandComplete(tag)
        }
        b'T' => {
            let mut r = Reader::new(body, "RowDescription");
            let n = r.count16()?;
            let mut columns = Vec::with_capacity(n.min(1664));
            for _ in 0..n {
                columns.push(Column {
                    name: r.cstr()?,
                    table_oid: r.i32()? as u32,
                    column: r.i16()?,
                    type_oid: r.i32()? as u32,
                    type_len: r.i16()?,
                    type_mod: r.i32()?,
                    format: r.i16()?,
                });
            }
            r.finish()?;
            Message::RowDescription(columns)
        }
        b'D' => {
            let mut r = Reader::new(body, "DataRow");
            let n = r.count16()?;
            let mut values = Vec::with_capacity(n.min(1664));
            for _ in 0..n {
                values.push(r.value()?);
            }
            r.finish()?;
            Message::DataRow(values)
        }
        b'S' => {
            let mut r = Reader::new(body, "ParameterStatus");
            let name = r.cstr()?;
            let value = r.cstr()?;
            r.finish()?;
            Message::ParameterStatus { name, value }
        }
        b'I' => Message::EmptyQuery,
        other => Message::Other(other),
    };
    Ok(message)
}

/// The rows a CommandComplete tag reports (`SELECT 5`, `INSERT 0 3`, `COPY 10`).
pub fn rows_of(tag: &[u8]) -> Option<u64> {
    let last = tag.rsplit(|&b| b == b' ').next()?;
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// A field of an ErrorResponse or NoticeResponse (`b'C'` SQLSTATE, `b'M'` message).
pub fn field<'a>(fields: &[(u8, &'a [u8])], kind: u8) -> Option<&'a [u8]> {
    fields.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

/// The SASL mechanisms of an AuthenticationSASL body.
pub fn sasl_mechanisms(data: &[u8]) -> Result<Vec<&str>, WireError> {
    let mut r = Reader::new(data, "AuthenticationSASL");
    let mut mechanisms = Vec::new();
    loop {
        let mechanism = r.ascii()?;
        if mechanism.is_empty() {
            break;
        }
        mechanisms.push(mechanism);
    }
    r.finish()?;
    Ok(mechanisms)
}

/// An AuthenticationSASL message offering `mechanisms`.
pub fn authentication_sasl(mechanisms: &[&str]) -> Vec<u8> {
    let mut body = AUTH_SASL.to_be_bytes().to_vec();
    for mechanism in mechanisms {
        body.extend_from_slice(mechanism.as_bytes());
        body.push(0);
    }
    body.push(0);
    tagged(b'R', &body)
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An ErrorResponse with severity ERROR, its texts in UTF-8. Values must not contain
/// NUL (they are cut there).
pub fn error_response(
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Vec<u8> {
    error_response_bytes(
        code,
        message.as_bytes(),
        detail.map(str::as_bytes),
        hint.map(str::as_bytes),
    )
}

/// An ErrorResponse with severity ERROR, its texts already encoded in the session's
/// client encoding. Values must not contain NUL (they are cut there).
pub fn error_response_bytes(
    code: &str,
    message: &[u8],
    detail: Option<&[u8]>,
    hint: Option<&[u8]>,
) -> Vec<u8> {
    fields_bytes(b'E', b"ERROR", code, message, detail, hint)
}

/// A NoticeResponse (severity NOTICE), which a server may send at any time: clients
/// show it (psql prints it) and go on waiting for the reply they expect.
pub fn notice_response_bytes(
    code: &str,
    message: &[u8],
    detail: Option<&[u8]>,
    hint: Option<&[u8]>,
) -> Vec<u8> {
    fields_bytes(b'N', b"NOTICE", code, message, detail, hint)
}

fn fields_bytes(
    tag: u8,
    severity: &[u8],
    code: &str,
    message: &[u8],
    detail: Option<&[u8]>,
    hint: Option<&[u8]>,
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut field = |kind: u8, value: &[u8]| {
        body.push(kind);
        body.extend_from_slice(value.split(|&b| b == 0).next().unwrap_or_default());
        body.push(0);
    };
    field(b'S', severity);
    field(b'V', severity);
    field(b'C', code.as_bytes());
    field(b'M', message);
    if let Some(detail) = detail {
        field(b'D', detail);
    }
    if let Some(hint) = hint {
        field(b'H', hint);
    }
    body.push(0);
    tagged(tag, &body)
}

/// A ReadyForQuery with transaction status `status` (`I`, `T` or `E`).
pub fn ready_for_query(status: u8) -> Vec<u8> {
    tagged(b'Z', &[status])
}

/// A DataRow with `values`.
pub fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let mut body = (values.len() as i16).to_be_bytes().to_vec();
    for value in values {
        match value {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    tagged(b'D', &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip() {
        let bytes = error_response("42501", "denied", Some("by policy p"), None);
        let Message::Error(fields) = parse(&bytes).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(field(&fields, b'C'), Some(&b"42501"[..]));
        assert_eq!(field(&fields, b'D'), Some(&b"by policy p"[..]));
        assert_eq!(
            parse(&ready_for_query(b'E')).unwrap(),
            Message::ReadyForQuery(b'E')
        );
        assert!(parse(&ready_for_query(b'X')).is_err());
    }

    #[test]
    fn sasl_and_rows() {
        let sasl = authentication_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        let Message::Authentication { code, data } = parse(&sasl).unwrap() else {
            panic!("not auth");
        };
        assert_eq!(code, AUTH_SASL);
        assert_eq!(
            sasl_mechanisms(data).unwrap(),
            vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
        assert_eq!(rows_of(b"INSERT 0 3"), Some(3));
        assert_eq!(rows_of(b"SELECT 12"), Some(12));
        assert_eq!(rows_of(b"BEGIN"), None);
        let row = data_row(&[Some(b"a"), None]);
        assert_eq!(
            parse(&row).unwrap(),
            Message::DataRow(vec![Some(&b"a"[..]), None])
        );
    }

    #[test]
    fn rejects_malformed_backend_messages() {
        assert!(parse(b"D\0\0\0\x06\0\x01").is_err());
        assert!(parse(b"D\0\0\0\x0a\0\x01\0\0\0\x09").is_err());
        assert!(parse(b"E\0\0\0\x06Cx").is_err());
        assert!(parse(b"Z\0\0\0\x04").is_err());
    }

    /// A LATIN9 server message ("é€" is 0xe9 0xa4) is a message, not a violation.
    #[test]
    fn messages_in_other_encodings_parse() {
        let latin9 = b"E\0\0\0\x17SERROR\0C22P02\0M\xe9\xa4\0\0";
        let Message::Error(fields) = parse(latin9).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(field(&fields, b'M'), Some(&b"\xe9\xa4"[..]));
        let status = b"S\0\0\0\x1bclient_encoding\0LATIN9\0";
        assert_eq!(
            parse(status).unwrap(),
            Message::ParameterStatus {
                name: b"client_encoding",
                value: b"LATIN9"
            }
        );
    }
}
