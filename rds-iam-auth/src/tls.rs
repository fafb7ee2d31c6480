//! TLS for PostgreSQL connections: rustls, verified against the endpoint name, always.
//!
//! The trust store is the Mozilla set of `webpki-roots` (which holds Amazon Root CA 1 to 4,
//! the roots of RDS Proxy's ACM certificates) plus, optionally, a [`CaBundle`]: the RDS CA
//! bundle for direct instance connections, or the CA of a local stack.
//!
//! The certificate is verified against the endpoint *host name*, and that name is the SNI,
//! also when the TCP connection goes to another address (a tunnel, a port forward, the local
//! stack). There is no plaintext fallback: a server that declines TLS is an error.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::ConfigError;

/// Extra trusted CA certificates, from PEM.
///
/// ```
/// use rds_iam_auth::CaBundle;
/// let err = CaBundle::from_pem(b"not a certificate").unwrap_err();
/// assert!(err.to_string().contains("no certificate"));
/// ```
#[derive(Clone)]
pub struct CaBundle {
    certificates: Vec<CertificateDer<'static>>,
    origin: String,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("origin", &self.origin)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

impl CaBundle {
    /// Reads every certificate of a PEM file (e.g. `global-bundle.pem` of RDS).
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ConfigError::CaBundle {
            path: origin.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&bytes, origin)
    }

    /// Reads every certificate of PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, ConfigError> {
        Self::parse(pem, "<memory>".to_owned())
    }

    fn parse(pem: &[u8], origin: String) -> Result<Self, ConfigError> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::CaBundle {
                path: origin.clone(),
                reason: format!("invalid PEM: {e}"),
            })?;
        if certificates.is_empty() {
            return Err(ConfigError::CaBundle {
                path: origin,
                reason: "no certificate found (expected -----BEGIN CERTIFICATE----- blocks)"
                    .to_owned(),
            });
        }
        Ok(Self {
            certificates,
            origin,
        })
    }

    /// How many certificates the bundle holds.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    /// Whether the bundle is empty (never true for a parsed bundle).
    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }
}

/// The rustls client configuration: webpki roots plus the extra bundle, TLS 1.2 and 1.3,
/// aws-lc-rs as the crypto provider (the AWS SDK's own, so one crypto library is compiled;
/// chosen explicitly, so it does not matter which providers other crates enable).
pub fn client_config(extra: Option<&CaBundle>) -> Result<ClientConfig, ConfigError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(bundle) = extra {
        for cert in &bundle.certificates {
            roots.add(cert.clone()).map_err(|e| ConfigError::CaBundle {
                path: bundle.origin.clone(),
                reason: format!("certificate not usable as a trust anchor: {e}"),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid {
            name: "tls",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// When the TLS handshake of a connection finished, once it has.
pub(crate) type HandshakeClock = Arc<Mutex<Option<Instant>>>;

/// The TLS stream a session runs over (`tokio-postgres-rustls`'s), as in the
/// [`Connection`](tokio_postgres::Connection) of [`Connector::connect_raw`](crate::Connector::connect_raw).
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<TcpStream>>::Stream;

/// `tokio-postgres-rustls`'s connector for one connection, verifying against the endpoint
/// name whatever address was dialed, and noting when the handshake finished (to time the
/// TLS stage apart from the login that follows it inside `connect_raw`).
pub(crate) struct TimedTls {
    inner: <MakeRustlsConnect as MakeTlsConnect<TcpStream>>::TlsConnect,
    done: HandshakeClock,
}

impl TimedTls {
    /// A connector for one connection to `hostname` (already validated as a host name).
    pub(crate) fn new(
        make: &MakeRustlsConnect,
        hostname: &str,
    ) -> Result<(Self, HandshakeClock), ConfigError> {
        // tokio-postgres-rustls reports a bad name only once the handshake starts: check
        // it here so it is a configuration error.
        ServerName::try_from(hostname).map_err(|e| ConfigError::Invalid {
            name: "hostname",
            reason: format!("not usable as a TLS server name: {e}"),
        })?;
        let mut make = make.clone(); // an Arc of the shared ClientConfig
        let inner = match MakeTlsConnect::<TcpStream>::make_tls_connect(&mut make, hostname) {
            Ok(inner) => inner,
            Err(never) => match never {},
        };
        let done = HandshakeClock::default();
        Ok((
            Self {
                inner,
                done: done.clone(),
            },
            done,
        ))
    }
}

impl TlsConnect<TcpStream> for TimedTls {
    type Stream = TlsStream;
    type Error = <<MakeRustlsConnect as MakeTlsConnect<TcpStream>>::TlsConnect as TlsConnect<
        TcpStream,
    >>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream, Self::Error>> + Send>>;

    fn connect(self, stream: TcpStream) -> Self::Future {
        let handshake = self.inner.connect(stream);
        Box::pin(async move {
            let stream = handshake.await?;
            if let Ok(mut done) = self.done.lock() {
                *done = Some(Instant::now());
            }
            Ok(stream)
        })
    }
}
