//! A statement's shape: its text with the literal constants blanked, so that statements
//! that differ only in constants (`... WHERE aid = 17` and `... WHERE aid = 42`) share one
//! classification without a parse. Only computed when PostgreSQL's lexer cannot see the
//! text differently from this one: anything with comments, dollar quotes, backslashes
//! (escape-string and `standard_conforming_strings` rules), Unicode escapes (`U&`, whose
//! `UESCAPE` literal changes identifiers), parameters or several statements has no shape
//! and goes to the parser.

/// The shape of `sql`, or `None` when it has none (see the module docs).
pub fn shape(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    if b.iter().any(|c| matches!(c, b'\\' | b'$' | b'&'))
        || sql.contains("--")
        || sql.contains("/*")
    {
        return None;
    }
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    // Whether the previous character continues an identifier or keyword (a digit there
    // is part of a name, not a number).
    let mut in_word = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let end = closing(b, i, b'\'')?;
                out.push_str("'?'");
                i = end + 1;
                in_word = false;
            }
            b'"' => {
                // A quoted identifier stays as it is.
                let end = closing(b, i, b'"')?;
                out.push_str(&sql[i..=end]);
                i = end + 1;
                in_word = true;
            }
            b'0'..=b'9' if !in_word => {
                i = number_end(b, i)?;
                out.push('0');
                in_word = false;
            }
            b';' => {
                // Only trailing semicolons: several statements go to the parser.
                if !sql[i..]
                    .bytes()
                    .all(|c| c == b';' || c.is_ascii_whitespace())
                {
                    return None;
                }
                out.push(';');
                i += 1;
                in_word = false;
            }
            _ if c.is_ascii() => {
                out.push(char::from(c));
                in_word = c.is_ascii_alphanumeric() || c == b'_';
                i += 1;
            }
            _ => {
                // A non-ASCII character, copied whole; PostgreSQL takes it as part of a
                // name.
                let ch = sql[i..].chars().next()?;
                out.push(ch);
                i += ch.len_utf8();
                in_word = true;
            }
        }
    }
    Some(out)
}

/// The index of the quote closing the quoted run that starts at `start` (doubled quotes
/// are part of it), or `None` when it does not close.
fn closing(b: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut j = start + 1;
    loop {
        match b.get(j)? {
            &c if c == quote => {
                if b.get(j + 1) == Some(&quote) {
                    j += 2;
                } else {
                    return Some(j);
                }
            }
            _ => j += 1,
        }
    }
}

/// The end of the numeric constant starting at `start`: digits, at most one point, an
/// optional exponent. `None` for anything PostgreSQL might lex otherwise (`0x1F`,
/// `1_000`, `1abc`, `1.2.3`).
fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let mut j = start;
    let mut point = false;
    while let Some(&c) = b.get(j) {
        if c.is_ascii_digit() {
            j += 1;
        } else if c == b'.' && !point {
            point = true;
            j += 1;
        } else {
            break;
        }
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let digits = j;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j == digits {
            return None;
        }
    }
    match b.get(j) {
        Some(&c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || !c.is_ascii() => None,
        _ => Some(j),
    }
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn constants_are_blanked() {
        let a = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 17;").unwrap();
        let b = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 98765;").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, "SELECT abalance FROM pgbench_accounts WHERE aid = 0;");
        assert_eq!(
            shape("UPDATE t SET note = 'it''s', x = 1.5e-3 WHERE id = .5").unwrap(),
            "UPDATE t SET note = '?', x = 0 WHERE id = .0"
        );
        assert_eq!(
            shape("SELECT * FROM t1 JOIN \"T 2\" USING (id2)").unwrap(),
            "SELECT * FROM t1 JOIN \"T 2\" USING (id2)"
        );
        assert_eq!(
            shape("SELECT E'x', X'1F', DATE '2020-01-01'").unwrap(),
            "SELECT E'?', X'?', DATE '?'"
        );
    }

    #[test]
    fn names_and_structure_are_kept() {
        assert_ne!(
            shape("SELECT * FROM a").unwrap(),
            shape("SELECT * FROM b").unwrap()
        );
        assert_ne!(
            shape("SELECT * FROM t WHERE x = 1").unwrap(),
            shape("SELECT * FROM t WHERE y = 1").unwrap()
        );
        assert_ne!(
            shape("SELECT \"a\"\"b\" FROM t").unwrap(),
            shape("SELECT \"a\"\"c\" FROM t").unwrap()
        );
    }

    #[test]
    fn anything_the_lexer_could_read_otherwise_has_no_shape() {
        for sql in [
            // Comments can hide a quote or a statement.
            "SELECT 1 /* it's */; DROP TABLE users; /* ' */",
            "SELECT 1 -- it's\n; DROP TABLE users",
            // Several statements.
            "SELECT 1; DROP TABLE users",
            // Dollar quotes and parameters.
            "DO $$ BEGIN DROP TABLE users; END $$",
            "SELECT * FROM t WHERE id = $1",
            // Backslashes: escape strings and standard_conforming_strings = off.
            "SELECT 'a\\'; DROP TABLE users; --'",
            // Unicode escapes, whose UESCAPE literal changes the identifier.
            "SELECT * FROM U&\"d!0061ta\" UESCAPE '!'",
            // Numbers PostgreSQL lexes differently.
            "SELECT 1from users",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1.2.3",
            "SELECT 1e",
            // Unterminated quotes.
            "SELECT 'abc",
            "SELECT \"abc",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }
}
