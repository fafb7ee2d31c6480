//! The database cluster behind the proxy: a real reader (hot standby) for READ_ONLY
//! endpoints, replication, TLS on PostgreSQL itself, failover (idle clients kept, those in
//! a transaction closed), and pinning detection.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rds_proxy_emulator::{Endpoint, LocalStack, ServerRole};
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

async fn open(
    stack: &LocalStack,
    role: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let ep = stack.endpoint(role).expect("endpoint").clone();
    let creds = session(stack, CONNECT_ROLE);
    connect(
        stack,
        &ep,
        "app_user",
        &sign_token(stack, &ep, "app_user", &creds, now()),
    )
    .await
}

/// Like [`connect`], but hands back the connection task's result (where an error the
/// server sends to an idle session ends up).
async fn open_watched(
    stack: &LocalStack,
    ep: &Endpoint,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let creds = session(stack, CONNECT_ROLE);
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&ep.hostname)
        .hostaddr(ep.listen.ip())
        .port(ep.listen.port())
        .user("app_user")
        .password(sign_token(stack, ep, "app_user", &creds, now()))
        .dbname(stack.db_name())
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(stack));
    let (client, conn) = cfg.connect(tls).await.expect("login");
    (client, tokio::spawn(conn))
}

async fn in_recovery(c: &tokio_postgres::Client) -> Result<bool, tokio_postgres::Error> {
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map(|r| r.get::<_, bool>(0))
}

async fn server_port(client: &tokio_postgres::Client) -> u16 {
    let port: i32 = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("query")
        .get(0);
    u16::try_from(port).expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_goes_to_a_real_reader_that_replicates_and_refuses_writes() -> TestResult {
    let stack = demo().await;
    let readers = stack.reader_addrs();
    assert_eq!(readers.len(), 1);

    let rw = open(&stack, "READ_WRITE").await?;
    let ro = open(&stack, "READ_ONLY").await?;
    assert!(!in_recovery(&rw).await?);
    assert!(in_recovery(&ro).await?);
    assert_eq!(server_port(&rw).await, stack.backend_addr().port());
    assert_eq!(server_port(&ro).await, readers[0].port());

    // No session setting makes a write succeed on a reader.
    ro.batch_execute("SET default_transaction_read_only = off")
        .await?;
    let err = ro
        .batch_execute("CREATE TABLE t (a int)")
        .await
        .expect_err("a reader refuses writes");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "25006", "{db:?}");
    assert_eq!(
        db.message(),
        "cannot execute CREATE TABLE in a read-only transaction"
    );
    let err = ro
        .batch_execute("BEGIN READ WRITE")
        .await
        .expect_err("no read-write transactions during recovery");
    assert_eq!(
        err.as_db_error().map(|d| d.message().to_string()),
        Some("cannot set transaction read-write mode during recovery".to_string())
    );

    // A row written through READ_WRITE shows up through READ_ONLY within a second.
    rw.execute(
        "INSERT INTO products (id, name, price_cents) VALUES (42, 'Replicated', 1)",
        &[],
    )
    .await?;
    let written = Instant::now();
    let ro2 = open(&stack, "READ_ONLY").await?;
    loop {
        let n: i64 = ro2
            .query_one("SELECT count(*) FROM products WHERE id = 42", &[])
            .await?
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "not replicated within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // status: each server, its role, the reader's lag as the writer reports it.
    let servers = stack.servers().await;
    let roles: Vec<(&str, ServerRole)> =
        servers.iter().map(|s| (s.name.as_str(), s.role)).collect();
    assert_eq!(
        roles,
        [("pg-1", ServerRole::Writer), ("pg-2", ServerRole::Reader)]
    );
    assert!(servers[1].lag_bytes.is_some(), "{servers:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_itself_serves_tls_from_the_stack_ca() -> TestResult {
    let stack = demo().await;
    let secret = stack.config().proxy.db_users[0].backend_password.clone();
    for addr in [stack.backend_addr(), stack.reader_addrs()[0]] {
        let mut cfg = tokio_postgres::Config::new();
        // Verified against the stack's CA for 127.0.0.1.
        cfg.host("127.0.0.1")
            .port(addr.port())
            .user("app_user")
            .password(secret.as_str())
            .dbname(stack.db_name())
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(&stack));
        let (client, conn) = cfg.connect(tls).await?;
        tokio::spawn(conn);
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .get(0);
        assert!(ssl, "direct session to {addr} is not TLS");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_idle_clients_and_closes_those_in_a_transaction() -> TestResult {
    let stack = demo().await;
    let rw = stack.endpoint("READ_WRITE").unwrap().clone();
    let ro = stack.endpoint("READ_ONLY").unwrap().clone();
    let old_writer_port = stack.backend_addr().port();
    let old_reader_port = stack.reader_addrs()[0].port();

    // Twenty idle writer clients (used once: simple and extended protocol, one holding a
    // prepared statement), an idle reader client, one in a transaction, one pinned.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(open_watched(&stack, &rw).await);
    }
    for (i, (c, _)) in idle.iter().enumerate() {
        assert_eq!(server_port(c).await, old_writer_port);
        c.simple_query(&format!("SELECT {i}")).await?;
    }
    let kept = idle[0].0.prepare("SELECT 40 + $1::int4").await?;
    let (ro_client, _ro_conn) = open_watched(&stack, &ro).await;
    assert_eq!(server_port(&ro_client).await, old_reader_port);
    let (in_tx, in_tx_conn) = open_watched(&stack, &rw).await;
    in_tx
        .batch_execute("BEGIN; INSERT INTO products (id, name, price_cents) VALUES (70, 'lost', 1)")
        .await?;
    let (pinned, pinned_conn) = open_watched(&stack, &rw).await;
    pinned.batch_execute("SET work_mem = '8MB'").await?;
    // tokio-postgres closes a query's statement without waiting for the answer: let those
    // finish, so that only the transaction and the pinned session hold connections.
    let settled = Instant::now() + Duration::from_secs(5);
    while stack.metrics().database_connections_currently_borrowed > 3 {
        assert!(Instant::now() < settled, "{:?}", stack.metrics());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A writer request sent once the failover has begun waits for the new writer.
    let failover = {
        let stack = &stack;
        async move { stack.failover().await }
    };
    let during = async {
        let until = Instant::now() + Duration::from_secs(10);
        while stack.writer_addr().is_some() {
            assert!(Instant::now() < until, "the failover did not start");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let sent = Instant::now();
        let port = server_port(&idle[1].0).await;
        (port, sent.elapsed())
    };
    let (report, (port_during, waited)) = tokio::join!(failover, during);
    let report = report?;
    let failed_over = Instant::now();
    assert_eq!(report.old_writer, "pg-1");
    assert_eq!(report.new_writer, "pg-2");
    assert_eq!(report.sessions_closed, 2, "{report:?}");
    assert_eq!(
        port_during, old_reader_port,
        "the waiting request ran on the new writer"
    );
    println!(
        "failover took {:?}; a request sent during it waited {waited:?}",
        report.took
    );

    // The client in a transaction got PostgreSQL's shutdown error and was closed; so was
    // the pinned one (its session state is gone).
    for (client, conn) in [(in_tx, in_tx_conn), (pinned, pinned_conn)] {
        let ended = tokio::time::timeout(Duration::from_secs(10), conn).await??;
        let err = ended.expect_err("the session was closed");
        assert_eq!(
            err.as_db_error()
                .map(|d| (d.code().code().to_string(), d.message().to_string())),
            Some((
                "57P01".to_string(),
                "terminating connection due to administrator command".to_string()
            )),
            "{err:?}"
        );
        assert!(client.is_closed());
    }
    let until = Instant::now() + Duration::from_secs(5);
    while stack.counters().sessions_closed_by_failover < 2 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stack.counters().sessions_closed_by_failover, 2);

    // Every idle client is still connected and its next transaction runs on the new
    // writer, prepared statement included: 0 errors.
    for (i, (c, conn)) in idle.iter().enumerate() {
        assert!(
            !c.is_closed() && !conn.is_finished(),
            "client {i} was closed"
        );
        assert_eq!(server_port(c).await, old_reader_port, "client {i}");
        let recovering: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
        assert!(!recovering);
    }
    let n: i32 = idle[0].0.query_one(&kept, &[&2i32]).await?.get(0);
    assert_eq!(n, 42);
    idle[2]
        .0
        .execute(
            "INSERT INTO products (id, name, price_cents) VALUES (77, 'After failover', 1)",
            &[],
        )
        .await?;
    let recovered_in = failed_over.elapsed();

    // The idle reader client continues too, on the new reader once it is built (its
    // request waits meanwhile); the row written on the new writer replicates to it.
    assert!(in_recovery(&ro_client).await?);
    let ro_recovered_in = failed_over.elapsed();
    assert!(
        ro_recovered_in < Duration::from_secs(20),
        "{ro_recovered_in:?}"
    );
    let started = Instant::now();
    loop {
        let n: i64 = ro_client
            .query_one("SELECT count(*) FROM products WHERE id = 77", &[])
            .await?
            .get(0);
        if n == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new_reader_port = server_port(&ro_client).await;
    assert_ne!(new_reader_port, old_reader_port);
    let roles: Vec<(String, ServerRole)> = stack
        .servers()
        .await
        .into_iter()
        .map(|s| (s.name, s.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("pg-1".to_string(), ServerRole::Stopped),
            ("pg-2".to_string(), ServerRole::Writer),
            ("pg-3".to_string(), ServerRole::Reader)
        ]
    );
    // New logins work on both endpoints.
    let fresh = open(&stack, "READ_WRITE").await?;
    assert_eq!(server_port(&fresh).await, old_reader_port);
    println!(
        "idle writer clients served by the new writer {recovered_in:?} after the failover, the idle reader client {ro_recovered_in:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_is_detected_for_session_state_and_not_for_plain_queries() -> TestResult {
    let stack = demo().await;
    let pinned = || stack.counters().sessions_pinned;

    // Plain work, simple and extended protocol, on both endpoints: no pinning.
    let rw = open(&stack, "READ_WRITE").await?;
    rw.batch_execute(
        "SELECT 1; BEGIN; INSERT INTO products (id, name, price_cents) VALUES (50, 'p', 1); COMMIT",
    )
    .await?;
    rw.query("SELECT name FROM customers WHERE id = $1", &[&1i32])
        .await?;
    rw.simple_query("SELECT 'SET x', 'LISTEN y' -- PREPARE z")
        .await?;
    let ro = open(&stack, "READ_ONLY").await?;
    ro.query("SELECT count(*) FROM orders", &[]).await?;
    assert_eq!(pinned(), 0);

    let cases: &[(&str, &str)] = &[
        ("SET", "SET search_path TO public"),
        ("PREPARE", "PREPARE q(int) AS SELECT $1"),
        ("temporary table", "CREATE TEMP TABLE scratch (a int)"),
        ("LISTEN", "LISTEN jobs"),
        ("advisory lock", "SELECT pg_advisory_lock(42)"),
        (
            "set_config",
            "SELECT set_config('application_name', 'x', false)",
        ),
    ];
    for (i, (what, sql)) in cases.iter().enumerate() {
        let c = open(&stack, "READ_WRITE").await?;
        c.simple_query("SELECT 1").await?;
        c.simple_query(sql).await?;
        // More state changes in the same session are not counted again.
        c.simple_query("SET work_mem = '8MB'").await?;
        assert_eq!(pinned(), i as u64 + 1, "{what} not detected");
    }
    // The extended protocol (Parse) is watched too.
    let c = open(&stack, "READ_WRITE").await?;
    c.query("SELECT pg_try_advisory_lock($1)", &[&7i64]).await?;
    assert_eq!(pinned(), cases.len() as u64 + 1);
    // A statement over 16 KB.
    let c = open(&stack, "READ_ONLY").await?;
    let big = format!("SELECT length('{}')", "x".repeat(17 * 1024));
    c.simple_query(&big).await?;
    assert_eq!(pinned(), cases.len() as u64 + 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reader_read_only_logins_time_out_and_failover_is_refused() -> TestResult {
    let mut config = rds_proxy_emulator::StackConfig::demo();
    config.database.replicas = 0;
    config.proxy.connection_borrow_timeout_seconds = 1;
    let stack = start(config).await;
    assert!(stack.reader_addrs().is_empty());
    let started = Instant::now();
    let err = open(&stack, "READ_ONLY")
        .await
        .map(|_| ())
        .expect_err("no reader");
    assert_eq!(
        refusal(&err),
        (
            "08006".to_string(),
            "Timed-out waiting to acquire database connection.".to_string()
        )
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    let rw = open(&stack, "READ_WRITE").await?;
    assert!(!in_recovery(&rw).await?);
    let e = stack.failover().await.expect_err("nothing to promote");
    assert!(
        e.to_string().contains("there is no reader to promote"),
        "{e}"
    );
    // Still serving on the writer.
    assert_eq!(rw.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
    Ok(())
}
