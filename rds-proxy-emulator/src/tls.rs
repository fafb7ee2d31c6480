//! A throwaway certificate authority and the proxy's server certificate.
//!
//! Each stack generates a fresh CA (ECDSA P-256, valid for 30 days from an hour ago) and a
//! server certificate whose subject alternative names are exactly the endpoint host names,
//! so that a client verifying against the CA with the endpoint name succeeds, and with any
//! other name (or without the CA) fails, as against a real RDS Proxy.
//!
//! ```
//! let tls = rds_proxy_emulator::tls::ProxyTls::generate(&["db.proxy-x.us-east-1.rds.amazonaws.com".to_string()]).unwrap();
//! assert!(tls.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! ```

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::Error;

/// The CA (as PEM) and a rustls server configuration presenting the endpoint certificate.
#[derive(Clone)]
pub struct ProxyTls {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate, DER.
    pub ca_der: CertificateDer<'static>,
    /// Server configuration for the proxy listeners.
    pub server_config: Arc<rustls::ServerConfig>,
    /// A certificate for PostgreSQL itself (`localhost`, `127.0.0.1`), from the same CA, so
    /// that direct connections can be verified (`sslmode=verify-full`) like proxy ones.
    pub backend_cert_pem: String,
    /// Its private key (PEM).
    pub backend_key_pem: String,
}

impl std::fmt::Debug for ProxyTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyTls").finish_non_exhaustive()
    }
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

impl ProxyTls {
    /// Generates a CA and a certificate for `hostnames`.
    pub fn generate(hostnames: &[String]) -> Result<ProxyTls, Error> {
        let now = time::OffsetDateTime::now_utc();
        let not_before = now - time::Duration::hours(1);
        let not_after = now + time::Duration::days(30);

        let ca_key = KeyPair::generate().map_err(tls_err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rds-proxy-emulator local CA");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "rds-proxy-emulator (not Amazon)");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;

        let leaf_key = KeyPair::generate().map_err(tls_err)?;
        let mut params = CertificateParams::new(hostnames.to_vec()).map_err(tls_err)?;
        if let Some(first) = hostnames.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let leaf = params
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .map_err(tls_err)?;

        let backend_key = KeyPair::generate().map_err(tls_err)?;
        let mut backend_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(tls_err)?;
        backend_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        backend_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        backend_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        backend_params.use_authority_key_identifier_extension = true;
        backend_params.not_before = not_before;
        backend_params.not_after = not_after;
        let backend = backend_params
            .signed_by(&backend_key, &ca_cert, &ca_key)
            .map_err(tls_err)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .map_err(tls_err)?;
        Ok(ProxyTls {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_config: Arc::new(server_config),
            backend_cert_pem: backend.pem(),
            backend_key_pem: backend_key.serialize_pem(),
        })
    }
}
