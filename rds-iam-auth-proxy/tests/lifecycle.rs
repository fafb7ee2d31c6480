//! Starting and stopping: configuration refused before anything listens (exit 2, one
//! line), SIGTERM letting open sessions finish, --max-connections.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{psql, Proxy};

/// Runs the proxy to its exit: (exit code, stderr).
fn run_to_exit(
    stack: &rds_proxy_emulator::LocalStack,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String) {
    let mut proxy = Proxy::spawn(stack, args, env);
    let status = proxy.wait_exit(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(100)); // the log reader drains stderr
    (status.code().unwrap_or(-1), proxy.log_text())
}

#[tokio::test]
async fn bad_configuration_is_one_line_and_exit_2_before_listening() {
    let stack = common::stack().await;

    let (code, log) = run_to_exit(&stack, &["--address", "0.0.0.0", "--port", "0"], &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("--allow-non-loopback"), "{log}");
    assert_eq!(log.lines().count(), 1, "{log}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, log) = run_to_exit(&stack, &["--port", &port], &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("is in use"), "{log}");

    let (code, log) = run_to_exit(&stack, &["--port", "0"], &[("DB_USERNAME", "")]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("DB_USERNAME"), "{log}");

    let out = Command::new(env!("CARGO_BIN_EXE_rds-iam-auth-proxy"))
        .args(["--max-sigterm-delay", "30"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("with units"));
}

#[tokio::test]
async fn sigterm_refuses_new_clients_and_lets_open_sessions_finish() {
    let stack = common::stack().await;
    let mut proxy = Proxy::start(&stack, &["--port", "0", "--max-sigterm-delay", "20s"], &[]);
    let port = proxy.port();
    let conninfo = common::conninfo(&stack, port);
    let running = std::thread::spawn({
        let conninfo = conninfo.clone();
        move || psql(&conninfo, "SELECT pg_sleep(2); SELECT 'finished'")
    });
    std::thread::sleep(Duration::from_millis(700));
    let signalled = Instant::now();
    proxy.terminate();
    proxy.wait_for("no new connections", Duration::from_secs(5));
    // The listener is closed at once.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "new connections are refused after SIGTERM"
    );
    let (ok, out, err) = running.join().unwrap();
    assert!(ok, "the open session finished: {err}");
    assert!(out.ends_with("finished"), "{out}");
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", proxy.log_text());
    assert!(signalled.elapsed() < Duration::from_secs(20));
    assert!(proxy.log_text().contains("every connection ended"));
}

#[tokio::test]
async fn sessions_still_open_after_the_delay_are_closed_with_exit_1() {
    let stack = common::stack().await;
    let mut proxy = Proxy::start(&stack, &["--port", "0", "--max-sigterm-delay", "1s"], &[]);
    let conninfo = common::conninfo(&stack, proxy.port());
    let running = std::thread::spawn(move || psql(&conninfo, "SELECT pg_sleep(30)"));
    std::thread::sleep(Duration::from_millis(700));
    let signalled = Instant::now();
    proxy.terminate();
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", proxy.log_text());
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert!(proxy
        .log_text()
        .contains("still open after --max-sigterm-delay"));
    let (ok, _, _) = running.join().unwrap();
    assert!(!ok, "the session was closed");
}

#[tokio::test]
async fn max_connections_refuses_the_one_too_many() {
    let stack = common::stack().await;
    let proxy = Proxy::start(&stack, &["--port", "0", "--max-connections", "1"], &[]);
    let conninfo = common::conninfo(&stack, proxy.port());
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("the first session");
    tokio::spawn(connection);
    let (ok, _, err) = psql(&conninfo, "SELECT 1");
    assert!(!ok);
    assert!(
        err.contains("too many connections to the local proxy"),
        "{err}"
    );
    drop(client);
    // Its slot is free once the session has ended.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _, err) = psql(&conninfo, "SELECT 1");
        if ok {
            break;
        }
        assert!(Instant::now() < until, "{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn structured_logs_are_json_lines() {
    let stack = common::stack().await;
    let proxy = Proxy::start(&stack, &["--port", "0", "--structured-logs"], &[]);
    let (ok, _, err) = psql(&common::conninfo(&stack, proxy.port()), "SELECT 1");
    assert!(ok, "{err}");
    let log = proxy.log_text();
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["fields"]["message"].is_string(), "{line}");
    }
    assert!(log.contains("ready for new connections"));
}
