//! What a parsed config must satisfy beyond its types; each error names the key.
use std::time::Duration;

use tollgate_policy::Catalog;

use super::{Config, ConfigError};

impl Config {
    /// `text` is the file as read, to point at the offending key's line.
    pub(super) fn validate(&self, path: &str, text: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid {
            at: match key_line(text, key) {
                Some(line) => format!("{path}:{line}"),
                None => path.to_owned(),
            },
            key,
            message: message.to_owned(),
        };
        if self.proxy.port == 0 {
            return Err(invalid("proxy.port", "must be a fixed port (1-65535)"));
        }
        if self.proxy.port == self.admin.listen.port() && self.admin.listen.ip().is_loopback() {
            return Err(invalid("admin.listen", "must not use the proxy's port"));
        }
        if !self.proxy.ipv4.is_loopback() {
            return Err(invalid(
                "proxy.ipv4",
                "must be a loopback address (127.0.0.0/8)",
            ));
        }
        if !self.proxy.ipv6.is_loopback() {
            return Err(invalid(
                "proxy.ipv6",
                "must be the IPv6 loopback address (::1)",
            ));
        }
        if self.proxy.connect_timeout.is_zero() {
            return Err(invalid(
                "proxy.connect_timeout",
                "must be greater than zero",
            ));
        }
        if self.proxy.client_hello_wait > std::time::Duration::from_secs(30) {
            return Err(invalid(
                "proxy.client_hello_wait",
                "must be at most 30s (a connect waits this long for its decision)",
            ));
        }
        if !(4096..=16 * 1024 * 1024).contains(&self.proxy.buffer_size) {
            return Err(invalid(
                "proxy.buffer_size",
                "must be between 4096 and 16777216",
            ));
        }
        if self.proxy.workers > 1024 {
            return Err(invalid(
                "proxy.workers",
                "must be at most 1024 (0 = one per CPU)",
            ));
        }
        if self.central.checkpoint_interval < Duration::from_secs(1) {
            return Err(invalid(
                "central.checkpoint_interval",
                "must be at least 1s",
            ));
        }
        if !(1..=100_000).contains(&self.central.batch_size) {
            return Err(invalid(
                "central.batch_size",
                "must be between 1 and 100000",
            ));
        }
        if let Some(url) = &self.central.url {
            crate::central::Target::parse(url, None)
                .map_err(|error| invalid("central.url", &error.to_string()))?;
        }
        if self.central.host.as_deref().is_some_and(|h| {
            h.is_empty() || h.len() > 255 || h.chars().any(|c| c.is_control() || c.is_whitespace())
        }) {
            return Err(invalid(
                "central.host",
                "must be 1-255 characters, without spaces or control characters",
            ));
        }
        if self.console.tls_cert.is_some() != self.console.tls_key.is_some() {
            return Err(invalid(
                "console.tls_cert",
                "console.tls_cert and console.tls_key go together",
            ));
        }
        if self.console.session_ttl < Duration::from_secs(60) {
            return Err(invalid("console.session_ttl", "must be at least 1m"));
        }
        if self.console.max_sessions == 0 {
            return Err(invalid("console.max_sessions", "must be at least 1"));
        }
        if let Some(oidc) = &self.console.oidc {
            crate::identity::oidc::fetch::check_url(&oidc.issuer)
                .map_err(|why| invalid("console.oidc.issuer", &why))?;
            if !oidc.redirect_url.starts_with("https://")
                && !oidc.redirect_url.starts_with("http://")
            {
                return Err(invalid(
                    "console.oidc.redirect_url",
                    "must be the console's http(s) URL ending in /auth/callback",
                ));
            }
            if !oidc.redirect_url.ends_with("/auth/callback") {
                return Err(invalid(
                    "console.oidc.redirect_url",
                    "must end in /auth/callback (the console's callback path)",
                ));
            }
            if oidc.client_id.is_empty() {
                return Err(invalid("console.oidc.client_id", "must not be empty"));
            }
        }
        if self.approvals.min_approvals == 0 {
            return Err(invalid("approvals.min_approvals", "must be at least 1"));
        }
        if self.approvals.timeout < Duration::from_secs(1) {
            return Err(invalid("approvals.timeout", "must be at least 1s"));
        }
        for hook in &self.approvals.webhooks {
            crate::identity::oidc::fetch::check_url(&hook.url)
                .map_err(|why| invalid("approvals.webhooks.url", &why))?;
        }
        if !valid_cgroup_parent(&self.cgroup.parent) {
            return Err(invalid(
                "cgroup.parent",
                "must be a relative path of names made of [A-Za-z0-9._-], without `..`",
            ));
        }
        if let Some(mount) = &self.cgroup.mount
            && !mount.is_absolute()
        {
            return Err(invalid("cgroup.mount", "must be an absolute path"));
        }
        if !self.bpf.pin_dir.is_absolute() {
            return Err(invalid(
                "bpf.pin_dir",
                "must be an absolute path on a bpffs",
            ));
        }
        let ring = self.bpf.events_ring_bytes;
        if !ring.is_power_of_two() || !(4096..=1 << 30).contains(&ring) {
            return Err(invalid(
                "bpf.events_ring_bytes",
                "must be a power of two from 4096 to 1073741824",
            ));
        }
        if !self.control.socket.is_absolute() {
            return Err(invalid("control.socket", "must be an absolute path"));
        }
        if self.state.dir.as_os_str().is_empty() {
            return Err(invalid("state.dir", "must not be empty"));
        }
        if self.recording.queue_capacity == 0 {
            return Err(invalid(
                "recording.queue_capacity",
                "must be greater than zero",
            ));
        }
        if self
            .recording
            .retention
            .is_some_and(|r| r < Duration::from_secs(1))
        {
            return Err(invalid(
                "recording.retention",
                "must be at least 1s (omit it to keep everything)",
            ));
        }
        if self.recording.flush_interval > Duration::from_secs(10) {
            return Err(invalid("recording.flush_interval", "must be at most 10s"));
        }
        if self.recording.batch_size == 0 {
            return Err(invalid("recording.batch_size", "must be greater than zero"));
        }
        if self.policy.reload_interval.is_zero() {
            return Err(invalid(
                "policy.reload_interval",
                "must be greater than zero",
            ));
        }
        if self.unix.refresh_interval < Duration::from_millis(100) {
            return Err(invalid("unix.refresh_interval", "must be at least 100ms"));
        }
        for engine in &self.unix.engine_sockets {
            let fits = crate::unix::paths::key(0, &engine.path).is_some();
            if !(engine.path.starts_with('/') || engine.path.starts_with('@')) || !fits {
                return Err(invalid(
                    "unix.engine_sockets.path",
                    "must be an absolute path (or an abstract name as @name) of at most 108 \
                     bytes",
                ));
            }
            if engine.engine.is_empty() {
                return Err(invalid("unix.engine_sockets.engine", "must not be empty"));
            }
        }
        if let Some(target) = self
            .targets
            .iter()
            .find(|t| t.tls.is_some() && !matches!(t.protocol.as_deref(), Some("http" | "mcp")))
        {
            return Err(invalid(
                "targets.tls",
                &format!(
                    "target `{}`: tls = \"terminate\" needs protocol = \"http\" or \"mcp\" \
                     (the agent terminates TLS only to follow HTTP inside it)",
                    target.name
                ),
            ));
        }
        if let Err(message) = Catalog::new(self.targets.clone()) {
            return Err(invalid("targets", &message));
        }
        let (github, gitlab, buildkite) = (
            &self.identity.github,
            &self.identity.gitlab,
            &self.identity.buildkite,
        );
        for (key, issuer, jwks_url, audience) in [
            (
                "identity.github",
                &github.issuer,
                &github.jwks_url,
                &github.audience,
            ),
            (
                "identity.gitlab",
                &gitlab.issuer,
                &gitlab.jwks_url,
                &gitlab.audience,
            ),
            (
                "identity.buildkite",
                &buildkite.issuer,
                &buildkite.jwks_url,
                &buildkite.audience,
            ),
        ] {
            for url in issuer.iter().chain(jwks_url) {
                crate::identity::oidc::fetch::check_url(url).map_err(|m| invalid(key, &m))?;
            }
            if audience.is_empty() {
                return Err(invalid(key, "audience must not be empty"));
            }
        }
        if buildkite.organization.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(
                "identity.buildkite.organization",
                "must not be empty (omit it to leave Buildkite tokens unverified)",
            ));
        }
        if self
            .masking
            .rules
            .iter()
            .any(|rule| rule.columns.is_empty())
        {
            return Err(invalid(
                "masking.rules",
                "every rule needs at least one column pattern",
            ));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.postgres.max_message_size) {
            return Err(invalid(
                "postgres.max_message_size",
                "must be between 1024 and 1073741824",
            ));
        }
        if let Some(bad) = self
            .http
            .headers
            .iter()
            .find(|h| !tollgate_policy::schema::valid_header_name(h))
        {
            return Err(invalid(
                "http.headers",
                &format!(
                    "`{bad}` is not a header name policies can read: lowercase letters, \
                     digits and !#$%&'*+-.^_`|~"
                ),
            ));
        }
        if let Some(twice) = self
            .http
            .headers
            .iter()
            .enumerate()
            .find(|(i, h)| self.http.headers[..*i].contains(h))
            .map(|(_, h)| h)
        {
            return Err(invalid(
                "http.headers",
                &format!("`{twice}` is listed twice"),
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.http.max_header_size) {
            return Err(invalid(
                "http.max_header_size",
                "must be between 1024 and 16777216",
            ));
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.mcp.max_message_size) {
            return Err(invalid(
                "mcp.max_message_size",
                "must be between 1024 and 268435456",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid("log.level", "is not a valid filter (e.g. `info`)"));
        }
        Ok(())
    }
}

fn valid_cgroup_parent(parent: &str) -> bool {
    !parent.is_empty()
        && !parent.starts_with('/')
        && parent.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

/// The line where `text` sets the dotted `key` (in an array of tables, its first
/// table that does), or of the deepest part of it that the file sets. `None` when the
/// file does not set it at all (a default is invalid) or does not parse.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut found = None;
    for part in key.split('.') {
        let Some((name, value)) = table.iter().find(|(name, _)| name.get_ref() == part) else {
            break;
        };
        found = Some(name.span().start);
        let next = match value.get_ref() {
            toml::de::DeValue::Table(inner) => Some(inner),
            toml::de::DeValue::Array(items) => items.iter().find_map(|item| match item.get_ref() {
                toml::de::DeValue::Table(inner) => Some(inner),
                _ => None,
            }),
            _ => None,
        };
        match next {
            Some(inner) => table = inner,
            None => break,
        }
    }
    found.map(|offset| tollgate_policy::load::line_col(text, offset).0)
}
