//! Recognises a TLS ClientHello from the first bytes a client sends, and reads the ALPN
//! protocols it offers: PostgreSQL 17+ clients with `sslnegotiation=direct` open with a
//! ClientHello offering `postgresql` instead of an SSLRequest. Only peeked bytes are
//! read; nothing is consumed.

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
    /// A ClientHello, with the ALPN protocols it offers (empty if none).
    ClientHello { alpn: Vec<Vec<u8>> },
    /// A TLS handshake record that is not a well-formed ClientHello.
    Malformed,
}

impl Sniffed {
    pub fn offers(&self, protocol: &[u8]) -> bool {
        matches!(self, Sniffed::ClientHello { alpn } if alpn.iter().any(|p| p == protocol))
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
    if c.0.is_empty() {
        return Some(Sniffed::ClientHello { alpn });
    }
    let mut extensions = Cursor(c.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind == 16 {
            let mut list = Cursor(data);
            let mut names = Cursor(list.vec16()?);
            while !names.0.is_empty() {
                alpn.push(names.vec8()?.to_vec());
            }
        }
    }
    Some(Sniffed::ClientHello { alpn })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record offering `alpn`.
    fn hello(alpn: &[&[u8]]) -> Vec<u8> {
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
        // server_name, to have another extension before ALPN's
        let mut sni = vec![0, 0];
        sni.extend(0u16.to_be_bytes());
        let mut exts = sni;
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
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            }
        );
        assert_eq!(sniff(&hello(&[])), Sniffed::ClientHello { alpn: vec![] });
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
