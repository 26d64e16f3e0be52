//! Masking of sensitive values: columns chosen by name (scoped to targets, databases or
//! tables) and values found by detectors (emails, card numbers of known issuers with a
//! Luhn check, JWTs, AWS access keys, PEM private keys, IBANs with their check digits).
//!
//! Recordings (SQL text and parameters) always go through the detectors. What the
//! client sees is changed only by column rules, unless `results = "detect"` (globally or
//! on a target) lets the detectors read result values too, and then only values of
//! text-like types (see `types`).
mod detect;
mod json;
pub mod plan;
pub mod types;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
pub use tollgate_policy::ResultsMasking;

use super::encoding::ClientEncoding;
use types::TextShape;

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
    /// Value detectors: always applied to what is recorded.
    pub detectors: Vec<Detector>,
    /// What masks the results clients see: column rules only (`rules`, the default), or
    /// the detectors too (`detect`) on values of text-like types. A target's
    /// `masking.results` overrides it.
    pub results: ResultsMasking,
    pub rules: Vec<ColumnRule>,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            detectors: ALL_DETECTORS.to_vec(),
            results: ResultsMasking::Rules,
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

    /// The detectors' replacements in `bytes` of a value in `encoding`; borrowed when
    /// nothing was found. Only ASCII is matched and replaced, so the bytes around a
    /// finding stay as they were in any client encoding.
    pub fn redact_bytes<'t>(&self, bytes: &'t [u8], encoding: &ClientEncoding) -> Cow<'t, [u8]> {
        self.redact_where(bytes, encoding, |_, _| true)
    }

    /// A row of a text or CSV COPY TO: COPY gives no column types, so a bare run of
    /// digits (an integer or numeric field, or a number inside any value) is never taken
    /// for a card number; cards printed with separators still are.
    pub fn redact_copy_row<'t>(&self, row: &'t [u8], encoding: &ClientEncoding) -> Cow<'t, [u8]> {
        self.redact_where(row, encoding, |detector, found| {
            detector != Detector::Card || !found.iter().all(u8::is_ascii_digit)
        })
    }

    /// The detectors' findings for which `keep(detector, found bytes)`, replaced.
    fn redact_where<'t>(
        &self,
        bytes: &'t [u8],
        encoding: &ClientEncoding,
        keep: impl Fn(Detector, &[u8]) -> bool,
    ) -> Cow<'t, [u8]> {
        if !self.enabled || self.detectors.is_empty() {
            return Cow::Borrowed(bytes);
        }
        let mut current = Cow::Borrowed(bytes);
        // What the detectors read; made again only after a replacement.
        let mut view = encoding.ascii_view(bytes);
        for detector in &self.detectors {
            let findings: Vec<detect::Finding> = detect::find(*detector, &view)
                .into_iter()
                .filter(|f| keep(*detector, &view[f.span.clone()]))
                .collect();
            if findings.is_empty() {
                continue;
            }
            let mut out = Vec::with_capacity(current.len());
            let mut at = 0;
            for finding in findings {
                out.extend_from_slice(&current[at..finding.span.start]);
                out.extend_from_slice(&finding.replacement);
                at = finding.span.end;
            }
            out.extend_from_slice(&current[at..]);
            view = Cow::Owned(encoding.ascii_view(&out).into_owned());
            current = Cow::Owned(out);
        }
        current
    }

    /// The detectors' replacements in `text` (what is recorded); borrowed when nothing
    /// was found.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.redact_bytes(text.as_bytes(), &ClientEncoding::UTF8) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Findings and replacements are ASCII: the rest is the UTF-8 it was.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// A text-like value as the detectors leave it, shaped as its type and format say;
    /// None when nothing changed.
    pub fn redact_value(
        &self,
        value: &[u8],
        shape: TextShape,
        encoding: &ClientEncoding,
    ) -> Option<Vec<u8>> {
        let mut text = |bytes: &[u8]| match self.redact_bytes(bytes, encoding) {
            Cow::Owned(masked) => Some(masked),
            Cow::Borrowed(_) => None,
        };
        match shape {
            TextShape::Text => text(value),
            TextShape::JsonbBinary => {
                let (version, rest) = value.split_first()?;
                text(rest).map(|masked| [&[*version][..], &masked].concat())
            }
            TextShape::ArrayBinary => types::mask_binary_array(value, &mut text),
        }
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
                "t [masked-jwt]",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
                "[masked-private-key]",
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
        let off = MaskingConfig {
            enabled: false,
            ..MaskingConfig::default()
        };
        assert_eq!(off.redact("alice@example.com"), "alice@example.com");
    }

    /// In an encoding whose trail bytes can be ASCII, nothing matches inside a
    /// character, and the bytes around a finding are kept as they were.
    #[test]
    fn detectors_keep_the_client_encoding() {
        let config = MaskingConfig::default();
        let sjis = ClientEncoding::from_name(b"SJIS").expect("SJIS");
        // 表 (0x95 0x5c) then "@example.com": the trail byte is not a local part.
        let value = b"\x95\x5c@example.com";
        assert!(matches!(
            config.redact_bytes(value, &sjis),
            Cow::Borrowed(_)
        ));
        let value = b"\x95\x5c bob@example.com \x95\x5c";
        assert_eq!(
            config.redact_bytes(value, &sjis).as_ref(),
            b"\x95\x5c ****@example.com \x95\x5c"
        );
        let latin9 = ClientEncoding::from_name(b"LATIN9").expect("LATIN9");
        assert_eq!(
            config
                .redact_bytes(b"\xe9 bob@example.com \xa4", &latin9)
                .as_ref(),
            b"\xe9 ****@example.com \xa4"
        );
    }

    #[test]
    fn values_are_masked_in_their_shape() {
        let config = MaskingConfig::default();
        let utf8 = ClientEncoding::UTF8;
        assert_eq!(
            config.redact_value(
                b"\x01{\"a\": \"x@example.com\"}",
                TextShape::JsonbBinary,
                &utf8
            ),
            Some(b"\x01{\"a\": \"****@example.com\"}".to_vec())
        );
        assert_eq!(
            config.redact_value(b"ordinary", TextShape::Text, &utf8),
            None
        );
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
}
