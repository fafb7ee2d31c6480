//! A deadpool-postgres pool whose every connection gets a fresh IAM token: 16 tasks share 4
//! connections, with `prepare_cached`, for `RUN_SECONDS` (default 20) seconds.
//!
//! Against the local stack:
//!
//! ```sh
//! make local-up && source .local/stack.env
//! cargo run -p rds-iam-auth --features deadpool-postgres --example deadpool_pool
//! ```
//!
//! Against AWS: set the same variables (`rds_iam_auth::env::VARIABLES`) and AWS credentials
//! of the application account.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rds_iam_auth::pool::{self, ManagerConfig, PoolError, RecyclingMethod};
use rds_iam_auth::Config;

async fn run(seconds: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let connector = Config::from_env()?
        .application_name("rds-iam-auth pool example")
        .connector()
        .await?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Verified,
    };
    let pool = pool::builder(&connector, manager_config)
        .max_size(4)
        .build()?;

    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..16i32)
        .map(|task| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut queries = 0u64;
                while Instant::now() < until {
                    let client = match pool.get().await {
                        Ok(client) => client,
                        // A connect failure: the stage (assume-role, tls, login, ...) and
                        // its hint travel inside deadpool's error.
                        Err(PoolError::Backend(e)) => match pool::stage_error(&e) {
                            Some(stage_error) => return Err(stage_error.to_string()),
                            None => return Err(e.to_string()),
                        },
                        Err(e) => return Err(e.to_string()),
                    };
                    let statement = client
                        .prepare_cached("SELECT $1::int4 * 2")
                        .await
                        .map_err(|e| e.to_string())?;
                    let doubled: i32 = client
                        .query_one(&statement, &[&task])
                        .await
                        .map_err(|e| e.to_string())?
                        .get(0);
                    assert_eq!(doubled, task * 2);
                    queries += 1;
                }
                Ok::<u64, String>(queries)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    println!(
        "{total} queries in {seconds} s through {} pooled connections",
        pool.status().size
    );
    Ok(total)
}

#[tokio::main]
async fn main() -> ExitCode {
    let seconds = match std::env::var("RUN_SECONDS").ok().map(|s| s.parse::<u64>()) {
        None => 20,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("error: RUN_SECONDS must be a whole number of seconds, 1 or more");
            return ExitCode::from(2);
        }
    };
    match run(seconds).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}
