//! Clients with no password, through the proxy to the local stack: psql over TCP and over
//! a Unix socket, the refusals a client reads, a cancelled query, pgbench.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{psql, Proxy};
use rds_proxy_emulator::StsFault;

#[tokio::test]
async fn psql_over_tcp_and_unix_socket_needs_no_password() {
    let stack = common::stack().await;
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sockets");
    let proxy = Proxy::start(
        &stack,
        &["--port", "0", "--unix-socket", sockets.to_str().unwrap()],
        &[],
    );
    let user = stack.db_user();
    let db = stack.db_name();

    // TCP; libpq's default sslmode=prefer asks for TLS first and goes on without it.
    let tcp = format!(
        "host=127.0.0.1 port={} user={user} dbname={db}",
        proxy.port()
    );
    let (ok, out, err) = psql(&tcp, "SELECT current_user || '@' || current_database()");
    assert!(ok, "{err}\n{}", proxy.log_text());
    assert_eq!(out, format!("{user}@{db}"));

    // The Unix socket, named as PostgreSQL names it: psql -h DIR -p PORT.
    let port = stack.app_endpoint().port;
    assert!(sockets.join(format!(".s.PGSQL.{port}")).exists());
    let unix = format!(
        "host={} port={port} user={user} dbname={db}",
        sockets.display()
    );
    let (ok, out, err) = psql(&unix, "SELECT count(*) > 0 FROM information_schema.tables");
    assert!(ok, "{err}");
    assert_eq!(out, "t");
}

#[tokio::test]
async fn refusals_reach_the_client_as_postgresql_errors() {
    let stack = common::stack().await;
    let proxy = Proxy::start(&stack, &["--port", "0"], &[]);
    let base = format!(
        "host=127.0.0.1 port={} dbname={}",
        proxy.port(),
        stack.db_name()
    );

    let (ok, _, err) = psql(&format!("{base} user=someone_else"), "SELECT 1");
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "this listener serves the database user \"{}\"",
            stack.db_user()
        )),
        "{err}"
    );

    // The local side has no TLS: sslmode=require gets libpq's own error.
    let user = stack.db_user();
    let (ok, _, err) = psql(&format!("{base} user={user} sslmode=require"), "SELECT 1");
    assert!(!ok);
    assert!(err.contains("server does not support SSL"), "{err}");

    // A startup option RDS Proxy does not take: its own words.
    let (ok, _, err) = psql(
        &format!("{base} user={user} options='-c work_mem=1MB'"),
        "SELECT 1",
    );
    assert!(!ok);
    assert!(
        err.contains("RDS Proxy currently doesn't support the option options"),
        "{err}"
    );
}

#[tokio::test]
async fn sts_refusing_fails_new_clients_at_assume_role_while_open_sessions_go_on() {
    let stack = common::stack().await;
    stack.set_sts_fault(StsFault::Refuse);
    let proxy = Proxy::start(&stack, &["--port", "0"], &[]);
    let conninfo = common::conninfo(&stack, proxy.port());
    let (ok, _, err) = psql(&conninfo, "SELECT 1");
    assert!(!ok);
    assert!(err.contains("assume-role: "), "{err}");
    assert!(err.contains("hint: "), "{err}");
    assert!(
        proxy.log_text().contains("upstream session failed"),
        "the same failure is logged: {}",
        proxy.log_text()
    );

    // STS answers again: a session opens once the cache's backoff after the failure has
    // passed, and stays usable while STS refuses anew.
    stack.set_sts_fault(StsFault::None);
    let until = Instant::now() + Duration::from_secs(20);
    let (client, connection) = loop {
        match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
            Ok(session) => break session,
            Err(e) if Instant::now() < until => {
                assert!(format!("{e:?}").contains("assume-role"), "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no session after STS recovered: {e:?}"),
        }
    };
    tokio::spawn(connection);
    stack.set_sts_fault(StsFault::Refuse);
    for _ in 0..5 {
        let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    }
}

#[tokio::test]
async fn a_cancel_request_interrupts_the_query_within_a_second() {
    let stack = common::stack().await;
    let proxy = Proxy::start(&stack, &["--port", "0"], &[]);
    let conninfo = common::conninfo(&stack, proxy.port());
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("session");
    tokio::spawn(connection);
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(30)").await;
        (result, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel sent to the proxy");
    let (result, ended) = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the query ends")
        .unwrap();
    let err = result.expect_err("cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(ended - sent < Duration::from_secs(1), "{:?}", ended - sent);
}

#[tokio::test]
async fn pgbench_runs_through_the_proxy_without_failures() {
    let stack = common::stack().await;
    let proxy = Proxy::start(&stack, &["--port", "0"], &[]);
    let port = proxy.port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("select.sql");
    std::fs::write(&script, "SELECT count(*) FROM pg_class;\n").unwrap();
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port, "-U", stack.db_user()])
        .args(["-n", "-c", "4", "-j", "2", "-T", "3", "-f"])
        .arg(&script)
        .arg(stack.db_name())
        .env("PGPASSFILE", "/nonexistent")
        .output()
        .expect("pgbench runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("number of failed transactions: 0"), "{text}");
}
