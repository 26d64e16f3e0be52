//! Job labels and names: what a job may be called and labelled with.
use std::collections::BTreeMap;

use super::JobError;

const MAX_LABELS: usize = 64;
const MAX_KEY_LEN: usize = 63;
const MAX_VALUE_LEN: usize = 1024;
const MAX_NAME_LEN: usize = 128;

pub(super) fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), JobError> {
    if labels.len() > MAX_LABELS {
        return Err(JobError::InvalidLabel {
            key: format!("({} labels)", labels.len()),
            reason: "at most 64 labels",
        });
    }
    for (key, value) in labels {
        let invalid = |reason| JobError::InvalidLabel {
            key: key.clone(),
            reason,
        };
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(invalid("keys are 1 to 63 characters"));
        }
        if !key.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        {
            return Err(invalid(
                "keys are [A-Za-z0-9._/-], starting with a letter or digit",
            ));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(invalid("values are at most 1024 bytes"));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid("values must not contain control characters"));
        }
    }
    Ok(())
}

pub(super) fn validate_name(name: &str) -> Result<(), JobError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(JobError::InvalidName("names are 1 to 128 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(JobError::InvalidName(
            "names must not contain control characters",
        ));
    }
    Ok(())
}

/// Parses `key=value` (as given to `tollgate run --label`).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("label `{text}` is not key=value"))?;
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn label_validation() {
        assert!(validate_labels(&labels(&[("repo", "acme/api"), ("ci.run-id", "42")])).is_ok());
        assert!(validate_labels(&labels(&[("", "x")])).is_err());
        assert!(validate_labels(&labels(&[("-x", "x")])).is_err());
        assert!(validate_labels(&labels(&[("a b", "x")])).is_err());
        assert!(validate_labels(&labels(&[("a", "x\ny")])).is_err());
        assert!(validate_labels(&labels(&[(&"k".repeat(64), "x")])).is_err());
        assert!(validate_name("deploy").is_ok());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn parses_labels() {
        assert_eq!(
            parse_label("repo=acme/api=x").unwrap(),
            ("repo".to_owned(), "acme/api=x".to_owned())
        );
        assert!(parse_label("repo").is_err());
    }
}
