//! Soak: a service's life compressed into minutes. A pool of 8 under 32 busy tasks plus a
//! fresh connect every 250 ms, with role credentials that expire every 30 s and tokens the
//! proxy accepts for only 20 s. Nothing may fail, and STS must see the rotations, not the
//! connects.
//!
//! Ignored by plain test runs (it takes minutes); `make soak` runs it, and `make test` runs
//! it after the other suites. `SOAK_SECONDS` sets the length (default 120). The password
//! database's soak (secret rotations) needs the `sqlx` feature too, which `make soak` turns on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rds_iam_auth::pool::{self, ManagerConfig, Pool, RecyclingMethod, Runtime};

mod common;
use common::{config, ro, stack_with};

/// How long a soak runs: `SOAK_SECONDS`, default 120.
fn soak_seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .map(|v| v.parse().expect("SOAK_SECONDS is a whole number"))
        .unwrap_or(120)
}

/// `n` tasks that take a pooled connection and query until `until`, counting queries;
/// each returns its failures.
fn pool_workers(
    pool: &Pool,
    n: usize,
    until: Instant,
    queries: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..n)
        .map(|_| {
            let (pool, queries) = (pool.clone(), queries.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while Instant::now() < until {
                    match pool.get().await {
                        Ok(client) => match client.simple_query("SELECT 1").await {
                            Ok(_) => {
                                queries.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.push(format!("query: {e}")),
                        },
                        Err(e) => failures.push(format!("pool: {e}")),
                    }
                }
                failures
            })
        })
        .collect()
}

/// A fresh connect and a query every 250 ms until `until`: how many worked, and the failures.
async fn connect_every_250_ms(
    connector: &rds_iam_auth::Connector,
    until: Instant,
) -> (u64, Vec<String>) {
    let (mut connects, mut failures) = (0u64, Vec::new());
    while Instant::now() < until {
        let started = Instant::now();
        match connector.connect().await {
            Ok(client) => match client.simple_query("SELECT 1").await {
                Ok(_) => connects += 1,
                Err(e) => failures.push(format!("query: {e}")),
            },
            Err(e) => failures.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(250).saturating_sub(started.elapsed())).await;
    }
    (connects, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: make soak"]
async fn soak_pool_and_connects_through_rotating_credentials_and_short_tokens() {
    let seconds = soak_seconds();
    let stack = stack_with(|c| {
        c.sts.credentials_lifetime_seconds = Some(30);
        c.proxy.token_lifetime_seconds = 20;
    })
    .await;
    let connector = config(&stack, ro(&stack))
        .await
        .connect_timeout(Duration::from_secs(10))
        .connector()
        .await
        .expect("connector");
    // Connections live 10 s: the pool keeps logging in, with new tokens, all along.
    let verified = ManagerConfig {
        recycling_method: RecyclingMethod::Verified,
    };
    let pool = Pool::builder(pool::manager(&connector, verified))
        .runtime(Runtime::Tokio1)
        .recycle_timeout(Some(pool::DEFAULT_RECYCLE_TIMEOUT))
        .pre_recycle(pool::max_lifetime(Duration::from_secs(10)))
        .max_size(8)
        .build()
        .expect("pool");

    let until = Instant::now() + Duration::from_secs(seconds);
    let queries = Arc::new(AtomicU64::new(0));
    let workers = pool_workers(&pool, 32, until, &queries);
    let (connects, connect_failures) = connect_every_250_ms(&connector, until).await;
    let mut query_failures = Vec::new();
    for worker in workers {
        query_failures.extend(worker.await.expect("join"));
    }
    let counters = stack.counters();
    let queries = queries.load(Ordering::Relaxed);
    eprintln!(
        "soak {seconds} s: {queries} pooled queries, {connects} fresh connects, {} logins, {} AssumeRole calls, {} failed queries, {} failed connects",
        counters.logins_accepted,
        counters.assume_role_calls,
        query_failures.len(),
        connect_failures.len()
    );
    assert!(query_failures.is_empty(), "{query_failures:?}");
    assert!(connect_failures.is_empty(), "{connect_failures:?}");
    assert!(connects >= seconds * 2, "{connects} connects");
    assert!(queries >= seconds * 10, "{queries} queries");
    // A refresh every half life (15 s), not per connect: about seconds/15 + 1.
    let rotations = seconds / 15 + 1;
    assert!(
        counters.assume_role_calls <= rotations + 2,
        "{} AssumeRole calls for {rotations} rotations and {} logins",
        counters.assume_role_calls,
        counters.logins_accepted
    );
    assert!(counters.assume_role_calls >= rotations - 1, "{counters:?}");
}

/// Soak on a password database: the secret rotated every 15 s (Secrets Manager's
/// single-user steps), a deadpool pool whose connections live 5 s (so it keeps logging in
/// across rotations), a sqlx pool on the same connector, and a fresh connect every 250 ms.
/// Nothing may fail: a login refused after a rotation reads the secret again and retries,
/// and the sqlx pool's options follow the new password.
#[cfg(feature = "sqlx")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes long: make soak"]
async fn soak_pools_and_connects_through_secret_rotations() {
    use rds_iam_auth::sqlx::{PgPoolOptions, PoolBuilder};

    let seconds = soak_seconds();
    let stack = stack_with(|c| c.secrets.rotate_every_seconds = 15).await;
    let connector = common::secret_config(&stack)
        .await
        .connect_timeout(Duration::from_secs(10))
        .connector()
        .await
        .expect("connector");
    let verified = ManagerConfig {
        recycling_method: RecyclingMethod::Verified,
    };
    let pool = Pool::builder(pool::manager(&connector, verified))
        .runtime(Runtime::Tokio1)
        .recycle_timeout(Some(pool::DEFAULT_RECYCLE_TIMEOUT))
        .pre_recycle(pool::max_lifetime(Duration::from_secs(5)))
        .max_size(4)
        .build()
        .expect("pool");
    let (sqlx_pool, refresh) = PoolBuilder::new(connector.clone())
        .pool_options(PgPoolOptions::new().max_connections(4))
        .connect()
        .await
        .expect("sqlx pool");

    let until = Instant::now() + Duration::from_secs(seconds);
    let queries = Arc::new(AtomicU64::new(0));
    let mut workers = pool_workers(&pool, 8, until, &queries);
    workers.extend((0..8).map(|_| {
        let (pool, queries) = (sqlx_pool.clone(), queries.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while Instant::now() < until {
                match sqlx::query_scalar::<_, i32>("SELECT 1")
                    .fetch_one(&pool)
                    .await
                {
                    Ok(_) => {
                        queries.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(format!("sqlx: {e}")),
                }
            }
            failures
        })
    }));
    let (connects, connect_failures) = connect_every_250_ms(&connector, until).await;
    let mut query_failures = Vec::new();
    for worker in workers {
        query_failures.extend(worker.await.expect("join"));
    }
    let counters = stack.counters();
    let queries = queries.load(Ordering::Relaxed);
    eprintln!(
        "password soak {seconds} s: {queries} pooled queries, {connects} fresh connects, {} rotations, {} GetSecretValue calls, {} sqlx option installs, {} failed queries, {} failed connects",
        counters.secret_rotations,
        counters.get_secret_value_calls,
        refresh.refresh_count(),
        query_failures.len(),
        connect_failures.len()
    );
    sqlx_pool.close().await;
    assert!(query_failures.is_empty(), "{query_failures:?}");
    assert!(connect_failures.is_empty(), "{connect_failures:?}");
    assert!(
        counters.secret_rotations >= seconds / 15 - 1,
        "{counters:?}"
    );
    // One read per rotation (plus the first), not one per connect.
    assert!(
        counters.get_secret_value_calls <= counters.secret_rotations * 2 + 3,
        "{counters:?}"
    );
}
