//! The network legs of a cold connection-test invocation, each timed on its own with a plain
//! client, for `make bench-latency`'s critical-path limit:
//!
//! - `sts_ms`: one `AssumeRole` (with the external ID) on a fresh STS client, so its
//!   connection is opened too; a throwaway client has made one call before, so process-wide
//!   one-time setup is not counted.
//! - `handshake_ms`: TCP connect, PostgreSQL `SSLRequest` and the TLS handshake (verified
//!   against the endpoint name) to `DB_CONNECT_HOST`.
//! - `connect_query_ms`: the same plus login with a token signed beforehand and `SELECT 1`
//!   (tokio-postgres over rustls).
//! - `first_handshake_ms` (not part of the limit): the process's first TCP + `SSLRequest` +
//!   TLS, made before the rounds. It includes one-time setup, above all the seeding of the
//!   crypto library's random number generator, so the timed handshakes are not the first.
//!
//! Reads the Lambda's variables (the local stack's `stack.env`); prints one JSON object per
//! round on stdout. Usage: `critical-path-probe ROUNDS`.

use std::time::{Instant, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use rds_iam_auth::{token, CaBundle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn var(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

async fn assume_role(sdk: &aws_config::SdkConfig) -> Result<Credentials, BoxError> {
    let client = aws_sdk_sts::Client::new(sdk);
    let out = client
        .assume_role()
        .role_arn(var("DATABASE_ACCOUNT_IAM_ROLE")?)
        .role_session_name("latency-probe")
        .external_id(var("EXTERNAL_ID")?)
        .send()
        .await?;
    let c = out
        .credentials()
        .ok_or("AssumeRole returned no credentials")?;
    Ok(Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "latency-probe",
    ))
}

/// TCP, `SSLRequest`, TLS handshake; the TLS stream is dropped.
async fn handshake(
    addr: &str,
    server_name: &rustls::pki_types::ServerName<'static>,
    tls: &tokio_rustls::TlsConnector,
) -> Result<(), BoxError> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    // SSLRequest: length 8, code 80877103.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err("the server refused TLS".into());
    }
    let _tls = tls.connect(server_name.clone(), tcp).await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let endpoint = var("RDS_PROXY_APPLICATION_ENDPOINT")?;
    let port: u16 = var("DB_PORT")?.parse()?;
    let user = var("DB_USERNAME")?;
    let dbname = var("DBNAME")?;
    let dial = var("DB_CONNECT_HOST")?;
    let (dial_host, dial_port) = dial.rsplit_once(':').ok_or("DB_CONNECT_HOST: host:port")?;
    let bundle = CaBundle::from_pem_file(var("DB_CA_BUNDLE")?)?;
    let config = client_config(&bundle)?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config.clone()));
    let make_tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
    let server_name = rustls::pki_types::ServerName::try_from(endpoint.clone())?;
    let params = token::TokenParams::new(&endpoint, port, &user, Some(&var("AWS_REGION")?))?;

    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    assume_role(&sdk).await?; // process-wide one-time setup, not counted
                              // The same for TLS: the first handshake of a process also seeds the crypto library's
                              // random number generator (aws-lc's, a CPU-jitter entropy source unless built without
                              // it), which costs tens of milliseconds of CPU. Timed on its own, not counted.
    let t = Instant::now();
    handshake(&dial, &server_name, &connector).await?;
    let first_handshake_ms = t.elapsed().as_secs_f64() * 1000.0;

    for round in 0..rounds {
        let t = Instant::now();
        let credentials = assume_role(&sdk).await?;
        let sts_ms = t.elapsed().as_secs_f64() * 1000.0;

        let password = token::sign(&params, &credentials, SystemTime::now());

        let t = Instant::now();
        handshake(&dial, &server_name, &connector).await?;
        let handshake_ms = t.elapsed().as_secs_f64() * 1000.0;

        let mut pg = tokio_postgres::Config::new();
        pg.host(&endpoint)
            .hostaddr(dial_host.parse()?)
            .port(dial_port.parse()?)
            .user(&user)
            .dbname(&dbname)
            .password(password.as_str())
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let t = Instant::now();
        let (client, connection) = pg.connect(make_tls.clone()).await?;
        let conn = tokio::spawn(connection);
        client.simple_query("SELECT 1").await?;
        let connect_query_ms = t.elapsed().as_secs_f64() * 1000.0;
        drop(client);
        let _ = conn.await;

        println!(
            "{}",
            serde_json::json!({
                "round": round + 1,
                "sts_ms": sts_ms,
                "handshake_ms": handshake_ms,
                "connect_query_ms": connect_query_ms,
                "first_handshake_ms": first_handshake_ms,
            })
        );
    }
    Ok(())
}

/// The client configuration the library builds: the bundle as the only extra trust anchor
/// (the stand-in's CA), aws-lc-rs, TLS 1.2 and 1.3. The library keeps its own private.
fn client_config(
    bundle: &CaBundle,
) -> Result<rustls::ClientConfig, Box<dyn std::error::Error + Send + Sync>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in bundle.certificates() {
        roots.add(cert.clone())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
