//! TLS for PostgreSQL sessions: the agent's own local CA (in the state directory) issues
//! the certificates Tollgate presents to clients that send SSLRequest, and TLS to the
//! server is originated as `[postgres.tls] upstream` says.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
};
use serde::{Deserialize, Serialize};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const CA_NAME: &str = "Tollgate local CA";
/// Issued certificates per (SNI, address) kept for reuse.
const LEAF_CACHE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the local CA: {0}")]
    Ca(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{path}: no certificates in it")]
    NoCertificates { path: PathBuf },
}

/// How TLS to the PostgreSQL server is used (libpq's sslmode names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Never.
    Disable,
    /// When the server supports it, without verifying its certificate.
    #[default]
    Prefer,
    /// Always, without verifying the certificate.
    Require,
    /// Always, verifying the certificate chain.
    VerifyCa,
    /// Always, verifying the chain and the server's name or address.
    VerifyFull,
}

/// `[postgres.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Answer clients' SSLRequest with TLS (certificates from the local CA). Off: clients
    /// are told `N` and go on in plaintext on loopback (or give up if they require TLS).
    pub client: bool,
    pub upstream: UpstreamTls,
    /// CA certificates (PEM) trusted for the server besides the system's.
    pub upstream_ca_file: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            client: true,
            upstream: UpstreamTls::Prefer,
            upstream_ca_file: None,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    name.push(DnType::OrganizationName, "Tollgate");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The CA's certificate (PEM) in a state directory, if it was created.
pub fn ca_pem(state_dir: &Path) -> Result<String, TlsError> {
    let path = state_dir.join("ca").join(CA_CERT);
    std::fs::read_to_string(&path).map_err(io_error(&path))
}

/// Server configs by (SNI, address) they present a certificate for, and the protocols
/// they select by ALPN.
type Leaves = HashMap<(Option<String>, IpAddr, Alpn), Arc<ServerConfig>>;

/// What a terminated connection carries, as the server selects it by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// PostgreSQL 17+ clients offer `postgresql` (and with direct TLS require it);
    /// older clients offer none, and none is selected.
    Postgres,
    /// HTTP/2 (`h2`), as the destination chose.
    H2,
    /// HTTP/1.1 (`http/1.1`), as the destination chose.
    Http1,
    /// Nothing selected (the destination chose none).
    None,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Postgres => vec![crate::proxy::hello::ALPN_POSTGRESQL.to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::None => Vec::new(),
        }
    }
}

pub struct Tls {
    config: TlsConfig,
    issuer: Issuer<'static, KeyPair>,
    leaves: Mutex<Leaves>,
    upstream: Arc<ClientConfig>,
}

impl Tls {
    /// Loads the local CA from `state_dir/ca`, creating it on first use.
    pub fn load(state_dir: &Path, config: TlsConfig) -> Result<Self, TlsError> {
        let dir = state_dir.join("ca");
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        let key = if key_path.exists() && cert_path.exists() {
            let pem = std::fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
            KeyPair::from_pem(&pem)?
        } else {
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
            let key = KeyPair::generate()?;
            let mut params = ca_params();
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
            params.not_after = rcgen::date_time_ymd(2045, 1, 1);
            let cert = params.self_signed(&key)?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem()).map_err(io_error(&cert_path))?;
            tracing::info!(ca = %cert_path.display(), "created the local CA for PostgreSQL TLS");
            key
        };
        let upstream = Arc::new(client_config(
            config.upstream,
            config.upstream_ca_file.as_deref(),
        )?);
        Ok(Self {
            config,
            issuer: Issuer::new(ca_params(), key),
            leaves: Mutex::new(HashMap::new()),
            upstream,
        })
    }

    pub fn offers_client_tls(&self) -> bool {
        self.config.client
    }

    pub fn upstream_mode(&self) -> UpstreamTls {
        self.config.upstream
    }

    pub fn upstream_config(&self) -> Arc<ClientConfig> {
        self.upstream.clone()
    }

    /// The server config presenting a certificate for `sni` and `address`, selecting
    /// the protocols of `alpn`.
    pub fn server_config(
        &self,
        sni: Option<&str>,
        address: IpAddr,
        alpn: Alpn,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let key = (sni.map(str::to_owned), address, alpn);
        if let Some(config) = self
            .leaves
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(config.clone());
        }
        let leaf_key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, sni.unwrap_or("tollgate"));
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::IpAddress(address)];
        if let Some(sni) = sni {
            params
                .subject_alt_names
                .push(SanType::DnsName(sni.to_owned().try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time_now();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = now + Duration::from_secs(30 * 24 * 3600);
        let cert = params.signed_by(&leaf_key, &self.issuer)?;
        let chain = vec![cert.der().clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, private)?;
        config.alpn_protocols = alpn.protocols();
        let config = Arc::new(config);
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if leaves.len() >= LEAF_CACHE {
            leaves.clear();
        }
        leaves.insert(key, config.clone());
        Ok(config)
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(contents).map_err(io_error(path))
}

/// A TLS client configuration for a PostgreSQL server under libpq's `sslmode` (also the
/// central store's connection), trusting `ca_file` besides the system's roots.
pub fn client_config(mode: UpstreamTls, ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match mode {
        UpstreamTls::Disable | UpstreamTls::Prefer | UpstreamTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
        UpstreamTls::VerifyCa | UpstreamTls::VerifyFull => {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if let Some(path) = ca_file {
                let pem = std::fs::read(path).map_err(io_error(path))?;
                let certs: Vec<CertificateDer<'static>> =
                    rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
                        .filter_map(Result::ok)
                        .collect();
                if certs.is_empty() {
                    return Err(TlsError::NoCertificates {
                        path: path.to_owned(),
                    });
                }
                roots.add_parsable_certificates(certs);
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            let builder = builder.dangerous();
            if mode == UpstreamTls::VerifyCa {
                builder.with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
            } else {
                builder.with_custom_certificate_verifier(verifier)
            }
            .with_no_client_auth()
        }
    };
    Ok(config)
}

/// `prefer` and `require`: encrypted, not authenticated (libpq's semantics).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; the name need not match.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_created_once_and_issues_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls::load(dir.path(), TlsConfig::default()).unwrap();
        let pem = ca_pem(dir.path()).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let mode = std::fs::metadata(dir.path().join("ca").join(CA_KEY))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap();
        assert_eq!(mode, 0o600);
        let a = tls
            .server_config(
                Some("db.internal"),
                "10.0.0.5".parse().unwrap(),
                Alpn::Postgres,
            )
            .unwrap();
        let b = tls
            .server_config(
                Some("db.internal"),
                "10.0.0.5".parse().unwrap(),
                Alpn::Postgres,
            )
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "issued once, then cached");
        // Loading again keeps the same CA.
        let _again = Tls::load(dir.path(), TlsConfig::default()).unwrap();
        assert_eq!(ca_pem(dir.path()).unwrap(), pem);
    }
}
