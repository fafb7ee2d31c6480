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
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::tls::{ChannelBinding, TlsConnect};

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
/// ring as the crypto provider (chosen explicitly, so it does not matter which providers
/// other crates enable).
pub fn client_config(extra: Option<&CaBundle>) -> Result<Arc<ClientConfig>, ConfigError> {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid {
            name: "tls",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// When the TLS handshake of a connection finished, once it has.
pub(crate) type HandshakeClock = Arc<Mutex<Option<Instant>>>;

/// A one-shot TLS connector for tokio-postgres' `connect_raw` that verifies against
/// `server_name` and notes when the handshake finished (to time the TLS stage apart from
/// the login that follows it).
pub(crate) struct RustlsConnect {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    handshake_done: HandshakeClock,
}

impl RustlsConnect {
    pub(crate) fn new(
        config: Arc<ClientConfig>,
        hostname: &str,
    ) -> Result<(Self, HandshakeClock), ConfigError> {
        let server_name =
            ServerName::try_from(hostname.to_owned()).map_err(|e| ConfigError::Invalid {
                name: "hostname",
                reason: format!("not usable as a TLS server name: {e}"),
            })?;
        let done = Arc::new(Mutex::new(None));
        Ok((
            Self {
                config,
                server_name,
                handshake_done: done.clone(),
            },
            done,
        ))
    }
}

impl TlsConnect<TcpStream> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: TcpStream) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let tls = connector.connect(self.server_name, stream).await?;
            if let Ok(mut done) = self.handshake_done.lock() {
                *done = Some(Instant::now());
            }
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream for tokio-postgres.
pub(crate) struct RustlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // IAM auth sends a cleartext password inside TLS; SCRAM channel binding is unused.
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
