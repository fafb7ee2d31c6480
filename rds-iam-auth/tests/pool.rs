//! The deadpool-postgres integration against the local stack: pooled connections with fresh
//! tokens, recycling, lifetimes, a failover survived, and stage errors carried through the pool.

use std::time::Duration;

use rds_iam_auth::pool::{self, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rds_iam_auth::Stage;
use rds_proxy_emulator::{LocalStack, StackConfig};

mod common;
use common::{config, connector_for, ro, stack};

fn verified() -> ManagerConfig {
    ManagerConfig {
        recycling_method: RecyclingMethod::Verified,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_bounds_connections_and_survives_the_proxy_idle_timeout() {
    let mut cfg = StackConfig::demo();
    cfg.proxy.idle_client_timeout_seconds = 1;
    let stack = LocalStack::start(cfg).await.expect("stack");
    let connector = connector_for(&stack, ro(&stack)).await;
    let pool = pool::builder(&connector, verified())
        .max_size(3)
        .build()
        .expect("pool");

    let tasks: Vec<_> = (0..20)
        .map(|i: i32| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let client = pool.get().await.expect("pooled connection");
                let row = client
                    .query_one("SELECT $1::int4 * 2", &[&i])
                    .await
                    .expect("query");
                row.get::<_, i32>(0)
            })
        })
        .collect();
    let mut doubled = Vec::new();
    for t in tasks {
        doubled.push(t.await.expect("join"));
    }
    doubled.sort_unstable();
    assert_eq!(doubled, (0..20).map(|i| i * 2).collect::<Vec<i32>>());
    assert!(pool.status().size <= 3, "{:?}", pool.status());
    assert!(stack.proxy_client_connections() <= 3);

    // The proxy drops idle clients after 1 s; the pool notices at checkout and reconnects
    // (with a new token, from the cached role credentials).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.proxy_client_connections() != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stack.proxy_client_connections(),
        0,
        "the proxy closed idle clients"
    );
    let client = pool.get().await.expect("replaced connection");
    let one: i32 = client
        .query_one("SELECT 1::int4", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(one, 1);
    assert_eq!(connector.credentials().refresh_count(), 1);
}

/// A TCP relay in front of the proxy that can freeze the connections it carries: bytes
/// stop flowing both ways but nothing is closed, as when a network path dies silently.
struct Freezer {
    addr: std::net::SocketAddr,
    flows: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
}

impl Freezer {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let flows: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
        let registry = flows.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                registry.lock().expect("lock").push(frozen.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Self::pump(cr, sw, frozen.clone()));
                tokio::spawn(Self::pump(sr, cw, frozen));
            }
        });
        Self { addr, flows }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.load(std::sync::atomic::Ordering::SeqCst) {
                // Hold both sockets open and forward nothing, forever.
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// Freezes every connection open now; later ones flow normally.
    fn freeze_existing(&self) {
        for flow in self.flows.lock().expect("lock").iter() {
            flow.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

async fn backend_pid(client: &rds_iam_auth::tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("query")
        .get(0)
}

#[tokio::test]
async fn a_half_open_pooled_connection_is_replaced_within_the_recycle_timeout() {
    let stack = stack().await;
    let freezer = Freezer::start(ro(&stack).listen).await;
    let connector = config(&stack, ro(&stack))
        .await
        .connect_address(freezer.addr.to_string())
        .connector()
        .await
        .expect("connector");
    let pool = pool::builder(&connector, verified())
        .recycle_timeout(Some(Duration::from_millis(500)))
        .max_size(1)
        .build()
        .expect("pool");
    // Behind a multiplexing proxy a database process id names the database connection
    // of one transaction, not the client connection: the proxy's login count tells a new
    // client connection from the old one.
    backend_pid(&pool.get().await.expect("first connection")).await;
    let logins = stack.counters().logins_accepted;

    freezer.freeze_existing();
    let started = std::time::Instant::now();
    let client = pool.get().await.expect("a new connection");
    let took = started.elapsed();
    backend_pid(&client).await;
    assert_eq!(
        stack.counters().logins_accepted,
        logins + 1,
        "not the frozen session: a new one"
    );
    assert!(
        took >= Duration::from_millis(500),
        "the recycle check waited: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "and then gave up: {took:?}");
}

#[tokio::test]
async fn pooled_connections_are_replaced_after_their_maximum_lifetime() {
    let stack = stack().await;
    let connector = connector_for(&stack, ro(&stack)).await;
    let fast = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let pool = Pool::builder(pool::manager(&connector, fast))
        .runtime(Runtime::Tokio1)
        .pre_recycle(pool::max_lifetime(Duration::from_millis(800)))
        .max_size(1)
        .build()
        .expect("pool");
    // The proxy's login count tells a new client connection from a reused one (behind a
    // multiplexing proxy a database process id names a database connection, which
    // successive client connections may share).
    let logins = || stack.counters().logins_accepted;
    backend_pid(&pool.get().await.expect("first")).await;
    assert_eq!(logins(), 1);
    backend_pid(&pool.get().await.expect("reused")).await;
    assert_eq!(logins(), 1, "young connections are reused");
    tokio::time::sleep(Duration::from_millis(900)).await;
    backend_pid(&pool.get().await.expect("replaced")).await;
    assert_eq!(logins(), 2, "an old connection is closed, a new one opened");
}

#[tokio::test]
async fn the_after_connect_hook_runs_once_per_physical_connection_and_its_settings_stick() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let stack = stack().await;
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let connector = config(&stack, ro(&stack))
        .await
        .after_connect(move |client| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                client
                    .batch_execute(
                        "SET statement_timeout = '4321ms'; SET search_path TO app, public",
                    )
                    .await
            })
        })
        .connector()
        .await
        .expect("connector");
    let pool = pool::builder(&connector, verified())
        .max_size(2)
        .build()
        .expect("pool");
    for _ in 0..10 {
        let client = pool.get().await.expect("pooled");
        let row = client
            .query_one(
                "SELECT current_setting('statement_timeout'), current_setting('search_path')",
                &[],
            )
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), "4321ms");
        assert_eq!(row.get::<_, String>(1), "app, public");
    }
    assert_eq!(runs.load(Ordering::SeqCst), pool.status().size);

    // A failing hook fails the connect, naming itself.
    let err = config(&stack, ro(&stack))
        .await
        .after_connect(|client| {
            Box::pin(async move { client.batch_execute("SET no_such_setting = 1").await })
        })
        .connector()
        .await
        .expect("connector")
        .connect()
        .await
        .expect_err("the hook fails");
    assert_eq!(err.stage(), Stage::Query);
    assert!(
        err.to_string()
            .starts_with("query: after-connect hook: ERROR"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_survives_a_failover_with_no_error() {
    let stack = stack().await;
    let rw = stack.endpoint("READ_WRITE").expect("READ_WRITE endpoint");
    let connector = connector_for(&stack, rw).await;
    let pool = pool::builder(&connector, verified())
        .max_size(4)
        .build()
        .expect("pool");
    let port = |row: rds_iam_auth::tokio_postgres::Row| row.get::<_, Option<i32>>(0);
    // Four pooled connections, used once, idle when the failover comes.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.get().await.expect("pooled"));
    }
    let mut writer_before = None;
    for c in &held {
        writer_before = port(
            c.query_one("SELECT inet_server_port()", &[])
                .await
                .expect("query"),
        );
    }
    drop(held);
    // tokio-postgres closes a query's statement without waiting for the answer: let those
    // finish, so that the connections are idle (not in a request) when the failover comes.
    let idle_by = std::time::Instant::now() + Duration::from_secs(5);
    while stack.metrics().database_connections_currently_borrowed > 0 {
        assert!(std::time::Instant::now() < idle_by, "{:?}", stack.metrics());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let logins = stack.counters().logins_accepted;

    // RDS Proxy keeps idle client connections through a failover: the pool's connections
    // stay open, and a checkout during the failover waits for the new writer.
    let failover = async { stack.failover().await.expect("failover") };
    let during = async {
        while stack.writer_addr().is_some() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let started = std::time::Instant::now();
        let client = pool.get().await.expect("checkout during the failover");
        let row = client
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .expect("no error during the failover");
        (row, started.elapsed())
    };
    let (report, (row, waited)) = tokio::join!(failover, during);
    assert!(!row.get::<_, bool>(1), "READ_WRITE reaches the new writer");
    assert_ne!(port(row), writer_before, "a different server: {report:?}");
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(pool.get().await.expect("pooled"));
    }
    for c in &clients {
        let row = c
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .expect("no error after the failover");
        assert!(!row.get::<_, bool>(1));
        assert_ne!(port(row), writer_before);
    }
    assert_eq!(
        stack.counters().logins_accepted,
        logins,
        "the pooled connections survived: none was replaced"
    );
    eprintln!(
        "failover: promoted in {:?}; a checkout during it waited {waited:?}",
        report.took
    );
}

/// A pool of 4 under 16 busy tasks, with `prepare_cached`, for several token windows and
/// credential lifetimes (6 s tokens, 12 s role credentials, connections retired after 2 s so
/// that logins go on all along): no query may fail.
async fn pool_outlives_tokens_and_credentials(recycling_method: RecyclingMethod) {
    let method = format!("{recycling_method:?}");
    const RUN: Duration = Duration::from_secs(30);
    let stack = common::stack_with(|c| {
        c.sts.credentials_lifetime_seconds = Some(12);
        c.proxy.token_lifetime_seconds = 6;
    })
    .await;
    let connector = connector_for(&stack, ro(&stack)).await;
    let pool = Pool::builder(pool::manager(
        &connector,
        ManagerConfig { recycling_method },
    ))
    .runtime(Runtime::Tokio1)
    .recycle_timeout(Some(pool::DEFAULT_RECYCLE_TIMEOUT))
    .pre_recycle(pool::max_lifetime(Duration::from_secs(2)))
    .max_size(4)
    .build()
    .expect("pool");

    let until = std::time::Instant::now() + RUN;
    let workers: Vec<_> = (0..16i64)
        .map(|worker| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let (mut done, mut failures) = (0u64, Vec::new());
                while std::time::Instant::now() < until {
                    let attempt = async {
                        let client = pool.get().await.map_err(|e| format!("pool: {e}"))?;
                        let statement = client
                            .prepare_cached("SELECT $1::int8 + 1")
                            .await
                            .map_err(|e| format!("prepare: {e}"))?;
                        let row = client
                            .query_one(&statement, &[&worker])
                            .await
                            .map_err(|e| format!("query: {e}"))?;
                        Ok::<i64, String>(row.get(0))
                    };
                    match attempt.await {
                        Ok(n) if n == worker + 1 => done += 1,
                        Ok(n) => failures.push(format!("wrong answer {n}")),
                        Err(e) => failures.push(e),
                    }
                }
                (done, failures)
            })
        })
        .collect();
    let (mut queries, mut failures) = (0, Vec::new());
    for w in workers {
        let (done, failed) = w.await.expect("worker");
        queries += done;
        failures.extend(failed);
    }
    let counters = stack.counters();
    eprintln!("{method}: {queries} queries, {counters:?}");
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(queries > 1000, "the tasks were busy: {queries}");
    // Not vacuous: the pool logged in again and again, across token windows, with
    // credentials from more than one AssumeRole.
    assert!(counters.logins_accepted >= 10, "{counters:?}");
    assert!(counters.assume_role_succeeded >= 2, "{counters:?}");
    assert_eq!(counters.logins_refused, 0, "{counters:?}");
    // Protocol-level prepared statements are multiplexed by RDS Proxy: nothing pinned.
    assert_eq!(counters.sessions_pinned, 0, "{counters:?}");
    assert!(pool.status().size <= 4, "{:?}", pool.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verified_pool_outlives_tokens_and_credentials_with_prepare_cached() {
    pool_outlives_tokens_and_credentials(RecyclingMethod::Verified).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fast_recycling_pool_outlives_tokens_and_credentials_with_prepare_cached() {
    pool_outlives_tokens_and_credentials(RecyclingMethod::Fast).await;
}

#[tokio::test]
async fn a_failed_pooled_connect_keeps_its_stage_and_hint() {
    let stack = stack().await;
    let connector = config(&stack, ro(&stack))
        .await
        .external_id("not-the-external-id")
        .connector()
        .await
        .expect("connector");
    let pool = pool::builder(&connector, verified())
        .max_size(1)
        .build()
        .expect("pool");
    let err = match pool.get().await {
        Err(pool::PoolError::Backend(e)) => e,
        Err(other) => panic!("expected a backend error, got {other}"),
        Ok(_) => panic!("the wrong external ID must fail"),
    };
    let stage_error = pool::stage_error(&err).expect("the stage error travels with it");
    assert_eq!(stage_error.stage(), Stage::AssumeRole, "{stage_error}");
    assert!(stage_error.hint().is_some(), "{stage_error}");
    let cause = std::error::Error::source(&err)
        .expect("a cause")
        .to_string();
    assert_eq!(
        cause,
        stage_error.to_string(),
        "error reporters that print the chain show it"
    );
    let (_, last) = connector.last_connect_error().expect("kept");
    assert_eq!(last.to_string(), stage_error.to_string());
    assert_eq!(connector.failed_connects(), 1);
}
