//! PostgreSQL client encodings. A session's strings are relayed byte for byte; they are
//! decoded only to be read (classification, records, masking rules by column name), and
//! Tollgate's own messages to the client are encoded in the session's encoding.
use std::borrow::Cow;

use encoding_rs::Encoding;

/// How one client encoding is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Utf8,
    /// SQL_ASCII: no conversion at all; bytes above 0x7f mean nothing in particular.
    SqlAscii,
    /// ISO 8859-1: each byte is the code point of the same value.
    Latin1,
    Whatwg(&'static Encoding),
    /// An encoding no well-kept decoder covers (EUC_TW, MULE_INTERNAL, JOHAB): ASCII
    /// is read, everything else is undecodable.
    Opaque,
}

/// A session's client encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEncoding {
    /// PostgreSQL's canonical name (`UTF8`, `LATIN9`, `SJIS`, ...).
    name: &'static str,
    codec: Codec,
    /// Whether a byte below 0x80 is always an ASCII character: false where the trail
    /// byte of a two-byte character may be one (SJIS, BIG5, GBK, UHC, GB18030, JOHAB).
    ascii_safe: bool,
}

impl Default for ClientEncoding {
    /// The server's default client encoding is the database's, which for every
    /// PostgreSQL that Tollgate supports is overwhelmingly UTF8; the server says which
    /// in its ParameterStatus before the first query.
    fn default() -> Self {
        Self::UTF8
    }
}

/// PostgreSQL's encoding names (pg_enc2name_tbl) and their aliases (pg_encname_tbl),
/// normalized as PostgreSQL does it: lower case, non-alphanumerics dropped.
const NAMES: &[(&str, &str)] = &[
    ("abc", "WIN1258"),
    ("alt", "WIN866"),
    ("big5", "BIG5"),
    ("cp1250", "WIN1250"),
    ("cp1251", "WIN1251"),
    ("cp1252", "WIN1252"),
    ("cp1253", "WIN1253"),
    ("cp1254", "WIN1254"),
    ("cp1255", "WIN1255"),
    ("cp1256", "WIN1256"),
    ("cp1257", "WIN1257"),
    ("cp1258", "WIN1258"),
    ("cp866", "WIN866"),
    ("cp874", "WIN874"),
    ("cp932", "SJIS"),
    ("cp936", "GBK"),
    ("cp949", "UHC"),
    ("cp950", "BIG5"),
    ("euccn", "EUC_CN"),
    ("eucjis2004", "EUC_JIS_2004"),
    ("eucjp", "EUC_JP"),
    ("euckr", "EUC_KR"),
    ("euctw", "EUC_TW"),
    ("gb18030", "GB18030"),
    ("gbk", "GBK"),
    ("iso88591", "LATIN1"),
    ("iso885910", "LATIN6"),
    ("iso885913", "LATIN7"),
    ("iso885914", "LATIN8"),
    ("iso885915", "LATIN9"),
    ("iso885916", "LATIN10"),
    ("iso88592", "LATIN2"),
    ("iso88593", "LATIN3"),
    ("iso88594", "LATIN4"),
    ("iso88595", "ISO_8859_5"),
    ("iso88596", "ISO_8859_6"),
    ("iso88597", "ISO_8859_7"),
    ("iso88598", "ISO_8859_8"),
    ("iso88599", "LATIN5"),
    ("johab", "JOHAB"),
    ("koi8", "KOI8R"),
    ("koi8r", "KOI8R"),
    ("koi8u", "KOI8U"),
    ("latin1", "LATIN1"),
    ("latin10", "LATIN10"),
    ("latin2", "LATIN2"),
    ("latin3", "LATIN3"),
    ("latin4", "LATIN4"),
    ("latin5", "LATIN5"),
    ("latin6", "LATIN6"),
    ("latin7", "LATIN7"),
    ("latin8", "LATIN8"),
    ("latin9", "LATIN9"),
    ("mskanji", "SJIS"),
    ("muleinternal", "MULE_INTERNAL"),
    ("shiftjis", "SJIS"),
    ("shiftjis2004", "SHIFT_JIS_2004"),
    ("sjis", "SJIS"),
    ("sqlascii", "SQL_ASCII"),
    ("tcvn", "WIN1258"),
    ("tcvn5712", "WIN1258"),
    ("uhc", "UHC"),
    ("unicode", "UTF8"),
    ("utf8", "UTF8"),
    ("vscii", "WIN1258"),
    ("win", "WIN1251"),
    ("win1250", "WIN1250"),
    ("win1251", "WIN1251"),
    ("win1252", "WIN1252"),
    ("win1253", "WIN1253"),
    ("win1254", "WIN1254"),
    ("win1255", "WIN1255"),
    ("win1256", "WIN1256"),
    ("win1257", "WIN1257"),
    ("win1258", "WIN1258"),
    ("win866", "WIN866"),
    ("win874", "WIN874"),
    ("win932", "SJIS"),
    ("win936", "GBK"),
    ("win949", "UHC"),
    ("win950", "BIG5"),
    ("windows1250", "WIN1250"),
    ("windows1251", "WIN1251"),
    ("windows1252", "WIN1252"),
    ("windows1253", "WIN1253"),
    ("windows1254", "WIN1254"),
    ("windows1255", "WIN1255"),
    ("windows1256", "WIN1256"),
    ("windows1257", "WIN1257"),
    ("windows1258", "WIN1258"),
    ("windows866", "WIN866"),
    ("windows874", "WIN874"),
    ("windows932", "SJIS"),
    ("windows936", "GBK"),
    ("windows949", "UHC"),
    ("windows950", "BIG5"),
];

impl ClientEncoding {
    pub const UTF8: Self = Self {
        name: "UTF8",
        codec: Codec::Utf8,
        ascii_safe: true,
    };

    /// The encoding a `client_encoding` value names (as a startup parameter or in a
    /// ParameterStatus), or None for a name PostgreSQL does not know either (the
    /// server refuses it, and the session keeps the encoding it has).
    pub fn from_name(value: &[u8]) -> Option<Self> {
        let key: String = value
            .iter()
            .filter(|b| b.is_ascii_alphanumeric())
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect();
        let name = NAMES
            .binary_search_by(|(alias, _)| (*alias).cmp(key.as_str()))
            .ok()
            .map(|i| NAMES[i].1)?;
        Some(Self::canonical(name))
    }

    fn canonical(name: &'static str) -> Self {
        use encoding_rs as rs;
        let whatwg = |encoding| (Codec::Whatwg(encoding), true);
        let double_byte = |encoding| (Codec::Whatwg(encoding), false);
        let (codec, ascii_safe) = match name {
            "UTF8" => (Codec::Utf8, true),
            "SQL_ASCII" => (Codec::SqlAscii, true),
            "LATIN1" => (Codec::Latin1, true),
            "LATIN2" => whatwg(rs::ISO_8859_2),
            "LATIN3" => whatwg(rs::ISO_8859_3),
            "LATIN4" => whatwg(rs::ISO_8859_4),
            // WHATWG maps ISO 8859-9 to windows-1254, a superset.
            "LATIN5" | "WIN1254" => whatwg(rs::WINDOWS_1254),
            "LATIN6" => whatwg(rs::ISO_8859_10),
            "LATIN7" => whatwg(rs::ISO_8859_13),
            "LATIN8" => whatwg(rs::ISO_8859_14),
            "LATIN9" => whatwg(rs::ISO_8859_15),
            "LATIN10" => whatwg(rs::ISO_8859_16),
            "ISO_8859_5" => whatwg(rs::ISO_8859_5),
            "ISO_8859_6" => whatwg(rs::ISO_8859_6),
            "ISO_8859_7" => whatwg(rs::ISO_8859_7),
            "ISO_8859_8" => whatwg(rs::ISO_8859_8),
            "WIN866" => whatwg(rs::IBM866),
            "WIN874" => whatwg(rs::WINDOWS_874),
            "WIN1250" => whatwg(rs::WINDOWS_1250),
            "WIN1251" => whatwg(rs::WINDOWS_1251),
            "WIN1252" => whatwg(rs::WINDOWS_1252),
            "WIN1253" => whatwg(rs::WINDOWS_1253),
            "WIN1255" => whatwg(rs::WINDOWS_1255),
            "WIN1256" => whatwg(rs::WINDOWS_1256),
            "WIN1257" => whatwg(rs::WINDOWS_1257),
            "WIN1258" => whatwg(rs::WINDOWS_1258),
            "KOI8R" => whatwg(rs::KOI8_R),
            "KOI8U" => whatwg(rs::KOI8_U),
            // EUC encodings: every byte of a multibyte character is above 0x7f.
            "EUC_JP" | "EUC_JIS_2004" => whatwg(rs::EUC_JP),
            "EUC_KR" => whatwg(rs::EUC_KR),
            "EUC_CN" => whatwg(rs::GBK),
            // Client-only encodings whose trail bytes can be ASCII.
            "SJIS" | "SHIFT_JIS_2004" => double_byte(rs::SHIFT_JIS),
            "BIG5" => double_byte(rs::BIG5),
            "GBK" => double_byte(rs::GBK),
            "UHC" => double_byte(rs::EUC_KR),
            "GB18030" => double_byte(rs::GB18030),
            "JOHAB" => (Codec::Opaque, false),
            _ => (Codec::Opaque, true),
        };
        Self {
            name,
            codec,
            ascii_safe,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The text, and whether it decoded without error. Undecodable bytes become
    /// U+FFFD: what Tollgate reads of them, never what it relays.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> (Cow<'a, str>, bool) {
        let utf8 = |bytes: &'a [u8]| match std::str::from_utf8(bytes) {
            Ok(text) => (Cow::Borrowed(text), true),
            Err(_) => (String::from_utf8_lossy(bytes), false),
        };
        match self.codec {
            // One pass: UTF-8 validation reads pure ASCII as ASCII. SQL_ASCII is read
            // as UTF-8 where it is, lossily where it is not.
            Codec::Utf8 | Codec::SqlAscii => utf8(bytes),
            // Every client encoding reads pure ASCII as ASCII.
            _ if bytes.is_ascii() => utf8(bytes),
            Codec::Latin1 => (
                Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
                true,
            ),
            Codec::Whatwg(encoding) => {
                let (text, had_errors) = encoding.decode_without_bom_handling(bytes);
                (text, !had_errors)
            }
            Codec::Opaque => (
                Cow::Owned(
                    bytes
                        .iter()
                        .map(|&b| {
                            if b.is_ascii() {
                                char::from(b)
                            } else {
                                '\u{fffd}'
                            }
                        })
                        .collect(),
                ),
                false,
            ),
        }
    }

    /// Decodes for reading, lossily.
    pub fn lossy(&self, bytes: &[u8]) -> String {
        self.decode(bytes).0.into_owned()
    }

    /// Tollgate's own text in this encoding; a character it cannot hold becomes `?`.
    pub fn encode<'a>(&self, text: &'a str) -> Cow<'a, [u8]> {
        if text.is_ascii() {
            return Cow::Borrowed(text.as_bytes());
        }
        match self.codec {
            Codec::Utf8 | Codec::SqlAscii => Cow::Borrowed(text.as_bytes()),
            Codec::Latin1 => Cow::Owned(
                text.chars()
                    .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                    .collect(),
            ),
            Codec::Whatwg(encoding) => {
                let mut out = Vec::with_capacity(text.len());
                let mut encoder = encoding.new_encoder();
                for c in text.chars() {
                    let mut buf = [0u8; 4];
                    let one = c.encode_utf8(&mut buf);
                    let mut bytes = [0u8; 8];
                    let (result, _, written) =
                        encoder.encode_from_utf8_without_replacement(one, &mut bytes, false);
                    match result {
                        encoding_rs::EncoderResult::InputEmpty => {
                            out.extend_from_slice(&bytes[..written]);
                        }
                        _ => out.push(b'?'),
                    }
                }
                Cow::Owned(out)
            }
            Codec::Opaque => Cow::Owned(
                text.chars()
                    .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
                    .collect(),
            ),
        }
    }

    /// The bytes with every byte of a multibyte character set above 0x7f, so that an
    /// ASCII pattern cannot match inside one. Borrowed where the encoding is ASCII-safe.
    pub fn ascii_view<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        if self.ascii_safe || bytes.is_ascii() {
            return Cow::Borrowed(bytes);
        }
        let mut view = bytes.to_vec();
        let mut i = 0;
        while i < view.len() {
            let width = self.char_width(&view[i..]);
            if width > 1 {
                for b in view.iter_mut().skip(i).take(width) {
                    *b = 0xff;
                }
            }
            i += width.max(1);
        }
        Cow::Owned(view)
    }

    /// The width of the character that starts `rest` in a double-byte encoding.
    fn char_width(&self, rest: &[u8]) -> usize {
        let lead = rest[0];
        if lead < 0x80 {
            return 1;
        }
        match self.name {
            // Half-width katakana are single bytes.
            "SJIS" | "SHIFT_JIS_2004" if (0xa1..=0xdf).contains(&lead) => 1,
            "GB18030" if rest.get(1).is_some_and(|b| b.is_ascii_digit()) => 4.min(rest.len()),
            _ => 2.min(rest.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_as_postgres_resolves_them() {
        assert!(
            NAMES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted for search"
        );
        for (value, name) in [
            (&b"UTF8"[..], "UTF8"),
            (b"utf-8", "UTF8"),
            (b"Unicode", "UTF8"),
            (b"LATIN9", "LATIN9"),
            (b"iso-8859-15", "LATIN9"),
            (b"WIN1252", "WIN1252"),
            (b"SJIS", "SJIS"),
            (b"Shift_JIS", "SJIS"),
            (b"EUC_JP", "EUC_JP"),
            (b"SQL_ASCII", "SQL_ASCII"),
        ] {
            assert_eq!(
                ClientEncoding::from_name(value).map(|e| e.name()),
                Some(name),
                "{value:?}"
            );
        }
        assert_eq!(ClientEncoding::from_name(b"klingon"), None);
    }

    #[test]
    fn decodes_and_encodes_legacy_encodings() {
        let latin9 = ClientEncoding::from_name(b"LATIN9").unwrap();
        assert_eq!(
            latin9.decode(b"caf\xe9 \xa4"),
            (Cow::Borrowed("café €"), true)
        );
        assert_eq!(latin9.encode("café €").as_ref(), b"caf\xe9 \xa4");
        let latin1 = ClientEncoding::from_name(b"LATIN1").unwrap();
        assert_eq!(latin1.decode(b"\xe9\x80").0, "é\u{80}");
        let win1252 = ClientEncoding::from_name(b"WIN1252").unwrap();
        assert_eq!(win1252.decode(b"\x80").0, "€");
        let sjis = ClientEncoding::from_name(b"SJIS").unwrap();
        // 表 is 0x95 0x5c in Shift_JIS: its trail byte is a backslash.
        assert_eq!(sjis.decode(b"\x95\x5c").0, "表");
        assert_eq!(sjis.encode("表").as_ref(), b"\x95\x5c");
        let eucjp = ClientEncoding::from_name(b"EUC_JP").unwrap();
        assert_eq!(eucjp.decode(b"\xc9\xbd").0, "表");
        // Invalid UTF-8 is read lossily, and said to be so.
        let (text, clean) = ClientEncoding::UTF8.decode(b"a\xff");
        assert_eq!((text.as_ref(), clean), ("a\u{fffd}", false));
        assert_eq!(latin9.encode("☃").as_ref(), b"?");
    }

    #[test]
    fn the_ascii_view_hides_trail_bytes() {
        let sjis = ClientEncoding::from_name(b"SJIS").unwrap();
        // ア (half-width, one byte), then 表 (0x95 0x5c), then "@x".
        let view = sjis.ascii_view(b"\xb1\x95\x5c@x");
        assert_eq!(view.as_ref(), b"\xb1\xff\xff@x");
        assert!(matches!(
            ClientEncoding::UTF8.ascii_view("é@x".as_bytes()),
            Cow::Borrowed(_)
        ));
    }
}
