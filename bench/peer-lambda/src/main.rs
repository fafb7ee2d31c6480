//! The rival of the latency benchmark (`make bench-latency`): the connection-test Lambda as a
//! Rust user would write it from awslabs' `lambda-rds-iam-auth` example, plus the cross-account
//! step. Every invocation loads the SDK configuration, assumes the database account's role
//! (`aws_config::sts::AssumeRoleProvider` with the external ID), presigns an IAM token with
//! `aws-sigv4`, opens an sqlx pool with `PgSslMode::Require` and runs one query.
//!
//! It reads the same variables as connection-test and answers the same success body. Like the
//! example it dials `DB_CONNECT_HOST` when set (the token still names the endpoint).
//!
//! What it verifies: `PgSslMode::Require` encrypts but does not verify the proxy's certificate
//! (neither its chain nor its name), as in the example. Not part of the project: a benchmark rival.

use std::{
    env,
    time::{Duration, SystemTime},
};

use aws_config::{sts::AssumeRoleProvider, BehaviorVersion};
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::{
    http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings},
    sign::v4,
};
use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

/// The database account's role, assumed with the external ID; returns a token for
/// `db_hostname:port` signed with the role's credentials.
async fn generate_rds_iam_token(
    db_hostname: &str,
    port: u16,
    db_username: &str,
) -> Result<String, Error> {
    let config = aws_config::load_defaults(BehaviorVersion::latest()).await;

    let role_arn = env::var("DATABASE_ACCOUNT_IAM_ROLE")?;
    let mut role = AssumeRoleProvider::builder(role_arn).session_name("connectiontest-lambda");
    if let Ok(external_id) = env::var("EXTERNAL_ID") {
        role = role.external_id(external_id);
    }
    let provider = role.configure(&config).build().await;

    let credentials = provider.provide_credentials().await?;
    let identity = credentials.into();
    let region = config.region().ok_or("no region")?.to_string();

    let mut signing_settings = SigningSettings::default();
    signing_settings.expires_in = Some(Duration::from_secs(900));
    signing_settings.signature_location = SignatureLocation::QueryParams;

    let signing_params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name("rds-db")
        .time(SystemTime::now())
        .settings(signing_settings)
        .build()?;

    let url = format!("https://{db_hostname}:{port}/?Action=connect&DBUser={db_username}");
    let signable_request =
        SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))?;
    let (signing_instructions, _signature) =
        sign(signable_request, &signing_params.into())?.into_parts();

    let mut url = url::Url::parse(&url)?;
    for (name, value) in signing_instructions.params() {
        url.query_pairs_mut().append_pair(name, value);
    }
    Ok(url.to_string().split_off("https://".len()))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(handler)).await
}

async fn handler(_event: LambdaEvent<Value>) -> Result<Value, Error> {
    let db_host = env::var("RDS_PROXY_APPLICATION_ENDPOINT")?;
    let db_port = env::var("DB_PORT")
        .ok()
        .map(|p| p.parse::<u16>())
        .transpose()?
        .unwrap_or(5432);
    let db_name = env::var("DBNAME")?;
    let db_user_name = env::var("DB_USERNAME")?;

    let token = generate_rds_iam_token(&db_host, db_port, &db_user_name).await?;

    // The address to dial: DB_CONNECT_HOST (host[:port]) when set, else the endpoint.
    let (dial_host, dial_port) = match env::var("DB_CONNECT_HOST") {
        Ok(addr) => match addr.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse::<u16>()?),
            None => (addr, db_port),
        },
        Err(_) => (db_host.clone(), db_port),
    };
    let mut opts = PgConnectOptions::new()
        .host(&dial_host)
        .port(dial_port)
        .username(&db_user_name)
        .password(&token)
        .database(&db_name)
        .ssl_mode(PgSslMode::Require);
    if let Ok(bundle) = env::var("DB_CA_BUNDLE") {
        opts = opts.ssl_root_cert(bundle);
    }

    let pool = PgPoolOptions::new().connect_with(opts).await?;

    let result: i32 = sqlx::query_scalar("SELECT $1 + $2")
        .bind(3)
        .bind(2)
        .fetch_one(&pool)
        .await?;
    if result != 5 {
        return Err(format!("SELECT 3 + 2 returned {result}").into());
    }

    Ok(json!({
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": "Database connection was successful!"
    }))
}
