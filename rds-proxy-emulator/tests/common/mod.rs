//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use rds_proxy_emulator::{Endpoint, LocalStack, StackConfig, StartOptions, TemporaryCredentials};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const CONNECT_ROLE: &str =
    "arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role";
pub const NO_CONNECT_ROLE: &str = "arn:aws:iam::222222222222:role/proxy-no-connect-role";
pub const UNTRUSTED: &str = "arn:aws:iam::111111111111:role/some-other-lambda-role";

/// What a test token is signed for and with.
#[derive(Debug, Clone, Copy)]
pub struct TokenSpec<'a> {
    pub host: &'a str,
    pub port: u16,
    pub region: &'a str,
    pub user: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    /// `X-Amz-Expires` (the SDK generator uses 900).
    pub expires_in: u64,
}

impl TokenSpec<'_> {
    /// Signs an IAM auth token with the AWS SDK's SigV4 crate, the way the SDK's own RDS
    /// auth token generator does: presign `https://HOST:PORT/?Action=connect&DBUser=USER`
    /// in the query string for service `rds-db`, then drop the scheme. Independent of the
    /// emulator's verifier.
    pub fn sign(&self, at: OffsetDateTime) -> String {
        use aws_sigv4::http_request::{
            sign as sigv4_sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
        };
        let creds = aws_credential_types::Credentials::new(
            self.access_key_id,
            self.secret_access_key,
            self.session_token.map(str::to_string),
            None,
            "test",
        );
        let identity = creds.into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(std::time::Duration::from_secs(self.expires_in));
        let at = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(
                u64::try_from(at.unix_timestamp()).expect("after 1970"),
            );
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name("rds-db")
            .time(at)
            .settings(settings)
            .build()
            .expect("signing params")
            .into();
        let mut user = String::new();
        for &b in self.user.as_bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                user.push(char::from(b));
            } else {
                user.push_str(&format!("%{b:02X}"));
            }
        }
        let url = format!(
            "https://{}:{}/?Action=connect&DBUser={user}",
            self.host, self.port
        );
        let signable =
            SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
                .expect("signable request");
        let (instructions, _signature) =
            sigv4_sign(signable, &params).expect("signing").into_parts();
        let mut request = http::Request::builder()
            .uri(&url)
            .body(())
            .expect("request");
        instructions.apply_to_request_http1x(&mut request);
        let uri = request.uri().to_string();
        uri.strip_prefix("https://").expect("https URL").to_string()
    }
}

/// A token signed (with [`TokenSpec::sign`]) for `host:port` in `region`, 900 s.
pub fn sign_for(
    host: &str,
    port: u16,
    region: &str,
    user: &str,
    creds: &TemporaryCredentials,
    at: OffsetDateTime,
) -> String {
    TokenSpec {
        host,
        port,
        region,
        user,
        access_key_id: &creds.access_key_id,
        secret_access_key: &creds.secret_access_key,
        session_token: Some(&creds.session_token),
        expires_in: 900,
    }
    .sign(at)
}

/// [`TokenSpec::sign`] for an endpoint of `stack` with temporary credentials.
pub fn sign_token(
    stack: &LocalStack,
    endpoint: &Endpoint,
    user: &str,
    creds: &TemporaryCredentials,
    at: OffsetDateTime,
) -> String {
    sign_for(
        &endpoint.hostname,
        endpoint.port,
        stack.region(),
        user,
        creds,
        at,
    )
}

/// Starts a stack, caching initdb's output under target/tmp.
pub async fn start(config: StackConfig) -> LocalStack {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "rds_proxy_emulator=info".into()),
        )
        .with_test_writer()
        .try_init();
    let options = StartOptions {
        pg_template_cache: Some(
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pg-template"),
        ),
        ..StartOptions::default()
    };
    LocalStack::start_with(config, options)
        .await
        .expect("stack starts")
}

pub async fn demo() -> LocalStack {
    start(StackConfig::demo()).await
}

/// Fresh session credentials for a role, valid for an hour.
pub fn session(stack: &LocalStack, role: &str) -> TemporaryCredentials {
    stack
        .issue_credentials(
            role,
            "test-session",
            OffsetDateTime::now_utc() + time::Duration::hours(1),
        )
        .expect("role exists")
}

pub fn client_config(stack: &LocalStack) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(stack.ca_pem().as_bytes()) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA is valid");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// tokio-postgres over verified TLS: SNI and verification against `tls_name`, dialing
/// the endpoint's real listen address.
pub async fn connect_as(
    stack: &LocalStack,
    endpoint: &Endpoint,
    tls_name: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(tls_name)
        .hostaddr(endpoint.listen.ip())
        .port(endpoint.listen.port())
        .user(user)
        .password(password)
        .dbname(stack.db_name())
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(stack));
    let (client, conn) = cfg.connect(tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn connect(
    stack: &LocalStack,
    endpoint: &Endpoint,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_as(stack, endpoint, &endpoint.hostname, user, password).await
}

/// `(SQLSTATE, message)` of a FATAL refusal.
pub fn refusal(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (d.code().code().to_string(), d.message().to_string()),
        None => ("<none>".into(), e.to_string()),
    }
}

pub fn iam_failed(user: &str) -> (String, String) {
    (
        "28P01".into(),
        format!("The IAM authentication failed for the role {user}. Check the IAM token for this role and try again."),
    )
}

/// A raw client: optional TLS, then arbitrary startup bytes; returns the first
/// server message as `(tag, fields)` where fields are ErrorResponse fields.
pub enum Raw {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Raw {
    pub async fn open(stack: &LocalStack, endpoint: &Endpoint, tls: bool) -> Raw {
        let mut tcp = TcpStream::connect(endpoint.listen).await.expect("dial");
        if !tls {
            return Raw::Plain(tcp);
        }
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .expect("SSLRequest");
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.expect("SSL answer");
        assert_eq!(&answer, b"S");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(stack)));
        let name = ServerName::try_from(endpoint.hostname.clone()).expect("name");
        let s = connector.connect(name, tcp).await.expect("TLS handshake");
        Raw::Tls(Box::new(s))
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        match self {
            Raw::Plain(s) => s.write_all(bytes).await.expect("write"),
            Raw::Tls(s) => {
                s.write_all(bytes).await.expect("write");
                s.flush().await.expect("flush");
            }
        }
    }

    /// Ends what the client sends (TLS close_notify, then the TCP write side), keeping
    /// the read side open.
    pub async fn shutdown_write(&mut self) {
        match self {
            Raw::Plain(s) => s.shutdown().await.expect("shutdown"),
            Raw::Tls(s) => s.shutdown().await.expect("shutdown"),
        }
    }

    /// Reads to the end of the stream; over TLS, an end without close_notify is an error.
    pub async fn read_to_end(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Raw::Plain(s) => s.read_to_end(&mut out).await?,
            Raw::Tls(s) => s.read_to_end(&mut out).await?,
        };
        Ok(out)
    }

    /// TLS, startup, the token as the password; returns once the session is ready
    /// (ReadyForQuery).
    pub async fn login(stack: &LocalStack, endpoint: &Endpoint, user: &str, token: &str) -> Raw {
        Raw::login_with(stack, endpoint, user, token, &[]).await.0
    }

    /// [`Raw::login`] with more startup parameters; also returns the greeting: the
    /// `ParameterStatus` pairs and the `BackendKeyData` body.
    pub async fn login_with(
        stack: &LocalStack,
        endpoint: &Endpoint,
        user: &str,
        token: &str,
        params: &[(&str, &str)],
    ) -> (Raw, Greeting) {
        let mut raw = Raw::open(stack, endpoint, true).await;
        let mut all = vec![("user", user), ("database", stack.db_name())];
        all.extend_from_slice(params);
        raw.write(&startup_packet(196_608, &all)).await;
        let (tag, body) = raw.read_message().await.expect("password request");
        assert_eq!((tag, body.as_slice()), (b'R', &[0, 0, 0, 3][..]));
        let mut password = token.as_bytes().to_vec();
        password.push(0);
        raw.write(&message(b'p', &password)).await;
        let mut greeting = Greeting::default();
        loop {
            let (tag, body) = raw.read_message().await.expect("login answer");
            assert_ne!(tag, b'E', "login refused: {:?}", error_fields(&body));
            match tag {
                b'S' => {
                    let mut parts = body.split(|b| *b == 0);
                    let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    greeting.parameters.push((k, v));
                }
                b'K' => greeting.key = body,
                b'Z' => return (raw, greeting),
                _ => {}
            }
        }
    }

    /// Sends a simple query and reads its answer up to ReadyForQuery: the rows (text
    /// columns) and the first error's fields.
    pub async fn simple(
        &mut self,
        sql: &str,
    ) -> (Vec<Vec<Option<String>>>, Option<(String, String, String)>) {
        self.write(&query_message(sql)).await;
        self.answer().await
    }

    /// Reads answers up to ReadyForQuery: the rows and the first error's fields.
    pub async fn answer(&mut self) -> (Vec<Vec<Option<String>>>, Option<(String, String, String)>) {
        let mut rows = Vec::new();
        let mut error = None;
        while let Some((tag, body)) = self.read_message().await {
            match tag {
                b'D' => rows.push(columns(&body)),
                b'E' => {
                    error.get_or_insert_with(|| error_fields(&body));
                }
                b'Z' => break,
                _ => {}
            }
        }
        (rows, error)
    }

    pub async fn read_message(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        let r = match self {
            Raw::Plain(s) => s.read_exact(&mut head).await,
            Raw::Tls(s) => s.read_exact(&mut head).await,
        };
        r.ok()?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.checked_sub(4)?];
        let r = match self {
            Raw::Plain(s) => s.read_exact(&mut body).await,
            Raw::Tls(s) => s.read_exact(&mut body).await,
        };
        r.ok()?;
        Some((head[0], body))
    }
}

/// What a login greets a client with.
#[derive(Debug, Default, Clone)]
pub struct Greeting {
    /// `ParameterStatus` pairs, in order.
    pub parameters: Vec<(String, String)>,
    /// The `BackendKeyData` body: process id and secret.
    pub key: Vec<u8>,
}

impl Greeting {
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A protocol 3.0 message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A simple-protocol Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// The columns of a DataRow, as text (`None` for NULL).
pub fn columns(data_row: &[u8]) -> Vec<Option<String>> {
    let n = u16::from_be_bytes([data_row[0], data_row[1]]);
    let mut rest = &data_row[2..];
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            rest = &rest[4..];
            let len = usize::try_from(len).ok()?;
            let value = String::from_utf8_lossy(&rest[..len]).into_owned();
            rest = &rest[len..];
            Some(value)
        })
        .collect()
}

pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// Parses an ErrorResponse: `(severity, sqlstate, message)`.
pub fn error_fields(body: &[u8]) -> (String, String, String) {
    let (mut sev, mut code, mut msg) = (String::new(), String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        if let Some((&tag, value)) = field.split_first() {
            let v = String::from_utf8_lossy(value).into_owned();
            match tag {
                b'V' => sev = v,
                b'C' => code = v,
                b'M' => msg = v,
                _ => {}
            }
        }
    }
    (sev, code, msg)
}

/// Sends a startup packet (after TLS if `tls`) and returns the FATAL's (SQLSTATE, message).
pub async fn raw_refusal(
    stack: &LocalStack,
    endpoint: &Endpoint,
    tls: bool,
    packet: &[u8],
) -> (String, String) {
    let mut raw = Raw::open(stack, endpoint, tls).await;
    raw.write(packet).await;
    let (tag, body) = raw.read_message().await.expect("a server message");
    assert_eq!(tag, b'E', "expected an ErrorResponse");
    let (sev, code, msg) = error_fields(&body);
    assert_eq!(sev, "FATAL");
    (code, msg)
}
