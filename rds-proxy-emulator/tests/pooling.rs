//! The stand-in's connection pools, as RDS Proxy's: many clients served by a capped number
//! of database connections (PostgreSQL's own `pg_stat_activity` counts them), borrowing at
//! transaction boundaries with the extended protocol, COPY and pipelining, pinning that
//! keeps a connection, the borrow timeout, session parameters restored on a shared
//! connection, cancel requests through the stand-in's own keys, and the metrics.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rds_proxy_emulator::{Endpoint, LocalStack, StackConfig};
use time::OffsetDateTime;

type Param = dyn tokio_postgres::types::ToSql + Sync;

fn token(stack: &LocalStack, ep: &Endpoint) -> String {
    let creds = session(stack, CONNECT_ROLE);
    sign_token(stack, ep, "app_user", &creds, OffsetDateTime::now_utc())
}

fn rw(stack: &LocalStack) -> Endpoint {
    stack.endpoint("READ_WRITE").expect("READ_WRITE").clone()
}

/// tokio-postgres through the stand-in with `application_name`.
async fn client_named(
    stack: &LocalStack,
    ep: &Endpoint,
    token: &str,
    application_name: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    Ok(client_and_socket_task(stack, ep, token, application_name)
        .await?
        .0)
}

/// [`client_named`], with the task that owns the client's socket: aborting it closes the
/// socket at once, as a killed client process would (no `Terminate`, no TLS close_notify).
async fn client_and_socket_task(
    stack: &LocalStack,
    ep: &Endpoint,
    token: &str,
    application_name: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&ep.hostname)
        .hostaddr(ep.listen.ip())
        .port(ep.listen.port())
        .user("app_user")
        .password(token)
        .dbname(stack.db_name())
        .application_name(application_name)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(stack));
    let (client, conn) = cfg.connect(tls).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

/// A session straight to the writer, bypassing the stand-in.
async fn direct(stack: &LocalStack) -> tokio_postgres::Client {
    let secret = stack.config().proxy.db_users[0].backend_password.clone();
    let addr = stack.backend_addr();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(addr.port())
        .user("app_user")
        .password(secret.as_str())
        .dbname(stack.db_name())
        .application_name("direct-observer");
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.expect("direct");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Database sessions PostgreSQL has for `application_name`.
async fn backends_named(observer: &tokio_postgres::Client, application_name: &str) -> i64 {
    observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND backend_type = 'client backend'",
            &[&application_name],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    })
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_are_served_by_the_capped_database_connections() -> TestResult {
    let mut config = StackConfig::demo();
    config.proxy.max_client_connections = 250;
    // 5% of PostgreSQL's max_connections (200): 10 database connections.
    config.proxy.max_connections_percent = 5;
    let stack = start(config).await;
    let ep = rw(&stack);
    let observer = direct(&stack).await;
    observer
        .batch_execute("CREATE TABLE hits (client int, n int)")
        .await?;
    let token = token(&stack, &ep);

    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(client_named(&stack, &ep, &token, "pooled").await?);
    }
    assert_eq!(stack.metrics().client_connections, 200);

    // Sample PostgreSQL's own count while the clients work.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (done, peak) = (Arc::clone(&done), Arc::clone(&peak));
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let n = backends_named(&observer, "pooled").await;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            observer
        })
    };
    const TRANSACTIONS: i32 = 5;
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let i = i as i32;
        tasks.push(tokio::spawn(async move {
            for n in 1..=TRANSACTIONS {
                let answer = c
                    .simple_query(&format!(
                        "BEGIN; INSERT INTO hits VALUES ({i}, {n}); SELECT count(*) FROM hits WHERE client = {i}; COMMIT"
                    ))
                    .await?;
                assert_eq!(first_value(&answer), Some(n.to_string()));
            }
            Ok::<_, tokio_postgres::Error>(c)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await??);
    }
    done.store(true, Ordering::SeqCst);
    let observer = sampler.await?;
    let total: i64 = observer
        .query_one("SELECT count(*) FROM hits", &[])
        .await?
        .get(0);
    assert_eq!(total, 200 * i64::from(TRANSACTIONS));
    let peak = peak.load(Ordering::SeqCst);
    let m = stack.metrics();
    println!("200 clients, {TRANSACTIONS} transactions each: at most {peak} database sessions in pg_stat_activity; metrics {m:?}");
    assert!(peak <= 10, "{peak} database sessions for the pool, cap 10");
    assert!(peak >= 1);
    assert!(backends_named(&observer, "pooled").await <= 10);
    assert!(m.database_connections <= 10, "{m:?}");
    assert_eq!(m.max_database_connections_allowed, 10, "{m:?}");
    assert_eq!(m.database_connections_currently_borrowed, 0, "{m:?}");
    assert_eq!(m.client_connections, 200);
    assert!(m.query_database_response_latency_us > 0, "{m:?}");
    assert_eq!(stack.counters().sessions_pinned, 0);
    drop(clients);
    assert!(
        wait_until(Duration::from_secs(5), || stack.proxy_client_connections()
            == 0)
        .await
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_pipelining_and_copy_across_shared_connections() -> TestResult {
    let mut config = StackConfig::demo();
    // 2 database connections for every client below.
    config.proxy.max_connections_percent = 1;
    let stack = start(config).await;
    let ep = rw(&stack);
    let token = token(&stack, &ep);
    let setup = client_named(&stack, &ep, &token, "setup").await?;
    setup
        .batch_execute("CREATE TABLE copied (a int, b text)")
        .await?;

    let mut tasks = Vec::new();
    for i in 0..8i32 {
        let c = client_named(&stack, &ep, &token, "extended").await?;
        tasks.push(tokio::spawn(async move {
            for round in 0..10i32 {
                // Pipelined: tokio-postgres sends these without waiting for each answer.
                let p1: [&Param; 1] = [&i];
                let p2: [&Param; 1] = [&round];
                let p3: [&Param; 1] = [&"y"];
                let (a, b, c3) = tokio::join!(
                    c.query_one("SELECT $1::int4 + 1", &p1),
                    c.query_one("SELECT $1::int4 * 2", &p2),
                    c.query_one("SELECT $1::text || 'x'", &p3),
                );
                assert_eq!(a?.get::<_, i32>(0), i + 1);
                assert_eq!(b?.get::<_, i32>(0), round * 2);
                assert_eq!(c3?.get::<_, String>(0), "yx");
                // A transaction with a statement prepared in it.
                c.batch_execute("BEGIN").await?;
                let st = c
                    .prepare("SELECT count(*) FROM copied WHERE a = $1")
                    .await?;
                let n: i64 = c.query_one(&st, &[&i]).await?.get(0);
                assert!(n >= 0);
                c.batch_execute("COMMIT").await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    // COPY in and out (simple protocol, raw), meanwhile.
    let mut raw = Raw::login(&stack, &ep, "app_user", &token).await;
    raw.write(&query_message("COPY copied FROM STDIN")).await;
    let (tag, _) = raw.read_message().await.expect("CopyInResponse");
    assert_eq!(tag, b'G');
    for k in 0..1000 {
        raw.write(&message(b'd', format!("{k}\trow {k}\n").as_bytes()))
            .await;
    }
    raw.write(&message(b'c', b"")).await;
    let (_, error) = raw.answer().await;
    assert_eq!(error, None);
    raw.write(&query_message(
        "COPY (SELECT a FROM copied ORDER BY a) TO STDOUT",
    ))
    .await;
    let mut copied = 0;
    while let Some((tag, _)) = raw.read_message().await {
        match tag {
            b'd' => copied += 1,
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(copied, 1000);
    for t in tasks {
        t.await??;
    }
    // Every transaction ended, every connection given back (statements tokio-postgres
    // closes after a query are closed without waiting for the answer: give those a moment).
    assert!(
        wait_until(Duration::from_secs(5), || {
            stack.metrics().database_connections_currently_borrowed == 0
        })
        .await
    );
    let m = stack.metrics();
    assert_eq!(m.database_connections_currently_borrowed, 0, "{m:?}");
    assert!(m.database_connections <= 2, "{m:?}");
    assert_eq!(stack.counters().sessions_pinned, 0);

    // The unnamed statement, parsed in one exchange and bound in a later one (what
    // libpq's PQprepare with an empty name and PQexecPrepared do): the connection is kept
    // for it meanwhile, even while other clients work.
    raw.write(&message(b'P', b"\0SELECT 40 + $1::int4\0\0\0"))
        .await;
    raw.write(&message(b'S', b"")).await;
    assert_eq!(raw.answer().await.1, None);
    let other = client_named(&stack, &ep, &token, "other").await?;
    other.simple_query("SELECT 1").await?;
    let mut bind = b"\0\0\0\0\0\x01".to_vec();
    bind.extend_from_slice(&1i32.to_be_bytes());
    bind.push(b'2');
    bind.extend_from_slice(&[0, 0]);
    raw.write(&message(b'B', &bind)).await;
    raw.write(&message(b'E', b"\0\0\0\0\0")).await;
    raw.write(&message(b'S', b"")).await;
    let (rows, error) = raw.answer().await;
    assert_eq!(error, None);
    assert_eq!(rows, [[Some("42".to_string())]]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_keeps_its_connection_until_it_disconnects() -> TestResult {
    let mut config = StackConfig::demo();
    // 1% of max_connections 200: 2 database connections.
    config.proxy.max_connections_percent = 1;
    config.proxy.connection_borrow_timeout_seconds = 30;
    let stack = start(config).await;
    let ep = rw(&stack);
    let token = token(&stack, &ep);
    let observer = direct(&stack).await;
    let backend_pid = |c: tokio_postgres::Client| async move {
        let pid = first_value(&c.simple_query("SELECT pg_backend_pid()").await?);
        Ok::<_, tokio_postgres::Error>((c, pid.unwrap_or_default()))
    };

    let a = client_named(&stack, &ep, &token, "pinned").await?;
    a.simple_query("SET work_mem = '8MB'").await?;
    let (a, pid_a) = backend_pid(a).await?;
    let b = client_named(&stack, &ep, &token, "pinned").await?;
    b.simple_query("LISTEN jobs").await?;
    assert_eq!(stack.counters().sessions_pinned, 2);
    let m = stack.metrics();
    assert_eq!(
        (
            m.database_connections,
            m.database_connections_currently_borrowed,
            m.database_connections_currently_session_pinned
        ),
        (2, 2, 2),
        "{m:?}"
    );
    // The pinned session stays on its connection.
    let (a, again) = backend_pid(a).await?;
    assert_eq!(again, pid_a);

    // A third client's request waits: both connections are pinned, at the cap.
    let c = client_named(&stack, &ep, &token, "third").await?;
    let waiting = tokio::spawn(async move {
        let answer = c.simple_query("SELECT pg_backend_pid()").await;
        (answer.map(|a| first_value(&a)), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "the third client waited for a connection"
    );
    let released = Instant::now();
    drop(a);
    let (answer, served) = waiting.await?;
    let pid_c = answer?.unwrap_or_default();
    assert!(served - released < Duration::from_secs(3));
    assert_ne!(
        pid_c, pid_a,
        "a pinned connection is closed with its client"
    );
    let gone = observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::text::int",
            &[&pid_a],
        )
        .await?
        .get::<_, i64>(0);
    assert_eq!(
        gone, 0,
        "the pinned session's database connection was closed"
    );
    drop(b);
    Ok(())
}

/// A stack whose READ_WRITE pool has room for 2 database connections (1% of PostgreSQL's
/// `max_connections` of 200), both held by pinned clients (returned: dropping one frees its
/// connection), with the given borrow timeout; and the endpoint and a token to reach it.
async fn both_connections_pinned(
    borrow_timeout_seconds: u64,
) -> Result<
    (
        LocalStack,
        Endpoint,
        String,
        tokio_postgres::Client,
        tokio_postgres::Client,
    ),
    tokio_postgres::Error,
> {
    let mut config = StackConfig::demo();
    config.proxy.max_connections_percent = 1;
    config.proxy.connection_borrow_timeout_seconds = borrow_timeout_seconds;
    let stack = start(config).await;
    let ep = rw(&stack);
    let token = token(&stack, &ep);
    let a = client_named(&stack, &ep, &token, "p").await?;
    a.simple_query("SELECT pg_advisory_lock(1)").await?;
    let b = client_named(&stack, &ep, &token, "p").await?;
    b.simple_query("CREATE TEMP TABLE scratch (x int)").await?;
    Ok((stack, ep, token, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_connection_pinned_a_request_times_out_after_the_borrow_timeout() -> TestResult {
    let (stack, ep, token, a, b) = both_connections_pinned(2).await?;

    // Logging in needs no connection (the pool's greeting is known); the request does.
    let c = client_named(&stack, &ep, &token, "p").await?;
    let started = Instant::now();
    let err = c
        .simple_query("SELECT 1")
        .await
        .expect_err("no connection to borrow");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    assert_eq!(
        refusal(&err),
        (
            "08006".to_string(),
            "Timed-out waiting to acquire database connection.".to_string()
        )
    );
    assert_eq!(stack.metrics().borrow_timeouts, 1);
    // The pinned clients are untouched.
    assert_eq!(
        first_value(&a.simple_query("SELECT 7").await?).as_deref(),
        Some("7")
    );
    drop(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_waiting_for_a_connection_leaves_the_line() -> TestResult {
    let (stack, ep, token, a, b) = both_connections_pinned(30).await?;

    let (c, socket) = client_and_socket_task(&stack, &ep, &token, "leaving").await?;
    let request = tokio::spawn(async move { c.simple_query("SELECT 1").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!request.is_finished(), "the request waits for a connection");
    assert_eq!(stack.metrics().client_connections, 3);

    let opened_before = stack.metrics().database_connection_requests;
    socket.abort();
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || stack.metrics().client_connections == 2).await,
        "the stand-in noticed the client leave while its request waited (not at the 30 s borrow timeout): {:?}",
        stack.metrics()
    );
    println!(
        "the waiting client's end was noticed in {} ms",
        started.elapsed().as_millis()
    );
    assert!(request.await?.is_err(), "the client's own request failed");

    // The room a disconnecting pinned client frees goes to a client still there.
    let d = client_named(&stack, &ep, &token, "staying").await?;
    let waiting = tokio::spawn(async move { d.simple_query("SELECT 2").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(b);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting).await???;
    assert_eq!(first_value(&answer).as_deref(), Some("2"));
    let m = stack.metrics();
    assert_eq!(m.borrow_timeouts, 0, "{m:?}");
    // One connection opened since, in b's place.
    assert_eq!(m.database_connection_requests, opened_before + 1, "{m:?}");
    drop(a);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_its_own_session_parameters_on_a_shared_connection() -> TestResult {
    let stack = demo().await;
    let ep = rw(&stack);
    let token = token(&stack, &ep);
    let (mut a, greet_a) = Raw::login_with(
        &stack,
        &ep,
        "app_user",
        &token,
        &[
            ("application_name", "alpha"),
            ("TimeZone", "UTC"),
            ("search_path", "pg_catalog, public"),
        ],
    )
    .await;
    let (mut b, greet_b) = Raw::login_with(
        &stack,
        &ep,
        "app_user",
        &token,
        &[
            ("application_name", "beta"),
            ("TimeZone", "America/New_York"),
            ("DateStyle", "ISO, DMY"),
        ],
    )
    .await;
    assert_eq!(greet_a.parameter("application_name"), Some("alpha"));
    assert_eq!(greet_a.parameter("TimeZone"), Some("UTC"));
    assert_eq!(greet_b.parameter("application_name"), Some("beta"));
    assert_eq!(greet_b.parameter("TimeZone"), Some("America/New_York"));
    assert_eq!(greet_b.parameter("DateStyle"), Some("ISO, DMY"));
    assert!(greet_a.parameter("server_version").is_some());
    assert_eq!(greet_a.key.len(), 8);
    assert_ne!(greet_a.key, greet_b.key);

    let sql = "SELECT current_setting('application_name'), current_setting('TimeZone'), current_setting('search_path'), current_setting('DateStyle'), pg_backend_pid()";
    let mut pids = Vec::new();
    for _ in 0..2 {
        let (rows, err) = a.simple(sql).await;
        assert_eq!(err, None);
        let r = &rows[0];
        assert_eq!(
            (r[0].as_deref(), r[1].as_deref(), r[2].as_deref()),
            (Some("alpha"), Some("UTC"), Some("pg_catalog, public"))
        );
        pids.push(r[4].clone());
        let (rows, err) = b.simple(sql).await;
        assert_eq!(err, None);
        let r = &rows[0];
        assert_eq!(
            (
                r[0].as_deref(),
                r[1].as_deref(),
                r[2].as_deref(),
                r[3].as_deref()
            ),
            (
                Some("beta"),
                Some("America/New_York"),
                Some("\"$user\", public"),
                Some("ISO, DMY")
            )
        );
        pids.push(r[4].clone());
    }
    // One database connection served both clients, one transaction at a time.
    pids.dedup();
    assert_eq!(pids.len(), 1, "{pids:?}");
    // The key a client holds is the stand-in's, not the database connection's.
    let key_pid = i32::from_be_bytes([
        greet_a.key[0],
        greet_a.key[1],
        greet_a.key[2],
        greet_a.key[3],
    ]);
    assert_ne!(Some(key_pid.to_string()), pids[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_reach_the_connection_the_client_holds() -> TestResult {
    let stack = demo().await;
    let ep = rw(&stack);
    let token = token(&stack, &ep);

    // tokio-postgres: the cancel request goes inside TLS, with the stand-in's key.
    let client = client_named(&stack, &ep, &token, "cancel").await?;
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(30)").await;
        (r.map(|_| ()), Instant::now(), client)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(&stack));
    cancel.cancel_query(tls).await?;
    let (result, ended, client) = tokio::time::timeout(Duration::from_secs(5), sleeper).await??;
    let err = result.expect_err("cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(ended - sent < Duration::from_secs(1), "{:?}", ended - sent);
    // The session goes on (on another connection: the cancelled one is not lent again).
    assert_eq!(
        first_value(&client.simple_query("SELECT 5").await?).as_deref(),
        Some("5")
    );

    // A raw client: the cancel request in the clear, with the key of its greeting.
    let (mut raw, greeting) = Raw::login_with(&stack, &ep, "app_user", &token, &[]).await;
    raw.write(&query_message("SELECT pg_sleep(30)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut plain = tokio::net::TcpStream::connect(ep.listen).await?;
    let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    packet.extend_from_slice(&greeting.key);
    let sent = Instant::now();
    tokio::io::AsyncWriteExt::write_all(&mut plain, &packet).await?;
    let (_, error) = tokio::time::timeout(Duration::from_secs(5), raw.answer()).await?;
    assert_eq!(error.map(|e| e.1), Some("57014".to_string()));
    assert!(sent.elapsed() < Duration::from_secs(1));
    // A wrong key cancels nothing.
    raw.write(&query_message("SELECT pg_sleep(0.5), 3")).await;
    let mut wrong = packet.clone();
    wrong[15] ^= 0xff;
    let mut plain = tokio::net::TcpStream::connect(ep.listen).await?;
    tokio::io::AsyncWriteExt::write_all(&mut plain, &wrong).await?;
    let (rows, error) = raw.answer().await;
    assert_eq!(error, None);
    assert_eq!(rows[0][1].as_deref(), Some("3"));
    Ok(())
}
