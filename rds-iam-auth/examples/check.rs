//! Connect with the Lambda's variables, read a few rows, then print the staged check.
//!
//! Against the local stack:
//!
//! ```sh
//! make local-up && source .local/stack.env
//! cargo run -p rds-iam-auth --example check
//! ```
//!
//! Against AWS: set the same variables (the Lambda's, listed in ARCHITECTURE.md) and AWS
//! credentials of the application account.

use std::process::ExitCode;

use rds_iam_auth::{CaBundle, Config, Error};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn config() -> Result<Config, String> {
    let need =
        |name: &str| var(name).ok_or_else(|| format!("set {name} (e.g. source .local/stack.env)"));
    let mut config = Config::new()
        .hostname(need("RDS_PROXY_APPLICATION_ENDPOINT")?)
        .user(need("DB_USERNAME")?)
        .database(need("DBNAME")?)
        .assume_role(need("DATABASE_ACCOUNT_IAM_ROLE")?)
        .application_name("rds-iam-auth example");
    if let Some(port) = var("DB_PORT") {
        config = config.port(
            port.parse()
                .map_err(|_| format!("DB_PORT={port} is not a port"))?,
        );
    }
    if let Some(id) = var("EXTERNAL_ID") {
        config = config.external_id(id);
    }
    if let Some(address) = var("DB_CONNECT_HOST") {
        config = config.connect_address(address);
    }
    if let Some(path) = var("DB_CA_BUNDLE") {
        config = config.ca_bundle(CaBundle::from_pem_file(path).map_err(|e| e.to_string())?);
    }
    Ok(config)
}

async fn run() -> Result<bool, Error> {
    let config = match config() {
        Ok(c) => c,
        Err(message) => {
            eprintln!("{message}");
            return Ok(false);
        }
    };
    let connector = config.connector().await?;
    let client = connector.connect().await?;
    let rows = client
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1", &[])
        .await
        .map_err(Error::from_query)?;
    println!(
        "tables: {}",
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let report = connector.check().await;
    println!("{report}");
    Ok(report.is_success())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}
