//! The sessions page's filters, from the query string: each parameter checked, and a
//! bad one named in the error.
use base64::Engine as _;

use crate::record::{
    DecisionLabel,
    search::{IDENTITY_FILTERS, SessionQuery},
};

/// Sessions per page unless `limit` says otherwise, and the most it may say.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;
/// Longest filter value accepted.
const MAX_VALUE: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("query parameter `{param}`: {message}")]
pub struct FilterError {
    pub param: String,
    pub message: String,
}

fn bad(param: &str, message: impl Into<String>) -> FilterError {
    FilterError {
        param: param.to_owned(),
        message: message.into(),
    }
}

/// A time: milliseconds since the epoch, or RFC 3339.
pub fn parse_time(param: &str, value: &str) -> Result<i64, FilterError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| bad(param, "expected milliseconds since the epoch or RFC 3339"))
}

/// The opaque cursor of the page after the session (started_at, id).
pub fn cursor(started_at: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{started_at}:{id}"))
}

fn parse_cursor(value: &str) -> Result<(i64, String), FilterError> {
    let invalid = || bad("cursor", "not a cursor this console issued");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (at, id) = text.split_once(':').ok_or_else(invalid)?;
    Ok((at.parse().map_err(|_| invalid())?, id.to_owned()))
}

/// The host filter and the query, from `a=b&c=d`.
pub fn sessions(query: Option<&str>) -> Result<(Option<String>, SessionQuery), FilterError> {
    let mut host = None;
    let mut q = SessionQuery {
        limit: DEFAULT_LIMIT,
        ..SessionQuery::default()
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let value = value.trim().to_owned();
        if value.is_empty() {
            continue;
        }
        if value.len() > MAX_VALUE {
            return Err(bad(&key, format!("longer than {MAX_VALUE} bytes")));
        }
        if let Some((_, field)) = IDENTITY_FILTERS.iter().find(|(name, _)| *name == key) {
            q.identity.push((field, value));
            continue;
        }
        match key.as_ref() {
            "from" => q.from = Some(parse_time("from", &value)?),
            "to" => q.to = Some(parse_time("to", &value)?),
            "host" => host = Some(value),
            "job_id" => q.job_id = Some(value),
            "target" => q.target = Some(value),
            "protocol" => {
                if !matches!(value.as_str(), "postgres" | "tcp") {
                    return Err(bad("protocol", "expected `postgres` or `tcp`"));
                }
                q.protocol = Some(value);
            }
            "decision" => {
                if !DecisionLabel::ALL.iter().any(|d| d.as_str() == value) {
                    let known: Vec<&str> = DecisionLabel::ALL.iter().map(|d| d.as_str()).collect();
                    return Err(bad(
                        "decision",
                        format!("expected one of {}", known.join(", ")),
                    ));
                }
                q.decision = Some(value);
            }
            "kind" => q.statement_kind = Some(value.to_ascii_lowercase()),
            "q" => q.text = Some(value),
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad("limit", format!("expected 1 to {MAX_LIMIT}")))?;
            }
            "cursor" => q.after = Some(parse_cursor(&value)?),
            _ => return Err(bad(&key, "unknown filter")),
        }
    }
    Ok((host, q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_bad_ones_are_named() {
        let (host, q) = sessions(Some(
            "repository=acme%2Fapi&run=4821&decision=deny&protocol=postgres&kind=DDL&q=users\
             &from=2026-12-01T00:00:00Z&to=1767225600000&limit=20&host=runner-a&empty=",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host.as_deref(), Some("runner-a"));
        assert_eq!(
            q.identity,
            [
                ("repository", "acme/api".to_owned()),
                ("run_id", "4821".to_owned())
            ]
        );
        assert_eq!(q.decision.as_deref(), Some("deny"));
        assert_eq!(q.statement_kind.as_deref(), Some("ddl"));
        assert_eq!(q.text.as_deref(), Some("users"));
        assert_eq!(q.from, Some(1_796_083_200_000));
        assert_eq!(q.to, Some(1_767_225_600_000));
        assert_eq!(q.limit, 20);
        for (query, param) in [
            ("decision=maybe", "decision"),
            ("limit=0", "limit"),
            ("limit=100000", "limit"),
            ("from=yesterday", "from"),
            ("protocol=http", "protocol"),
            ("cursor=!!", "cursor"),
            ("sql=1", "sql"),
        ] {
            assert_eq!(
                sessions(Some(query)).map(|_| ()).unwrap_err().param,
                param,
                "{query}"
            );
        }
    }

    #[test]
    fn cursors_round_trip() {
        let c = cursor(1_700_000_000_123, "0190-abc");
        let (_, q) = sessions(Some(&format!("cursor={c}"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.after, Some((1_700_000_000_123, "0190-abc".to_owned())));
        assert_eq!(q.limit, DEFAULT_LIMIT);
    }
}
