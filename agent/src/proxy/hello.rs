//! Recognises a TLS ClientHello from the first bytes a client sends, and reads the name
//! it asks for (SNI) and the ALPN protocols it offers: the name for `connect` decisions
//! and records (nothing is decrypted), the ALPN because PostgreSQL 17+ clients with
//! `sslnegotiation=direct` open with a ClientHello offering `postgresql` instead of an
//! SSLRequest. Only peeked bytes are read; nothing is consumed.

/// The ALPN protocol id of PostgreSQL's direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The largest TLS record (2^14 bytes of payload, plus the header).
pub const MAX_RECORD: usize = 5 + (1 << 14);

#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Not a TLS handshake record.
    NotTls,
    /// A TLS handshake record, not complete yet: peek at least this many bytes.
    NeedMore(usize),
    /// A ClientHello, with the ALPN protocols it offers (empty if none) and the host
    /// name it asks for (lowercase, without a trailing dot).
    ClientHello {
        alpn: Vec<Vec<u8>>,
        sni: Option<String>,
    },
    /// A TLS handshake record that is not a well-formed ClientHello.
    Malformed,
}

impl Sniffed {
    pub fn offers(&self, protocol: &[u8]) -> bool {
        matches!(self, Sniffed::ClientHello { alpn, .. } if alpn.iter().any(|p| p == protocol))
    }

    /// The host name a ClientHello asks for.
    pub fn sni(&self) -> Option<&str> {
        match self {
            Sniffed::ClientHello { sni, .. } => sni.as_deref(),
            _ => None,
        }
    }
}

/// Waits up to `wait` for the client's first bytes and reads its ClientHello, without
/// consuming anything: `NotTls` when the client sent something else, nothing in time,
/// or hung up; `Malformed` for a handshake it cannot read, or one still incomplete at
/// the deadline.
pub async fn read(client: &tokio::net::TcpStream, wait: std::time::Duration) -> Sniffed {
    let deadline = tokio::time::Instant::now() + wait;
    let mut first = vec![0u8; 512];
    loop {
        let n = match tokio::time::timeout_at(deadline, client.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => n,
            Ok(_) | Err(_) => return Sniffed::NotTls,
        };
        match sniff(&first[..n]) {
            Sniffed::NeedMore(_) if tokio::time::Instant::now() >= deadline => {
                return Sniffed::Malformed;
            }
            Sniffed::NeedMore(want) if first.len() < want => first.resize(want.min(MAX_RECORD), 0),
            // The rest of the record is on its way.
            Sniffed::NeedMore(_) => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
            done => return done,
        }
    }
}

/// Looks at the first bytes of a connection.
pub fn sniff(bytes: &[u8]) -> Sniffed {
    // Record header: content type 22 (handshake), version 3.x, length.
    match bytes {
        [] => return Sniffed::NeedMore(5),
        [22] | [22, 3] | [22, 3, _] | [22, 3, _, _] => return Sniffed::NeedMore(5),
        [22, 3, ..] => {}
        _ => return Sniffed::NotTls,
    }
    let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    if len == 0 || len > MAX_RECORD - 5 {
        return Sniffed::Malformed;
    }
    let Some(record) = bytes.get(5..5 + len) else {
        return Sniffed::NeedMore(5 + len);
    };
    parse_client_hello(record).unwrap_or(Sniffed::Malformed)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn parse_client_hello(record: &[u8]) -> Option<Sniffed> {
    let mut c = Cursor(record);
    if c.u8()? != 1 {
        return Some(Sniffed::Malformed);
    }
    let body_len = c.u24()?;
    // A ClientHello larger than one record (huge PSK lists) is rare: read what is here.
    let body = c.0.get(..body_len).unwrap_or(c.0);
    let mut c = Cursor(body);
    c.take(2)?; // legacy_version
    c.take(32)?; // random
    c.vec8()?; // legacy_session_id
    c.vec16()?; // cipher_suites
    c.vec8()?; // legacy_compression_methods
    let mut alpn = Vec::new();
    let mut sni = None;
    if c.0.is_empty() {
        return Some(Sniffed::ClientHello { alpn, sni });
    }
    let mut extensions = Cursor(c.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        match kind {
            EXT_SERVER_NAME => {
                if sni.is_some() {
                    // Two server_name extensions: which one would the server use?
                    return Some(Sniffed::Malformed);
                }
                match server_name(data) {
                    Some(name) => sni = name,
                    None => return Some(Sniffed::Malformed),
                }
            }
            EXT_ALPN => {
                let mut list = Cursor(data);
                let mut names = Cursor(list.vec16()?);
                while !names.0.is_empty() {
                    alpn.push(names.vec8()?.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(Sniffed::ClientHello { alpn, sni })
}

const EXT_SERVER_NAME: usize = 0;
const EXT_ALPN: usize = 16;
/// RFC 6066's one name type.
const NAME_TYPE_HOST: usize = 0;

/// The host name of a server_name extension (RFC 6066): `Some(None)` for an empty one
/// (a server's echo), `None` when it is not one well-formed DNS host name, which is
/// refused rather than passed over: a name the policy cannot read must not let a
/// connection slip past a rule about names.
fn server_name(data: &[u8]) -> Option<Option<String>> {
    if data.is_empty() {
        return Some(None);
    }
    let mut outer = Cursor(data);
    let mut list = Cursor(outer.vec16()?);
    if !outer.0.is_empty() {
        return None;
    }
    let mut found = None;
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind != NAME_TYPE_HOST || found.is_some() {
            return None;
        }
        found = Some(host_name(name)?);
    }
    Some(found)
}

/// A DNS host name, lowercased and without a trailing dot: letters, digits, `-`, `_`
/// and dots, labels of 1 to 63 bytes, 253 bytes at most. (IDNs travel as A-labels.)
fn host_name(bytes: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(bytes).ok()?;
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record offering `alpn`, with an empty server_name.
    fn hello(alpn: &[&[u8]]) -> Vec<u8> {
        hello_for(None, alpn)
    }

    /// The server_name extension's data for `names` (host name entries).
    fn server_names(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for name in names {
            list.push(0);
            list.extend((name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        data
    }

    /// A ClientHello record offering `alpn`, whose server_name extension has `sni`'s
    /// data (empty when `None`).
    fn hello_for(sni: Option<Vec<u8>>, alpn: &[&[u8]]) -> Vec<u8> {
        let mut ext = Vec::new();
        if !alpn.is_empty() {
            let mut names = Vec::new();
            for name in alpn {
                names.push(name.len() as u8);
                names.extend_from_slice(name);
            }
            let mut data = (names.len() as u16).to_be_bytes().to_vec();
            data.extend(names);
            ext.extend(16u16.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        // server_name, before ALPN's
        let data = sni.unwrap_or_default();
        let mut exts = vec![0, 0];
        exts.extend((data.len() as u16).to_be_bytes());
        exts.extend(data);
        exts.extend(ext);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend([0, 2, 0x13, 0x01]);
        body.extend([1, 0]);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut record = vec![22, 3, 1];
        record.extend((hs.len() as u16).to_be_bytes());
        record.extend(hs);
        record
    }

    #[test]
    fn a_direct_tls_postgres_hello_is_recognised() {
        let direct = hello(&[ALPN_POSTGRESQL]);
        assert!(sniff(&direct).offers(ALPN_POSTGRESQL));
        let https = hello(&[b"h2", b"http/1.1"]);
        let found = sniff(&https);
        assert!(!found.offers(ALPN_POSTGRESQL));
        assert_eq!(
            found,
            Sniffed::ClientHello {
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                sni: None,
            }
        );
        assert_eq!(
            sniff(&hello(&[])),
            Sniffed::ClientHello {
                alpn: vec![],
                sni: None
            }
        );
    }

    #[test]
    fn the_server_name_is_read_lowercased_and_checked() {
        let named = |names: &[&[u8]]| sniff(&hello_for(Some(server_names(names)), &[b"h2"]));
        assert_eq!(named(&[b"API.Example.com."]).sni(), Some("api.example.com"));
        assert!(named(&[b"api.example.com"]).offers(b"h2"));
        assert_eq!(
            named(&[b"xn--bcher-kva.example"]).sni(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(named(&[b"localhost"]).sni(), Some("localhost"));
        // Not one host name: refused, never read as "no name".
        for bad in [
            &[b"b\xc3\xbccher.example".as_slice()][..],
            &[b"a..b"],
            &[b""],
            &[b"evil.example\0good.example"],
            &[b"a b.example"],
            &[b"a.example", b"b.example"],
        ] {
            assert_eq!(named(bad), Sniffed::Malformed, "{bad:?}");
        }
        let long = vec![b'a'; 64];
        assert_eq!(named(&[&long]), Sniffed::Malformed);
        // A list with trailing bytes, or a name of another type.
        let mut trailing = server_names(&[b"a.example"]);
        trailing.push(0);
        assert_eq!(sniff(&hello_for(Some(trailing), &[])), Sniffed::Malformed);
        let mut other_type = server_names(&[b"a.example"]);
        other_type[2] = 1;
        assert_eq!(sniff(&hello_for(Some(other_type), &[])), Sniffed::Malformed);
    }

    #[test]
    fn partial_and_foreign_bytes() {
        let direct = hello(&[ALPN_POSTGRESQL]);
        assert_eq!(sniff(&direct[..3]), Sniffed::NeedMore(5));
        assert_eq!(sniff(&direct[..20]), Sniffed::NeedMore(direct.len()));
        // An SSLRequest, an HTTP request, SSH: not TLS.
        assert_eq!(sniff(&[0, 0, 0, 8, 4, 210, 22, 47]), Sniffed::NotTls);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::NotTls);
        assert_eq!(sniff(b"SSH-2.0-"), Sniffed::NotTls);
        // A handshake record that is not a ClientHello, or is cut short inside.
        let mut bad = direct.clone();
        bad[5] = 2;
        assert_eq!(sniff(&bad), Sniffed::Malformed);
        let mut short = direct.clone();
        short[4] = 10;
        short.truncate(15);
        assert_eq!(sniff(&short), Sniffed::Malformed);
        assert_eq!(sniff(&[22, 3, 1, 0, 0]), Sniffed::Malformed);
    }

    #[test]
    fn every_truncation_of_a_hello_is_handled() {
        let direct = hello(&[ALPN_POSTGRESQL]);
        for n in 0..direct.len() {
            // No panic; either more is needed or it is malformed.
            let _ = sniff(&direct[..n]);
            let mut cut = direct[..n].to_vec();
            if n > 5 {
                let len = (n - 5) as u16;
                cut[3..5].copy_from_slice(&len.to_be_bytes());
                assert!(!sniff(&cut).offers(ALPN_POSTGRESQL) || n == direct.len());
            }
        }
    }
}
