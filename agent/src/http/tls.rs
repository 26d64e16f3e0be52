//! TLS to targets with `tls = "terminate"`: the client's TLS is terminated with the
//! local CA (a certificate for the name its ClientHello asks for, and the destination's
//! address), and TLS is originated to the destination, verifying its certificate. The
//! destination is asked first, with the protocols the client offered (ALPN), and the
//! client is then given the one the destination chose: both sides speak the same HTTP.
use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use rustls::{ClientConfig, pki_types::ServerName, server::Acceptor};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{LazyConfigAcceptor, TlsConnector, client, server};

use super::detect::Detect;
use crate::postgres::tls::{Alpn, Tls, TlsError, UpstreamTls, client_config};

/// `[http.tls]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTlsConfig {
    /// CA certificates (PEM) trusted for terminated targets' servers besides the
    /// system's. Their certificates are always verified (name or address included).
    pub upstream_ca_file: Option<PathBuf>,
}

/// Why a terminated connection's TLS failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("the client's TLS handshake: {0}")]
    Client(#[source] std::io::Error),
    #[error("TLS to the destination: {0}")]
    Upstream(#[source] std::io::Error),
    #[error("a certificate for the client: {0}")]
    Certificate(#[from] TlsError),
}

/// The TLS both sides of terminated connections use.
pub struct Https {
    local: Arc<Tls>,
    /// Client configs by what they offer: h2 and http/1.1, http/1.1 only, nothing.
    both: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
    none: Arc<ClientConfig>,
}

impl Https {
    pub fn new(local: Arc<Tls>, config: &HttpTlsConfig) -> Result<Self, TlsError> {
        let base = client_config(UpstreamTls::VerifyFull, config.upstream_ca_file.as_deref())?;
        let offering = |protocols: &[&[u8]]| {
            let mut config = base.clone();
            config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        };
        Ok(Self {
            both: offering(&[b"h2", b"http/1.1"]),
            http1: offering(&[b"http/1.1"]),
            none: offering(&[]),
            local,
        })
    }
}

/// Both sides' TLS streams, and the HTTP version they speak.
pub struct Terminated<C, U> {
    pub client: server::TlsStream<C>,
    pub upstream: client::TlsStream<U>,
    pub version: Detect,
}

/// Terminates the client's TLS and originates TLS to `destination`.
pub async fn terminate<C, U>(
    https: &Https,
    client: C,
    upstream: U,
    destination: SocketAddr,
) -> Result<Terminated<C, U>, HttpsError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = LazyConfigAcceptor::new(Acceptor::default(), client)
        .await
        .map_err(HttpsError::Client)?;
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let offered: Vec<Vec<u8>> = hello
        .alpn()
        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let config = if offered.iter().any(|p| p == b"h2") {
        https.both.clone()
    } else if offered.iter().any(|p| p == b"http/1.1") {
        https.http1.clone()
    } else {
        https.none.clone()
    };
    let name = match &sni {
        Some(name) => ServerName::try_from(name.clone()).map_err(|e| {
            HttpsError::Client(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?,
        None => ServerName::IpAddress(destination.ip().into()),
    };
    let upstream = TlsConnector::from(config)
        .connect(name, upstream)
        .await
        .map_err(HttpsError::Upstream)?;
    let chosen = upstream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let (version, alpn) = match chosen.as_deref() {
        Some(b"h2") => (Detect::Http2, Alpn::H2),
        Some(_) => (Detect::Http1, Alpn::Http1),
        None => (Detect::Http1, Alpn::None),
    };
    let server_config = https
        .local
        .server_config(sni.as_deref(), destination.ip(), alpn)?;
    let client = start
        .into_stream(server_config)
        .await
        .map_err(HttpsError::Client)?;
    Ok(Terminated {
        client,
        upstream,
        version,
    })
}
