//! True and false examples for each detector: secrets in prose, JSON and CSV; and the
//! data that merely looks like them (UUIDs, versions, timestamps, addresses, order
//! numbers, hashes, bit strings, phone numbers, floats).
use super::*;
use crate::postgres::mask::ALL_DETECTORS;

/// What `detector` changes `text` into.
fn masked(detector: Detector, text: &str) -> String {
    let mut out = Vec::new();
    let mut at = 0;
    for finding in find(detector, text.as_bytes()) {
        out.extend_from_slice(&text.as_bytes()[at..finding.span.start]);
        out.extend_from_slice(&finding.replacement);
        at = finding.span.end;
    }
    out.extend_from_slice(&text.as_bytes()[at..]);
    String::from_utf8(out).expect("ASCII replacements keep UTF-8")
}

fn check(detector: Detector, finds: &[(&str, &str)], ignores: &[&str]) {
    for (text, expected) in finds {
        assert_eq!(
            &masked(detector, text),
            expected,
            "{detector:?} on {text:?}"
        );
    }
    for text in ignores {
        assert_eq!(
            &masked(detector, text),
            text,
            "{detector:?} changed {text:?}"
        );
    }
}

/// Ordinary data that no detector may touch.
const LOOKALIKES: &[&str] = &[
    "00000000-0000-0000-0000-000000019992",
    "550e8400-e29b-41d4-a716-446655440000",
    "4567890123456791.5",
    "0.881373587019543",
    "12.34567890123456",
    "-4111111111111111.25",
    "1.2.3.4111111111111111",
    "v4111111111111111",
    "4111111111111111x",
    "id_4111111111111111",
    "0000000000000000",
    "1111111111111111",
    "4444444444444444",
    "1010101010101010",
    "0110100001101001",
    "2024-01-01 12:34:56.789012+00",
    "2024-01-01T12:34:56Z",
    "192.168.100.200",
    "2001:db8::4111:1111:1111:1111",
    "ORD-4111111111111111-2024",
    "order 2024011512345678",
    "d41d8cd98f00b204e9800998ecf8427e",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "deadbeef4111111111111111cafe",
    "+1 415 555 0100",
    "+44 20 7946 0958",
    "(415) 555-0100",
    "1.0.0-beta.4111111111111111",
    "package@1.2.3",
    "user@localhost",
    "@scope/pkg@2.0.0",
    "git@github",
    "eyJ is not a token",
    "DE89 3704 0044 0532 0130 0",
    "XX89370400440532013000",
    "DE00370400440532013000",
    "AKIA is a prefix",
    "NOTAKIAIOSFODNN7EXAMPLE",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 4111111111111111.0",
];

#[test]
fn no_detector_fires_on_lookalikes() {
    for text in LOOKALIKES {
        for detector in ALL_DETECTORS {
            assert_eq!(
                &masked(detector, text),
                text,
                "{detector:?} changed {text:?}"
            );
        }
    }
}

#[test]
fn cards() {
    check(
        Detector::Card,
        &[
            ("card 4111 1111 1111 1111.", "card ************1111."),
            ("4111-1111-1111-1111", "************1111"),
            ("4111111111111111", "************1111"),
            ("amex 3782 822463 10005 ok", "amex ***********0005 ok"),
            ("378282246310005", "***********0005"),
            ("mc 5555555555554444,", "mc ************4444,"),
            ("mc2 2223003122003222", "mc2 ************3222"),
            ("discover 6011111111111117", "discover ************1117"),
            ("jcb 3530111333300000", "jcb ************0000"),
            ("diners 3056 930902 5904", "diners **********5904"),
            (
                r#"{"card": "4012888888881881", "n": 1}"#,
                r#"{"card": "************1881", "n": 1}"#,
            ),
            (
                "id,card\n7,4012888888881881\n",
                "id,card\n7,************1881\n",
            ),
            (
                "paid with 4111 1111 1111 1111 2025",
                "paid with ************1111 2025",
            ),
            ("visa13 4222222222222", "visa13 *********2222"),
        ],
        &[
            "4111 1111 1111 1112",
            "4111-1111 1111-1111",
            "41111 1111 1111 111",
            "411 1111 1111 11111",
            "4111--1111-1111-1111",
            "1234 5678 9012 3452",
            "7111111111111114",
            "9111111111111115",
            "41111111111111111111",
            "4111111111111111111111",
        ],
    );
}

#[test]
fn card_inputs_without_their_prefix_are_not_cards() {
    // The issue's examples: ordinary ids and digits that pass the Luhn check.
    assert!(luhn(b"4567890123456791"));
    assert_eq!(
        masked(Detector::Card, "4567890123456791"),
        "************6791"
    );
    for text in [
        "0.881373587019543",
        "12.34567890123456",
        "00000000-0000-0000-0000-000000019992",
        "0000000000000000",
    ] {
        assert_eq!(masked(Detector::Card, text), text);
    }
}

#[test]
fn emails() {
    check(
        Detector::Email,
        &[
            ("mail alice@example.com now", "mail ****@example.com now"),
            (
                "<bob.smith+ci@mail.example.co.uk>",
                "<****@mail.example.co.uk>",
            ),
            (r#"{"to":"x@y.io"}"#, r#"{"to":"****@y.io"}"#),
            ("a,carol@example.org,b", "a,****@example.org,b"),
            (
                "postgres://app:hunter2@db.example.com/shop",
                "postgres://app:****@db.example.com/shop",
            ),
        ],
        &[
            "user@localhost",
            "pkg@1.2.3",
            "a@b.c",
            "alice@example.com1",
            "@example.com",
        ],
    );
}

#[test]
fn jwts() {
    let token =
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let prose = format!("Bearer {token} sent");
    let json = format!(r#"{{"token":"{token}"}}"#);
    check(
        Detector::Jwt,
        &[
            (prose.as_str(), "Bearer [masked-jwt] sent"),
            (json.as_str(), r#"{"token":"[masked-jwt]"}"#),
        ],
        &[
            // A header that is not JSON with an algorithm.
            "eyJub3RoaW5nIjoxfQ.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N",
            "xeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0",
        ],
    );
}

#[test]
fn aws_keys() {
    check(
        Detector::AwsKey,
        &[
            ("key AKIAIOSFODNN7EXAMPLE", "key AKIA****************"),
            ("id=ASIAIOSFODNN7EXAMPLE;", "id=ASIA****************;"),
            (
                r#"{"k":"AKIAIOSFODNN7EXAMPLE"}"#,
                r#"{"k":"AKIA****************"}"#,
            ),
        ],
        &[
            "AKIAIOSFODNN7EXAMPL",
            "AKIAIOSFODNN7EXAMPLEX",
            "akiaiosfodnn7example",
            "XAKIAIOSFODNN7EXAMPLE",
        ],
    );
}

#[test]
fn pems() {
    check(
        Detector::Pem,
        &[(
            "k=-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----;",
            "k=[masked-private-key];",
        )],
        &[
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "-----BEGIN PRIVATE KEY----- never ends",
        ],
    );
}

#[test]
fn ibans() {
    check(
        Detector::Iban,
        &[
            (
                "iban GB82 WEST 1234 5698 7654 32",
                "iban GB********************",
            ),
            ("DE89370400440532013000", "DE********************"),
            ("pay NL91ABNA0417164300.", "pay NL****************."),
            (
                r#"{"iban":"FR1420041010050500013M02606"}"#,
                r#"{"iban":"FR*************************"}"#,
            ),
        ],
        &[
            "GB82 WEST 1234 5698 7654 33",
            "DE89370400440532013001",
            "DE8937040044053201300",
            "DE893704004405320130001",
            "XDE89370400440532013000",
            "GB82WEST12345698765432X",
            "GB82 WES T123 4569 8765 432",
            "ZZ89370400440532013000",
        ],
    );
}

/// Every replacement is ASCII without quotes, braces, commas, backslashes, angle
/// brackets, ampersands, parentheses or whitespace: valid as it stands in a text value,
/// a JSON string, an unquoted array element, a composite field or XML text.
#[test]
fn replacements_are_safe_in_every_text_type() {
    let samples = [
        "alice@example.com",
        "4111 1111 1111 1111",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "AKIAIOSFODNN7EXAMPLE",
        "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----",
        "GB82 WEST 1234 5698 7654 32",
    ];
    for (detector, sample) in ALL_DETECTORS.into_iter().zip(samples) {
        let findings = find(detector, sample.as_bytes());
        assert_eq!(findings.len(), 1, "{detector:?} on {sample:?}");
        for finding in findings {
            assert!(
                finding.replacement.iter().all(|b| b.is_ascii_graphic()
                    && !matches!(
                        b,
                        b'"' | b'\''
                            | b'{'
                            | b'}'
                            | b','
                            | b'\\'
                            | b'<'
                            | b'>'
                            | b'&'
                            | b'('
                            | b')'
                    )),
                "{detector:?}: {:?}",
                String::from_utf8_lossy(&finding.replacement)
            );
        }
    }
}

/// The prefilter never rules out a text its detector would change.
#[test]
fn the_prefilter_is_a_necessary_condition() {
    let samples = [
        "dana@example.com",
        "4111 1111 1111 1111",
        "4111111111111111",
        "5500 0000 0000 0004 tail",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "AKIAIOSFODNN7EXAMPLE",
        "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----",
        "GB82 WEST 1234 5698 7654 32",
        "NO9386011117947",
    ];
    for text in samples {
        let any = ALL_DETECTORS.into_iter().any(|d| masked(d, text) != text);
        assert!(any, "nothing found in {text:?}");
        for detector in ALL_DETECTORS {
            if masked(detector, text) != text {
                assert!(
                    might_match(detector, text.as_bytes()),
                    "{detector:?} {text:?}"
                );
            }
        }
    }
    for detector in ALL_DETECTORS {
        assert!(!might_match(
            detector,
            b"SELECT abalance FROM t WHERE aid = 42"
        ));
    }
}
