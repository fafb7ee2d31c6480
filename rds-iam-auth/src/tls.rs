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
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::classify::{tls_error, tls_refused};
use crate::error::{ConfigError, Error};

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

    /// The certificates (DER), for clients that take their own trust store.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certificates
    }

    /// Where the bundle was read from (a path, or `<memory>`).
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// The rustls client configuration: webpki roots plus the extra bundle, TLS 1.2 and 1.3,
/// aws-lc-rs as the crypto provider (the AWS SDK's own, so one crypto library is compiled;
/// chosen explicitly, so it does not matter which providers other crates enable).
pub(crate) fn client_config(extra: Option<&CaBundle>) -> Result<ClientConfig, ConfigError> {
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

/// The TLS stream a session runs over (`tokio-postgres-rustls`'s), as in the
/// [`Connection`](tokio_postgres::Connection) of
/// [`Connector::connect_unspawned`](crate::Connector::connect_unspawned).
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<TcpStream>>::Stream;

/// PostgreSQL's `SSLRequest`: length 8, then the request code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Asks the server for TLS and runs the handshake with `tokio-postgres-rustls`, verifying
/// the certificate against `hostname` whatever address the socket is connected to.
///
/// Done here rather than inside tokio-postgres' `connect_raw` so that it can run before
/// the token exists (while STS is still answering) and so that its time is its own.
pub(crate) async fn handshake(
    make: &MakeRustlsConnect,
    hostname: &str,
    mut stream: TcpStream,
) -> Result<TlsStream, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = |e: std::io::Error| tls_error(hostname, e);
    stream.write_all(&SSL_REQUEST).await.map_err(io)?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {}
        b'N' => return Err(tls_refused(hostname, "the server does not support TLS")),
        other => {
            return Err(tls_refused(
                hostname,
                &format!(
                "the server answered the TLS request with {other:#04x}, not a PostgreSQL server?"
            ),
            ))
        }
    }
    let mut make = make.clone(); // an Arc of the shared ClientConfig
    let connect = match MakeTlsConnect::<TcpStream>::make_tls_connect(&mut make, hostname) {
        Ok(connect) => connect,
        Err(never) => match never {},
    };
    connect.connect(stream).await.map_err(io)
}
