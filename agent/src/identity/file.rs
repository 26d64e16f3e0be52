//! Identity files for `tollgate run --identity-file` (cron jobs, legacy scripts,
//! systemd units): a TOML table of identity fields.
use std::path::Path;

use tollgate_policy::load::line_col;

use super::Identity;

#[derive(Debug, thiserror::Error)]
pub enum IdentityFileError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Reads and validates an identity file.
pub fn read(path: &Path) -> Result<Identity, IdentityFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| IdentityFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&path.display().to_string(), &text)
}

pub fn parse(name: &str, text: &str) -> Result<Identity, IdentityFileError> {
    let invalid = |offset: Option<usize>, message: String| {
        let (line, column) = offset.map_or((1, 1), |o| line_col(text, o));
        IdentityFileError::Invalid {
            path: name.to_owned(),
            line,
            column,
            message,
        }
    };
    let identity: Identity = toml::from_str(text).map_err(|error| {
        invalid(
            error.span().map(|span| span.start),
            error.message().to_owned(),
        )
    })?;
    identity
        .validate()
        .map_err(|error| invalid(None, error.to_string()))?;
    if identity.provider.is_empty() {
        return Err(invalid(
            None,
            "`provider` is required (for example \"cron\" or \"systemd\")".to_owned(),
        ));
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_line_of_an_error() {
        let identity = parse(
            "backup.toml",
            "provider = \"cron\"\nrepository = \"acme/billing\"\njob = \"nightly\"\n",
        )
        .unwrap();
        assert_eq!(identity.job, "nightly");
        let error = parse("backup.toml", "provider = \"cron\"\nrepo = \"x\"\n").unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("backup.toml:2:1: unknown field `repo`"),
            "{text}"
        );
        let error = parse("b.toml", "job = \"x\"\n").unwrap_err();
        assert!(
            error.to_string().contains("`provider` is required"),
            "{error}"
        );
    }
}
