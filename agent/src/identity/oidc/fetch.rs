//! Small, bounded HTTPS GETs (JWKS, discovery documents, GitHub's token endpoint).
use std::time::Duration;

/// Largest response body read.
const MAX_BODY: u64 = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("GET {url}: {message}")]
pub struct FetchError {
    pub url: String,
    pub message: String,
}

/// Only https, except to a loopback host (a local issuer, or a test).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("`{url}` is not an http(s) URL"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "`{url}` must use https (plain http is accepted only for loopback hosts)"
        ))
    }
}

/// GETs `url` (optionally with a bearer token) and returns the body as text.
pub fn get(url: &str, bearer: Option<&str>) -> Result<String, FetchError> {
    let error = |message: String| FetchError {
        url: url.to_owned(),
        message,
    };
    check_url(url).map_err(error)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .build()
        .into();
    let mut request = agent.get(url).header("Accept", "application/json");
    if let Some(token) = bearer {
        request = request.header("Authorization", format!("bearer {token}"));
    }
    let mut response = request.call().map_err(|e| error(e.to_string()))?;
    response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback() {
        assert!(check_url("https://token.actions.githubusercontent.com").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]:8080/jwks").is_ok());
        assert!(check_url("http://localhost/x").is_ok());
        assert!(check_url("http://gitlab.example.com").is_err());
        assert!(check_url("http://127.0.0.1.evil.com/").is_err());
        assert!(check_url("ftp://x").is_err());
    }
}
