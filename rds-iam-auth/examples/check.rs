//! Connect with the Lambda's variables, read a few rows, then print the staged check.
//!
//! Against the local stack:
//!
//! ```sh
//! make local-up && source .local/stack.env
//! cargo run -p rds-iam-auth --example check
//! ```
//!
//! Against AWS: set the same variables (the Lambda's: `rds_iam_auth::env::VARIABLES`) and
//! AWS credentials of the application account.

use std::process::ExitCode;

use rds_iam_auth::{Config, Error};

async fn run() -> Result<bool, Error> {
    // The Lambda's variables (rds_iam_auth::env::VARIABLES); a malformed or missing one is
    // an error that names it.
    let config = Config::from_env()?.application_name("rds-iam-auth example");
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
