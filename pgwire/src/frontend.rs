//! Messages from the client (frontend).
use crate::{CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST, WireError, read::Reader};

/// A startup-phase message (untagged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Startup {
        version: u32,
        /// Names and values as the client sent them (values are in its encoding).
        params: Vec<(Vec<u8>, Vec<u8>)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        key: Vec<u8>,
    },
}

impl Startup {
    /// A startup parameter (`user`, `database`, `client_encoding`, ...), as sent.
    pub fn param(&self, name: &str) -> Option<&[u8]> {
        match self {
            Startup::Startup { params, .. } => params
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| v.as_slice()),
            _ => None,
        }
    }
}

/// Parses a startup-phase message; `msg` includes its length word.
pub fn parse_startup(msg: &[u8]) -> Result<Startup, WireError> {
    let mut r = Reader::new(msg, "startup message");
    r.i32()?;
    let code = r.i32()? as u32;
    match code {
        SSL_REQUEST => Ok(Startup::SslRequest),
        GSSENC_REQUEST => Ok(Startup::GssEncRequest),
        CANCEL_REQUEST => {
            let pid = r.i32()?;
            let key = r.rest().to_vec();
            if key.len() < 4 || key.len() > 256 {
                return Err(WireError::Malformed {
                    what: "cancel request",
                    detail: "bad key length",
                });
            }
            Ok(Startup::Cancel { pid, key })
        }
        version if version >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                params.push((name.to_vec(), value.to_vec()));
            }
            r.finish()?;
            Ok(Startup::Startup { version, params })
        }
        other => Err(WireError::UnknownStartup(other)),
    }
}

/// A message of the normal phase. Strings are bytes in the session's client encoding:
/// Tollgate relays them as they are and decodes them only to read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Query(&'a [u8]),
    Parse {
        name: &'a [u8],
        sql: &'a [u8],
        param_types: Vec<u32>,
    },
    Bind {
        portal: &'a [u8],
        statement: &'a [u8],
        param_formats: Vec<i16>,
        params: Vec<Option<&'a [u8]>>,
        result_formats: Vec<i16>,
    },
    Describe {
        /// `S` (statement) or `P` (portal).
        kind: u8,
        name: &'a [u8],
    },
    Execute {
        portal: &'a [u8],
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: &'a [u8],
    },
    Sync,
    Flush,
    Terminate,
    CopyData(&'a [u8]),
    CopyDone,
    CopyFail(&'a [u8]),
    FunctionCall {
        oid: u32,
    },
    /// `p`: password, SASL initial response or SASL response (depends on the state).
    Auth(&'a [u8]),
}

impl Message<'_> {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Query(_) => "Query",
            Message::Parse { .. } => "Parse",
            Message::Bind { .. } => "Bind",
            Message::Describe { .. } => "Describe",
            Message::Execute { .. } => "Execute",
            Message::Close { .. } => "Close",
            Message::Sync => "Sync",
            Message::Flush => "Flush",
            Message::Terminate => "Terminate",
            Message::CopyData(_) => "CopyData",
            Message::CopyDone => "CopyDone",
            Message::CopyFail(_) => "CopyFail",
            Message::FunctionCall { .. } => "FunctionCall",
            Message::Auth(_) => "PasswordMessage",
        }
    }
}

/// Parses a complete tagged frontend message (`msg` includes tag and length).
pub fn parse(msg: &[u8]) -> Result<Message<'_>, WireError> {
    let (&tag, rest) = msg.split_first().ok_or(WireError::Truncated("message"))?;
    let body = rest.get(4..).ok_or(WireError::Truncated("message"))?;
    let what = tag_name(tag);
    let mut r = Reader::new(body, what);
    let message = match tag {
        b'Q' => Message::Query(r.cstr()?),
        b'P' => {
            let name = r.cstr()?;
            let sql = r.cstr()?;
            let n = r.count16()?;
            let mut param_types = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                param_types.push(r.i32()? as u32);
            }
            Message::Parse {
                name,
                sql,
                param_types,
            }
        }
        b'B' => {
            let portal = r.cstr()?;
            let statement = r.cstr()?;
            let n = r.count16()?;
            let mut param_formats = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                param_formats.push(r.i16()?);
            }
            let n = r.count16()?;
            let mut params = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                params.push(r.value()?);
            }
            let n = r.count16()?;
            let mut result_formats = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                result_formats.push(r.i16()?);
            }
            Message::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            }
        }
        b'D' | b'C' => {
            let kind = r.u8()?;
            if kind != b'S' && kind != b'P' {
                return Err(WireError::Malformed {
                    what,
                    detail: "kind is not S or P",
                });
            }
            let name = r.cstr()?;
            if tag == b'D' {
                Message::Describe { kind, name }
            } else {
                Message::Close { kind, name }
            }
        }
        b'E' => Message::Execute {
            portal: r.cstr()?,
            max_rows: r.i32()?,
        },
        b'S' => Message::Sync,
        b'H' => Message::Flush,
        b'X' => Message::Terminate,
        b'd' => Message::CopyData(r.rest()),
        b'c' => Message::CopyDone,
        b'f' => Message::CopyFail(r.cstr()?),
        b'F' => {
            let oid = r.i32()? as u32;
            r.rest();
            Message::FunctionCall { oid }
        }
        b'p' => Message::Auth(r.rest()),
        _ => {
            return Err(WireError::Malformed {
                what: "frontend message",
                detail: "unknown message type",
            });
        }
    };
    r.finish()?;
    Ok(message)
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        b'B' => "Bind",
        b'D' => "Describe",
        b'E' => "Execute",
        b'C' => "Close",
        b'f' => "CopyFail",
        b'F' => "FunctionCall",
        _ => "message",
    }
}

/// Encodes an SSLRequest (untagged, 8 bytes).
pub fn ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    out
}

/// Encodes a Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(sql.len() + 6);
    out.push(b'Q');
    out.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    out.extend_from_slice(sql.as_bytes());
    out.push(0);
    out
}

/// Encodes a Parse message (no parameter types).
pub fn parse_message(name: &[u8], sql: &str) -> Vec<u8> {
    let mut out = vec![b'P', 0, 0, 0, 0];
    out.extend_from_slice(name);
    out.push(0);
    out.extend_from_slice(sql.as_bytes());
    out.push(0);
    out.extend_from_slice(&0i16.to_be_bytes());
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_encoded_ssl_request_parses_back() {
        assert!(matches!(
            super::parse_startup(&super::ssl_request()),
            Ok(super::Startup::SslRequest)
        ));
    }

    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn parses_startup_messages() {
        let mut body = Vec::new();
        body.extend_from_slice(&crate::PROTOCOL_3.to_be_bytes());
        body.extend_from_slice(b"user\0alice\0database\0shop\0\0");
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        let startup = parse_startup(&packet).unwrap();
        assert_eq!(startup.param("user"), Some(&b"alice"[..]));
        assert_eq!(startup.param("database"), Some(&b"shop"[..]));
        assert_eq!(
            parse_startup(b"\0\0\0\x08\x04\xd2\x16\x2f").unwrap(),
            Startup::SslRequest
        );
        let cancel =
            parse_startup(b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x07\x01\x02\x03\x04").unwrap();
        assert_eq!(
            cancel,
            Startup::Cancel {
                pid: 7,
                key: vec![1, 2, 3, 4]
            }
        );
        assert!(parse_startup(b"\0\0\0\x0c\0\x03\0\0user").is_err());
    }

    #[test]
    fn parses_extended_protocol_messages() {
        assert_eq!(
            parse(&query("select 1")).unwrap(),
            Message::Query(b"select 1")
        );
        let p = parse_message(b"s1", "select $1");
        assert!(matches!(
            parse(&p).unwrap(),
            Message::Parse {
                name: b"s1",
                sql: b"select $1",
                ..
            }
        ));
        let mut bind = b"\0s1\0".to_vec();
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&2i16.to_be_bytes());
        bind.extend_from_slice(&2i32.to_be_bytes());
        bind.extend_from_slice(b"42");
        bind.extend_from_slice(&(-1i32).to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes());
        match parse(&msg(b'B', &bind)).unwrap() {
            Message::Bind {
                statement, params, ..
            } => {
                assert_eq!(statement, b"s1");
                assert_eq!(params, vec![Some(&b"42"[..]), None]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&msg(b'E', b"\0\0\0\0\0")).unwrap(),
            Message::Execute {
                portal: b"",
                max_rows: 0
            }
        );
        assert_eq!(parse(&msg(b'S', b"")).unwrap(), Message::Sync);
    }

    #[test]
    fn rejects_malformed_messages() {
        assert!(parse(&msg(b'Q', b"no terminator")).is_err());
        assert!(parse(&msg(b'Q', b"a\0trailing")).is_err());
        assert!(parse(&msg(b'E', b"\0\0")).is_err());
        assert!(parse(&msg(b'D', b"Xname\0")).is_err());
        assert!(parse(&msg(b'B', b"\0\0\xff\xff")).is_err());
        assert!(parse(&msg(b'Z', b"")).is_err());
        // Bytes that are not UTF-8 are a string in some other client encoding.
        assert_eq!(
            parse(&msg(b'Q', b"select '\xe9\xa4'\0")).unwrap(),
            Message::Query(b"select '\xe9\xa4'")
        );
        assert!(parse(b"Q").is_err());
    }
}
