//! A sqlx `PgPool` whose connections log in with fresh IAM tokens: run queries from a few
//! tasks for a while and print what the refresh task did.
//!
//! Against the local stack:
//!
//! ```sh
//! make local-up && source .local/stack.env
//! cargo run -p rds-iam-auth --features sqlx --example sqlx_pool
//! ```
//!
//! `stack.env` sets the Lambda's variables (read by `Config::from_env`:
//! `rds_iam_auth::env::VARIABLES`) plus `AWS_REGION`, the application's keys and
//! `AWS_ENDPOINT_URL_STS`. `DB_CONNECT_HOST` makes the connections go to the stand-in's
//! address, through the library's local forwarder, so that sqlx still verifies the
//! certificate's chain and the endpoint name (see the module documentation of
//! `rds_iam_auth::sqlx`). Against AWS: set the same variables, without `DB_CONNECT_HOST`
//! when the endpoint resolves from where this runs.
//!
//! `RUN_SECONDS` (default 20) sets how long it runs; `REFRESH_SECONDS` the refresh interval
//! (default: a third of the token's life, 5 minutes). `RUST_LOG=rds_iam_auth=debug` logs
//! every refresh.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rds_iam_auth::sqlx::{PgPoolOptions, PoolBuilder};
use rds_iam_auth::Config;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn seconds(name: &str) -> Result<Option<Duration>, String> {
    var(name)
        .map(|v| {
            v.parse()
                .map(Duration::from_secs)
                .map_err(|_| format!("{name}={v} is not a number of seconds"))
        })
        .transpose()
}

async fn run() -> Result<(), String> {
    // The Lambda's variables, through the library's one mapping.
    let config = Config::from_env()
        .map_err(|e| e.to_string())?
        .application_name("rds-iam-auth sqlx example");
    let run_for = seconds("RUN_SECONDS")?.unwrap_or(Duration::from_secs(20));
    let connector = config.connector().await.map_err(|e| e.to_string())?;
    let mut builder = PoolBuilder::new(connector).pool_options(
        PgPoolOptions::new()
            .max_connections(4)
            // Short, so that connections (and logins) are replaced while it runs.
            .max_lifetime(Duration::from_secs(5)),
    );
    if let Some(every) = seconds("REFRESH_SECONDS")? {
        builder = builder.refresh_every(every);
    }
    let (pool, refresh) = builder.connect().await.map_err(|e| e.to_string())?;

    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while started.elapsed() < run_for {
                    match sqlx::query_scalar::<_, String>("SELECT current_user::text")
                        .fetch_one(&pool)
                        .await
                    {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            failed += 1;
                            eprintln!("query failed: {e}");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await.map_err(|e| e.to_string())?;
        ok += o;
        failed += f;
    }
    println!(
        "{ok} queries ok, {failed} failed in {:.0?}; tokens installed: {}, failed refreshes: {}",
        started.elapsed(),
        refresh.refresh_count(),
        refresh.failed_refresh_count()
    );
    if let Some(err) = refresh.last_refresh_error() {
        println!("refresh failing: {err}");
    }
    pool.close().await;
    if failed > 0 {
        return Err(format!("{failed} queries failed"));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Refresh failures are WARN events: show them (RUST_LOG=rds_iam_auth=debug shows every
    // refresh).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}
