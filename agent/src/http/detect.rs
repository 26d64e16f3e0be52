//! Whether a client's first bytes are HTTP: an HTTP/2 connection preface, or an HTTP/1
//! request line's method and the space after it.

/// The HTTP/2 client connection preface (RFC 9113, 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods an HTTP/1 request line may open with (RFC 9110 and WebDAV).
const METHODS: [&str; 15] = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "REPORT",
];

/// The longest method and its space.
const LONGEST: usize = 10;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    /// An HTTP/1 request line.
    Http1,
    /// The HTTP/2 preface (prior knowledge).
    Http2,
    NotHttp,
    /// A prefix of one of them: read more.
    NeedMore,
}

/// Classifies the first bytes a client sent.
pub fn detect(first: &[u8]) -> Detect {
    if first.is_empty() {
        return Detect::NeedMore;
    }
    let preface = first.len().min(H2_PREFACE.len());
    if first[..preface] == H2_PREFACE[..preface] {
        return if preface == H2_PREFACE.len() {
            Detect::Http2
        } else {
            Detect::NeedMore
        };
    }
    let mut prefix = false;
    for method in METHODS {
        let m = method.as_bytes();
        if first.len() > m.len() {
            if first.starts_with(m) && first[m.len()] == b' ' {
                return Detect::Http1;
            }
        } else if m.starts_with(first) {
            prefix = true;
        }
    }
    if prefix && first.len() < LONGEST {
        Detect::NeedMore
    } else {
        Detect::NotHttp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_preface_are_http_and_others_are_not() {
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Detect::Http1);
        assert_eq!(detect(b"DELETE /v1/x HTTP/1.1\r\n"), Detect::Http1);
        assert_eq!(detect(H2_PREFACE), Detect::Http2);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n"), Detect::NeedMore);
        assert_eq!(detect(b"GE"), Detect::NeedMore);
        assert_eq!(detect(b"PROPFI"), Detect::NeedMore);
        assert_eq!(detect(b""), Detect::NeedMore);
        assert_eq!(detect(b"GETX / HTTP/1.1"), Detect::NotHttp);
        assert_eq!(detect(b"get / HTTP/1.1"), Detect::NotHttp);
        assert_eq!(detect(b"SSH-2.0-OpenSSH"), Detect::NotHttp);
        assert_eq!(detect(&[0, 0, 0, 8, 4, 210, 22, 47]), Detect::NotHttp);
        assert_eq!(detect(b"\x16\x03\x01\x02\x00"), Detect::NotHttp);
    }
}
