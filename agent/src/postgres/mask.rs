//! Masking of sensitive values: columns chosen by name (scoped to targets, databases or
//! tables) and values found by detectors (emails, card numbers with a Luhn check, JWTs,
//! AWS access keys, PEM private keys, IBANs). Applied to what the client sees in
//! DataRows, and to the SQL text and parameters that are recorded.
use std::{borrow::Cow, sync::OnceLock};

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The value detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    Card,
    Jwt,
    AwsKey,
    Pem,
    Iban,
}

pub const ALL_DETECTORS: [Detector; 6] = [
    Detector::Email,
    Detector::Card,
    Detector::Jwt,
    Detector::AwsKey,
    Detector::Pem,
    Detector::Iban,
];

/// A rule masking whole columns by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    /// Column-name patterns, case-insensitive; `*` matches any run of characters.
    pub columns: Vec<String>,
    /// Only for these catalog targets (by name); empty: all.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Only for these databases; empty: all.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Only for statements that use one of these tables (`orders` or `public.orders`);
    /// empty: all.
    #[serde(default)]
    pub tables: Vec<String>,
}

/// The `[masking]` config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingConfig {
    pub enabled: bool,
    /// Value detectors applied to every text value.
    pub detectors: Vec<Detector>,
    pub rules: Vec<ColumnRule>,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            detectors: ALL_DETECTORS.to_vec(),
            rules: Vec::new(),
        }
    }
}

/// Case-insensitive glob with `*`.
fn glob(pattern: &str, name: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

fn same_table(rule: &str, used: &str) -> bool {
    let unqualified = |t: &str| t.rsplit('.').next().unwrap_or(t).to_ascii_lowercase();
    rule.eq_ignore_ascii_case(used)
        || (!rule.contains('.') && unqualified(used) == rule.to_ascii_lowercase())
}

/// Where a session is: what rules are scoped by.
pub struct Scope<'a> {
    pub target: &'a str,
    pub database: &'a str,
}

impl MaskingConfig {
    /// Whether `column` of a statement using `tables` is masked by a rule.
    pub fn masks_column(&self, scope: &Scope<'_>, tables: &[String], column: &str) -> bool {
        self.enabled
            && self.rules.iter().any(|rule| {
                (rule.targets.is_empty() || rule.targets.iter().any(|t| t == scope.target))
                    && (rule.databases.is_empty()
                        || rule.databases.iter().any(|d| d == scope.database))
                    && (rule.tables.is_empty()
                        || rule
                            .tables
                            .iter()
                            .any(|r| tables.iter().any(|t| same_table(r, t))))
                    && rule.columns.iter().any(|p| glob(p, column))
            })
    }

    /// The detectors' replacements in `text`; borrowed when nothing was found.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if !self.enabled || self.detectors.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut current = Cow::Borrowed(text);
        for detector in &self.detectors {
            if let Cow::Owned(changed) = redact_one(*detector, &current) {
                current = Cow::Owned(changed);
            }
        }
        current
    }
}

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| match Regex::new(pattern) {
        Ok(regex) => regex,
        // The patterns are constants covered by the unit tests.
        Err(error) => panic!("masking pattern {pattern}: {error}"),
    })
}

/// A cheap necessary condition for `detector`'s pattern to match `text`: most values
/// (numbers, short words, identifiers) are ruled out without running a regex.
fn might_match(detector: Detector, text: &str) -> bool {
    let bytes = text.as_bytes();
    match detector {
        Detector::Email => bytes.contains(&b'@'),
        // 13 to 19 digits.
        Detector::Card => bytes.iter().filter(|b| b.is_ascii_digit()).count() >= 13,
        Detector::Jwt => text.contains("eyJ"),
        Detector::AwsKey => {
            bytes.len() >= 20
                && ["AKIA", "ASIA", "ABIA", "ACCA"]
                    .iter()
                    .any(|p| text.contains(p))
        }
        Detector::Pem => text.contains("-----BEGIN"),
        // Two capital letters, then two digits, then at least eight more characters.
        Detector::Iban => bytes.windows(4).enumerate().any(|(i, w)| {
            w[0].is_ascii_uppercase()
                && w[1].is_ascii_uppercase()
                && w[2].is_ascii_digit()
                && w[3].is_ascii_digit()
                && bytes.len() - i >= 12
        }),
    }
}

fn redact_one(detector: Detector, text: &str) -> Cow<'_, str> {
    if !might_match(detector, text) {
        return Cow::Borrowed(text);
    }
    redact_regex(detector, text)
}

fn redact_regex(detector: Detector, text: &str) -> Cow<'_, str> {
    static EMAIL: OnceLock<Regex> = OnceLock::new();
    static CARD: OnceLock<Regex> = OnceLock::new();
    static JWT: OnceLock<Regex> = OnceLock::new();
    static AWS: OnceLock<Regex> = OnceLock::new();
    static PEM: OnceLock<Regex> = OnceLock::new();
    static IBAN: OnceLock<Regex> = OnceLock::new();
    match detector {
        Detector::Email => regex(&EMAIL, r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
            .replace_all(text, |c: &regex::Captures<'_>| {
                let email = &c[0];
                let domain = email.rsplit('@').next().unwrap_or_default();
                format!("****@{domain}")
            }),
        Detector::Card => regex(&CARD, r"\b(?:\d[ -]?){12,18}\d\b").replace_all(
            text,
            |c: &regex::Captures<'_>| {
                let digits: String = c[0].chars().filter(char::is_ascii_digit).collect();
                if luhn(&digits) {
                    format!(
                        "{}{}",
                        "*".repeat(digits.len() - 4),
                        &digits[digits.len() - 4..]
                    )
                } else {
                    c[0].to_owned()
                }
            },
        ),
        Detector::Jwt => regex(
            &JWT,
            r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
        )
        .replace_all(text, "[masked jwt]"),
        Detector::AwsKey => regex(&AWS, r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")
            .replace_all(text, |c: &regex::Captures<'_>| {
                format!("{}****************", &c[0][..4])
            }),
        Detector::Pem => regex(
            &PEM,
            r"(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
        )
        .replace_all(text, "[masked private key]"),
        Detector::Iban => regex(
            &IBAN,
            r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        )
        .replace_all(text, |c: &regex::Captures<'_>| {
            let compact: String = c[0].chars().filter(|ch| !ch.is_whitespace()).collect();
            if iban_valid(&compact) {
                format!("{}**{}", &compact[..2], "*".repeat(compact.len() - 4))
            } else {
                c[0].to_owned()
            }
        }),
    }
}

fn luhn(digits: &str) -> bool {
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
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

fn iban_valid(iban: &str) -> bool {
    if !(15..=34).contains(&iban.len()) {
        return false;
    }
    let rearranged = iban[4..].chars().chain(iban[..4].chars());
    let mut remainder: u32 = 0;
    for ch in rearranged {
        let value = match ch {
            '0'..='9' => ch as u32 - '0' as u32,
            'A'..='Z' => ch as u32 - 'A' as u32 + 10,
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

/// PostgreSQL types whose values are text: a masked value can stay a string.
pub fn is_text_type(oid: u32) -> bool {
    // text, varchar, bpchar, name, json, jsonb, xml, citext has a dynamic oid
    matches!(oid, 25 | 1043 | 1042 | 19 | 114 | 3802 | 142)
}

/// What a rule-masked column's value becomes: for text types a fixed string (valid in
/// text and binary format alike, and jsonb's binary format is a version byte and text),
/// for every other type NULL (valid for any type).
pub fn column_replacement(type_oid: u32, format: i16) -> Option<Vec<u8>> {
    match type_oid {
        3802 if format == 1 => Some(b"\x01\"****\"".to_vec()),
        114 | 3802 => Some(b"\"****\"".to_vec()),
        oid if is_text_type(oid) => Some(b"****".to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detectors_find_and_replace() {
        let config = MaskingConfig::default();
        let cases = [
            ("mail alice@example.com now", "mail ****@example.com now"),
            ("card 4111 1111 1111 1111.", "card ************1111."),
            (
                "not a card 4111 1111 1111 1112",
                "not a card 4111 1111 1111 1112",
            ),
            ("key AKIAIOSFODNN7EXAMPLE", "key AKIA****************"),
            (
                "t eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "t [masked jwt]",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
                "[masked private key]",
            ),
            (
                "iban GB82 WEST 1234 5698 7654 32",
                "iban GB********************",
            ),
            ("plain text 12345", "plain text 12345"),
        ];
        for (input, expected) in cases {
            assert_eq!(config.redact(input), expected, "{input}");
        }
        assert!(matches!(config.redact("nothing"), Cow::Borrowed(_)));
    }

    /// The prefilter never rules out a text its regex would change.
    #[test]
    fn the_prefilter_is_a_necessary_condition() {
        let samples = [
            "dana@example.com",
            "x@y.io and more",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "5500 0000 0000 0004 tail",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAIOSFODNN7EXAMPLE!",
            "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----",
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "NL91ABNA0417164300",
            "12345",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
            "",
        ];
        for text in samples {
            for detector in ALL_DETECTORS {
                let changed = matches!(
                    redact_regex(detector, text),
                    Cow::Owned(ref s) if s != text
                );
                assert!(
                    !changed || might_match(detector, text),
                    "{detector:?} would change {text:?} but the prefilter rules it out"
                );
            }
        }
        // And it does rule out the common case.
        for detector in ALL_DETECTORS {
            assert!(!might_match(
                detector,
                "SELECT abalance FROM t WHERE aid = 42"
            ));
            assert!(!might_match(detector, "12345"));
        }
    }

    #[test]
    fn rules_match_columns_in_scope() {
        let config = MaskingConfig {
            rules: vec![ColumnRule {
                columns: vec!["*email*".to_owned(), "ssn".to_owned()],
                targets: vec!["prod-db".to_owned()],
                databases: vec![],
                tables: vec!["customers".to_owned()],
            }],
            ..MaskingConfig::default()
        };
        let scope = Scope {
            target: "prod-db",
            database: "shop",
        };
        let tables = vec!["public.customers".to_owned()];
        assert!(config.masks_column(&scope, &tables, "Contact_Email"));
        assert!(config.masks_column(&scope, &tables, "ssn"));
        assert!(!config.masks_column(&scope, &tables, "name"));
        assert!(!config.masks_column(&scope, &["orders".to_owned()], "email"));
        let other = Scope {
            target: "staging-db",
            database: "shop",
        };
        assert!(!config.masks_column(&other, &tables, "email"));
        assert!(glob("a*b*c", "axxbyyc") && !glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn replacements_are_valid_for_their_types() {
        assert_eq!(column_replacement(25, 0).as_deref(), Some(&b"****"[..]));
        assert_eq!(column_replacement(23, 0), None, "int4 becomes NULL");
        assert_eq!(
            column_replacement(3802, 1).as_deref(),
            Some(&b"\x01\"****\""[..])
        );
    }
}
