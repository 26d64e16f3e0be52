//! The value detectors. Each finds secrets in bytes whose ASCII characters are ASCII
//! (see `ClientEncoding::ascii_view`), and only where a secret stands on its own: a
//! digit run inside a longer number, a UUID, a float or a hex hash is not a card number.
use std::{ops::Range, sync::OnceLock};

use base64::Engine as _;
use regex::bytes::Regex;

use super::Detector;

/// One finding: where it is, and what replaces it (ASCII, valid wherever the original
/// stood: in a text value, a JSON string, an array element or XML text).
pub struct Finding {
    pub span: Range<usize>,
    pub replacement: Vec<u8>,
}

/// What `detector` finds in `text`, in order and without overlaps.
pub fn find(detector: Detector, text: &[u8]) -> Vec<Finding> {
    if !might_match(detector, text) {
        return Vec::new();
    }
    match detector {
        Detector::Email => emails(text),
        Detector::Card => cards(text),
        Detector::Jwt => jwts(text),
        Detector::AwsKey => aws_keys(text),
        Detector::Pem => pems(text),
        Detector::Iban => ibans(text),
    }
}

/// A cheap necessary condition for `detector` to find anything in `text`: most values
/// (numbers, short words, identifiers) are ruled out without scanning further.
pub fn might_match(detector: Detector, text: &[u8]) -> bool {
    match detector {
        Detector::Email => text.contains(&b'@'),
        Detector::Card => text.iter().filter(|b| b.is_ascii_digit()).count() >= 13,
        Detector::Jwt => text.windows(3).any(|w| w == b"eyJ"),
        Detector::AwsKey => {
            text.len() >= 20
                && text
                    .windows(4)
                    .any(|w| matches!(w, b"AKIA" | b"ASIA" | b"ABIA" | b"ACCA"))
        }
        Detector::Pem => text.windows(10).any(|w| w == b"-----BEGIN"),
        // Two capital letters, then two digits, then at least eleven more characters.
        Detector::Iban => text.windows(4).enumerate().any(|(i, w)| {
            w[0].is_ascii_uppercase()
                && w[1].is_ascii_uppercase()
                && w[2].is_ascii_digit()
                && w[3].is_ascii_digit()
                && text.len() - i >= 15
        }),
    }
}

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| match Regex::new(pattern) {
        Ok(regex) => regex,
        // The patterns are constants covered by the unit tests.
        Err(error) => panic!("masking pattern {pattern}: {error}"),
    })
}

/// Whether `byte` may stand next to a number or code that is a secret on its own: not
/// a digit, a letter (ASCII or not), `-`, `.` or `_`.
fn is_boundary(byte: Option<&u8>) -> bool {
    match byte {
        None => true,
        Some(&b) => !(b.is_ascii_alphanumeric() || b >= 0x80 || matches!(b, b'-' | b'.' | b'_')),
    }
}

/// Whether what follows `end` ends a secret: a boundary, or a `.` or `-` that is not
/// followed by a letter or digit (the end of a sentence, not a decimal or a longer code).
fn ends_at(text: &[u8], end: usize) -> bool {
    match text.get(end) {
        Some(b'.' | b'-') => !text
            .get(end + 1)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b >= 0x80),
        other => is_boundary(other),
    }
}

fn bounded(text: &[u8], span: &Range<usize>) -> bool {
    let before = span.start.checked_sub(1).and_then(|i| text.get(i));
    is_boundary(before) && ends_at(text, span.end)
}

fn emails(text: &[u8]) -> Vec<Finding> {
    static EMAIL: OnceLock<Regex> = OnceLock::new();
    let pattern = regex(
        &EMAIL,
        r"(?-u)[A-Za-z0-9._%+-]+@([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24})\b",
    );
    pattern
        .captures_iter(text)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let domain = c.get(1)?;
            let mut replacement = b"****@".to_vec();
            replacement.extend_from_slice(domain.as_bytes());
            Some(Finding {
                span: whole.range(),
                replacement,
            })
        })
        .collect()
}

/// Card number layouts, as digit-group lengths: 4-4-4-4, Amex 4-6-5, Diners 4-6-4, and
/// 19-digit 4-4-4-4-3. Without separators, any length from 13 to 19.
const CARD_GROUPS: [&[usize]; 4] = [&[4, 4, 4, 4], &[4, 6, 5], &[4, 6, 4], &[4, 4, 4, 4, 3]];

fn cards(text: &[u8]) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        if !is_boundary(i.checked_sub(1).and_then(|p| text.get(p))) {
            // Inside a longer token ("v4111", "1.4111"): skip its digits.
            while i < text.len() && text[i].is_ascii_digit() {
                i += 1;
            }
            continue;
        }
        // A run of digit groups with one kind of separator between them.
        let start = i;
        let mut groups: Vec<Range<usize>> = Vec::new();
        let mut separator = None;
        let mut j = i;
        loop {
            let group = j;
            while j < text.len() && text[j].is_ascii_digit() {
                j += 1;
            }
            groups.push(group..j);
            match (text.get(j), text.get(j + 1)) {
                (Some(&sep @ (b' ' | b'-')), Some(next))
                    if next.is_ascii_digit() && separator.is_none_or(|s| s == sep) =>
                {
                    separator = Some(sep);
                    j += 1;
                }
                _ => break,
            }
        }
        i = j;
        let lengths: Vec<usize> = groups.iter().map(ExactSizeIterator::len).collect();
        let end = if lengths.len() == 1 {
            (13..=19).contains(&lengths[0]).then_some(j)
        } else {
            CARD_GROUPS.iter().find_map(|layout| {
                let n = layout.len();
                let fits = lengths.len() >= n && lengths[..n] == **layout;
                // Exactly the layout, or (space-separated in prose) the layout followed
                // by a space and more digits: "4111 1111 1111 1111 2025".
                (fits && (lengths.len() == n || separator == Some(b' '))).then(|| groups[n - 1].end)
            })
        };
        let Some(end) = end else { continue };
        if !ends_at(text, end) {
            continue;
        }
        let digits: Vec<u8> = text[start..end]
            .iter()
            .copied()
            .filter(u8::is_ascii_digit)
            .collect();
        if is_card_number(&digits) {
            let mut replacement = vec![b'*'; digits.len() - 4];
            replacement.extend_from_slice(&digits[digits.len() - 4..]);
            found.push(Finding {
                span: start..end,
                replacement,
            });
        }
    }
    found
}

/// 13 to 19 digits of a known issuer's range and length, not all alike, with a valid
/// Luhn check digit.
pub fn is_card_number(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len())
        && digits.iter().any(|&d| d != digits[0])
        && known_issuer(digits)
        && luhn(digits)
}

fn known_issuer(digits: &[u8]) -> bool {
    let prefix = |n: usize| -> u32 {
        digits[..n]
            .iter()
            .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let len = digits.len();
    let p2 = prefix(2);
    let p3 = prefix(3);
    let p4 = prefix(4);
    let p6 = prefix(6);
    match digits[0] {
        // Visa
        b'4' => matches!(len, 13 | 16 | 19),
        // Mastercard 2221-2720, Mir 2200-2204
        b'2' => {
            ((2221..=2720).contains(&p4) && len == 16) || ((2200..=2204).contains(&p4) && len >= 16)
        }
        b'3' => {
            // Amex 34/37; Diners 300-305, 36, 38, 39; JCB 3528-3589
            (matches!(p2, 34 | 37) && len == 15)
                || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39)) && len >= 14)
                || ((3528..=3589).contains(&p4) && len >= 16)
        }
        // Mastercard 51-55; Maestro 50, 56-58
        b'5' => ((51..=55).contains(&p2) && len == 16) || (matches!(p2, 50 | 56..=58) && len >= 13),
        // Discover 6011, 644-649, 65, 622126-622925; UnionPay 62; Maestro 6304, 67xx
        b'6' => {
            (p4 == 6011
                || (644..=649).contains(&p3)
                || p2 == 65
                || (622_126..=622_925).contains(&p6)
                || p2 == 62)
                && len >= 16
                || ((p4 == 6304 || p2 == 67) && len >= 13)
        }
        _ => false,
    }
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn jwts(text: &[u8]) -> Vec<Finding> {
    static JWT: OnceLock<Regex> = OnceLock::new();
    let pattern = regex(
        &JWT,
        r"(?-u)(eyJ[A-Za-z0-9_-]{5,})\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
    );
    let base64url =
        |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    pattern
        .captures_iter(text)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let header = c.get(1)?;
            let before = whole.start().checked_sub(1).and_then(|i| text.get(i));
            if base64url(before) || base64url(text.get(whole.end())) {
                return None;
            }
            // The header is a JSON object that names its algorithm.
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header.as_bytes())
                .ok()?;
            let names_alg =
                decoded.starts_with(b"{") && decoded.windows(5).any(|w| w == b"\"alg\"");
            names_alg.then(|| Finding {
                span: whole.range(),
                replacement: b"[masked-jwt]".to_vec(),
            })
        })
        .collect()
}

fn aws_keys(text: &[u8]) -> Vec<Finding> {
    static AWS: OnceLock<Regex> = OnceLock::new();
    let pattern = regex(&AWS, r"(?-u)\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b");
    pattern
        .find_iter(text)
        .filter(|m| bounded(text, &m.range()))
        .map(|m| {
            let mut replacement = m.as_bytes()[..4].to_vec();
            replacement.extend_from_slice(&[b'*'; 16]);
            Finding {
                span: m.range(),
                replacement,
            }
        })
        .collect()
}

fn pems(text: &[u8]) -> Vec<Finding> {
    static PEM: OnceLock<Regex> = OnceLock::new();
    let pattern = regex(
        &PEM,
        r"(?s-u)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
    );
    pattern
        .find_iter(text)
        .map(|m| Finding {
            span: m.range(),
            replacement: b"[masked-private-key]".to_vec(),
        })
        .collect()
}

/// IBAN lengths by country (the SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"LY", 25),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SD", 18),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

fn ibans(text: &[u8]) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut i = 0;
    while i + 4 <= text.len() {
        match iban_at(text, i) {
            Some((end, compact)) => {
                let mut replacement = compact[..2].to_vec();
                replacement.extend(std::iter::repeat_n(b'*', compact.len() - 2));
                found.push(Finding {
                    span: i..end,
                    replacement,
                });
                i = end;
            }
            None => i += 1,
        }
    }
    found
}

/// An IBAN starting at `start`: compact (`DE89370400440532013000`) or printed in groups
/// of four (`GB82 WEST 1234 5698 7654 32`), of its country's length, with valid check
/// digits and standing on its own. Its end and its compact form.
fn iban_at(text: &[u8], start: usize) -> Option<(usize, Vec<u8>)> {
    let head = text.get(start..start + 4)?;
    let shaped = head[0].is_ascii_uppercase()
        && head[1].is_ascii_uppercase()
        && head[2].is_ascii_digit()
        && head[3].is_ascii_digit();
    if !shaped || !is_boundary(start.checked_sub(1).and_then(|p| text.get(p))) {
        return None;
    }
    let (_, length) = IBAN_LENGTHS.iter().find(|(cc, _)| cc[..] == head[..2])?;
    let mut compact = head.to_vec();
    let mut j = start + 4;
    let grouped = text.get(j) == Some(&b' ');
    let part = |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    while compact.len() < *length {
        if grouped && (compact.len() % 4 == 0) {
            if text.get(j) != Some(&b' ') {
                return None;
            }
            j += 1;
        }
        let b = text.get(j).filter(|b| part(b))?;
        compact.push(*b);
        j += 1;
    }
    (ends_at(text, j) && iban_checksum(&compact)).then_some((j, compact))
}

fn iban_checksum(iban: &[u8]) -> bool {
    let mut remainder: u32 = 0;
    for &ch in iban[4..].iter().chain(&iban[..4]) {
        let value = match ch {
            b'0'..=b'9' => u32::from(ch - b'0'),
            b'A'..=b'Z' => u32::from(ch - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

#[cfg(test)]
mod tests;
