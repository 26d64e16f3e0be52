//! Why a PostgreSQL session ended early, as the connection's record says it.
use std::io;

use tollgate_pgwire::{WireError, backend};

use crate::proxy::handler::Side;

/// SQLSTATE protocol_violation.
const PROTOCOL_VIOLATION: &str = "08P01";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A leg failed while the session was relayed.
    #[error("{from} to {to}: {source}", to = .from.other())]
    Relay {
        from: Side,
        #[source]
        source: io::Error,
    },
    /// A leg failed during the startup.
    #[error("{side}: {source}")]
    Startup {
        side: Side,
        #[source]
        source: io::Error,
    },
    /// Asking the server for TLS failed.
    #[error("server: {0}")]
    AskingServerTls(#[source] LegError),
    #[error("refused: direct TLS from the client, but no TLS to the server (postgres.tls)")]
    DirectTlsWithoutServerTls,
    #[error("client TLS: {0}")]
    ClientTls(#[source] LegError),
    #[error("server TLS: {0}")]
    ServerTls(#[source] LegError),
    #[error("malformed startup from the client: {0}")]
    MalformedStartup(#[source] WireError),
    #[error("server: closed during authentication")]
    ClosedInAuthentication,
    #[error("server: {0}")]
    MalformedAuthentication(#[source] WireError),
    #[error("server: reconnecting: {0}")]
    Reconnecting(#[source] io::Error),
    /// A message that breaks the protocol: the client is told, then the session closes in
    /// order.
    #[error("protocol violation by the {side}: {violation}")]
    Violation { side: Side, violation: Violation },
    #[error(
        "recording.durable: the statements' records were not committed within {0:?}; the \
         session is closed"
    )]
    NotDurable(std::time::Duration),
}

/// What broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error("{0}")]
    Malformed(WireError),
    #[error("the client closed in the middle of a message")]
    Truncated,
}

impl Violation {
    fn what(&self) -> &'static str {
        match self {
            Violation::Malformed(_) => "malformed",
            Violation::Truncated => "truncated",
        }
    }
}

impl SessionError {
    /// Tollgate's own error for the client, delivered before an orderly close (a protocol
    /// violation), instead of resetting the client.
    pub fn to_client(&self) -> Option<Vec<u8>> {
        let SessionError::Violation { side, violation } = self else {
            return None;
        };
        Some(backend::error_response(
            PROTOCOL_VIOLATION,
            &format!(
                "tollgate: {} message from the {side}: {violation}",
                violation.what()
            ),
            None,
            None,
        ))
    }
}

/// Why TLS on one leg failed.
#[derive(Debug, thiserror::Error)]
pub enum LegError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Certificate(#[from] super::tls::TlsError),
    #[error("{0}")]
    ServerName(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error("TLS to the server: {0}")]
    Handshake(#[source] io::Error),
    #[error("unexpected answer {0:#x} to SSLRequest")]
    UnexpectedAnswer(u8),
    #[error("the server does not support TLS, and postgres.tls.upstream requires it")]
    Required,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_says_what_it_said_as_a_string() {
        let io = || io::Error::from(io::ErrorKind::ConnectionReset);
        let reset = io().to_string();
        let cases = [
            (
                SessionError::Relay {
                    from: Side::Client,
                    source: io(),
                },
                format!("client to server: {reset}"),
            ),
            (
                SessionError::Relay {
                    from: Side::Server,
                    source: io(),
                },
                format!("server to client: {reset}"),
            ),
            (
                SessionError::Startup {
                    side: Side::Server,
                    source: io(),
                },
                format!("server: {reset}"),
            ),
            (
                SessionError::AskingServerTls(LegError::UnexpectedAnswer(0x45)),
                "server: unexpected answer 0x45 to SSLRequest".to_owned(),
            ),
            (
                SessionError::ServerTls(LegError::Required),
                "server TLS: the server does not support TLS, and postgres.tls.upstream \
                 requires it"
                    .to_owned(),
            ),
            (
                SessionError::Violation {
                    side: Side::Client,
                    violation: Violation::Truncated,
                },
                "protocol violation by the client: the client closed in the middle of a \
                 message"
                    .to_owned(),
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn only_a_violation_is_told_to_the_client() {
        let violation = SessionError::Violation {
            side: Side::Server,
            violation: Violation::Malformed(WireError::BadLength(-1)),
        };
        let response = violation.to_client().expect("an ErrorResponse");
        let text = String::from_utf8_lossy(&response);
        assert!(text.contains("08P01"), "{text}");
        assert!(
            text.contains("tollgate: malformed message from the server: invalid message length -1"),
            "{text}"
        );
        assert!(SessionError::ClosedInAuthentication.to_client().is_none());
    }
}
