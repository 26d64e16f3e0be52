//! The central store's address: a `postgresql://` URL (libpq's `sslmode` and
//! `sslrootcert` included), an optional password file, and the connection.
use std::{
    path::{Path, PathBuf},
    str::FromStr as _,
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Notification, config::SslMode};

use super::CentralError;
use crate::postgres::tls::{UpstreamTls, client_config};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed central store URL.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    mode: UpstreamTls,
    root_cert: Option<PathBuf>,
    /// The URL without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Target {
    /// Parses `url`; a `password_file` (its first line) replaces the URL's password.
    pub fn parse(url: &str, password_file: Option<&Path>) -> Result<Self, CentralError> {
        let bad = |why: &str| CentralError::Url(why.to_owned());
        let Some(rest) = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
        else {
            return Err(bad("expected postgresql://user@host[:port]/database"));
        };
        let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut mode = UpstreamTls::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    mode = match value {
                        "disable" => UpstreamTls::Disable,
                        "prefer" | "allow" => UpstreamTls::Prefer,
                        "require" => UpstreamTls::Require,
                        "verify-ca" => UpstreamTls::VerifyCa,
                        "verify-full" => UpstreamTls::VerifyFull,
                        other => {
                            return Err(bad(&format!(
                                "sslmode={other}: expected disable, prefer, require, verify-ca \
                                 or verify-full"
                            )));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value))),
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() {
            format!("postgresql://{base}")
        } else {
            format!("postgresql://{base}?{}", kept.join("&"))
        };
        let mut config =
            tokio_postgres::Config::from_str(&rebuilt).map_err(|e| bad(&e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(bad("no host in the URL"));
        }
        if config.get_user().is_none() {
            return Err(bad("no user in the URL"));
        }
        config.ssl_mode(match mode {
            UpstreamTls::Disable => SslMode::Disable,
            UpstreamTls::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("tollgate");
        if let Some(path) = password_file {
            let text = std::fs::read_to_string(path).map_err(|source| CentralError::Password {
                path: path.to_owned(),
                source,
            })?;
            config.password(text.lines().next().unwrap_or_default());
        }
        Ok(Self {
            shown: shown(base, query),
            config,
            mode,
            root_cert,
        })
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Connects; the connection runs on a task of the current runtime until the client
    /// is dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, CentralError> {
        Ok(self.connect_listening().await?.0)
    }

    /// Connects, and hands over the notifications (`LISTEN`) the server sends.
    pub async fn connect_listening(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            mpsc::UnboundedReceiver<Notification>,
        ),
        CentralError,
    > {
        let connect_err = |source| CentralError::Connect {
            url: self.shown.clone(),
            source,
        };
        if self.mode == UpstreamTls::Disable {
            let (client, connection) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(connect_err)?;
            Ok((client, drive(connection)))
        } else {
            let tls = client_config(self.mode, self.root_cert.as_deref())
                .map_err(|e| CentralError::Tls(e.to_string()))?;
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, connection) = self.config.connect(tls).await.map_err(connect_err)?;
            Ok((client, drive(connection)))
        }
    }
}

/// Runs a connection on a task until its client is gone, passing its notifications on.
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
) -> mpsc::UnboundedReceiver<Notification>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n);
                }
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(notice = %notice.message(), "central store notice");
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::debug!(%error, "central store connection ended");
                    break;
                }
                None => break,
            }
        }
    });
    rx
}

/// The URL with any password replaced by `***`.
fn shown(base: &str, query: &str) -> String {
    let base = match base.split_once('@') {
        Some((userinfo, rest)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{rest}"),
            None => format!("{userinfo}@{rest}"),
        },
        None => base.to_owned(),
    };
    if query.is_empty() {
        format!("postgresql://{base}")
    } else {
        format!("postgresql://{base}?{query}")
    }
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_libpq_sslmodes_and_hide_their_password() {
        let t = Target::parse(
            "postgresql://audit:s3cret@db.example:5433/fleet?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
            None,
        )
        .unwrap();
        assert_eq!(t.mode, UpstreamTls::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(t.config.get_dbname(), Some("fleet"));
        assert_eq!(t.config.get_ports(), [5433]);
        assert!(!t.shown().contains("s3cret"), "{}", t.shown());
        assert!(t.shown().contains("audit:***@db.example"), "{}", t.shown());
        assert!(!format!("{t:?}").contains("s3cret"));

        let plain =
            Target::parse("postgres://audit@127.0.0.1/fleet?sslmode=disable", None).unwrap();
        assert_eq!(plain.mode, UpstreamTls::Disable);

        for bad in [
            "mysql://a@b/c",
            "postgresql://a@b/c?sslmode=sometimes",
            "postgresql:///c",
        ] {
            assert!(Target::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_password_file_gives_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let t = Target::parse("postgresql://audit:inline@h/db", Some(&file)).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"from-file"[..]));
        assert!(matches!(
            Target::parse("postgresql://audit@h/db", Some(&dir.path().join("none"))),
            Err(CentralError::Password { .. })
        ));
    }
}
