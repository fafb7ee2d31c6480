//! What an operator runs: the health and metrics endpoints, /quitquitquit, a client
//! password on a shared host, many targets from a targets file, the start-up connection
//! test.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{conninfo, psql, Proxy};
use rds_proxy_emulator::LocalStack;

/// A free loopback port (for the HTTP server, whose port the log does not print first).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (status code, body) of an HTTP request.
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("HTTP server");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Polls `path` until it answers `code` (or panics after 20 s).
fn wait_http(port: u16, path: &str, code: u16) -> String {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = http(port, "GET", path);
        if got == code {
            return body;
        }
        assert!(Instant::now() < until, "{path}: {got} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

// Multi-threaded: the sessions' connection tasks run while this test blocks on HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_quitquitquit_report_what_happened() {
    let stack = common::stack().await;
    let http_port = free_port().to_string();
    let mut proxy = Proxy::start(
        &stack,
        &[
            "--port",
            "0",
            "--http-port",
            &http_port,
            "--health-check",
            "--prometheus",
            "--quitquitquit",
            "--max-connections",
            "2",
        ],
        &[],
    );
    let hp: u16 = http_port.parse().unwrap();
    assert_eq!(http(hp, "GET", "/liveness").0, 200);
    wait_http(hp, "/startup", 200);
    wait_http(hp, "/readiness", 200);

    let c = conninfo(&stack, proxy.port());
    for _ in 0..3 {
        let (ok, out, err) = psql(&c, "SELECT 1");
        assert!(ok && out == "1", "{err}");
    }
    let (ok, _, _) = psql(&format!("{c} user=intruder"), "SELECT 1");
    assert!(!ok);

    // Two sessions open: at --max-connections, /readiness fails and says why.
    let mut open = Vec::new();
    for _ in 0..2 {
        let (client, conn) = tokio_postgres::connect(&c, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        open.push(client);
    }
    let body = wait_http(hp, "/readiness", 503);
    assert!(body.contains("max connections reached"), "{body}");
    let (_, metrics) = http(hp, "GET", "/metrics");
    let target = "{target=\"";
    assert_eq!(
        metric(
            &metrics,
            &format!("rds_iam_auth_proxy_connections_open{target}")
        ),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("rds_iam_auth_proxy_connections_opened_total{target}")
        ),
        6.0,
        "3 psql, 1 refused user, 2 open\n{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "rds_iam_auth_proxy_connections_refused_total{target=\""
        ),
        1.0,
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"user\"} 1"), "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            &format!("rds_iam_auth_proxy_connect_seconds_count{target}")
        ),
        5.0
    );
    assert!(
        metric(
            &metrics,
            &format!("rds_iam_auth_proxy_tokens_signed_total{target}")
        ) >= 5.0
    );
    assert!(
        metric(
            &metrics,
            &format!("rds_iam_auth_proxy_credential_refreshes_total{target}")
        ) >= 1.0
    );
    assert!(metric(&metrics, "rds_iam_auth_proxy_bytes_total{target=\"") > 0.0);
    drop(open);
    wait_http(hp, "/readiness", 200);

    // A batch job's sidecar ends with the job; a Kubernetes preStop httpGet hook sends GET.
    assert_eq!(http(hp, "PUT", "/quitquitquit").0, 405);
    assert_eq!(http(hp, "GET", "/quitquitquit").0, 200);
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", proxy.log_text());
}

#[tokio::test]
async fn a_client_password_is_checked_with_scram() {
    let stack = common::stack().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client-password");
    std::fs::write(&file, "correct horse battery staple\n").unwrap();
    let proxy = Proxy::start(
        &stack,
        &[
            "--port",
            "0",
            "--client-password-file",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let c = conninfo(&stack, proxy.port());
    let (ok, out, err) = psql(
        &format!("{c} password='correct horse battery staple'"),
        "SELECT current_user",
    );
    assert!(ok, "{err}");
    assert_eq!(out, stack.db_user());
    let (ok, _, err) = psql(&format!("{c} password=wrong"), "SELECT 1");
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "password authentication failed for user \"{}\"",
            stack.db_user()
        )),
        "{err}"
    );
}

/// A targets file for the stack's read-only endpoint: `(name, variable holding the
/// external ID)` per target.
fn targets_file(stack: &LocalStack, dir: &std::path::Path, targets: &[(&str, &str)]) -> String {
    let ep = stack.endpoint("READ_ONLY").unwrap();
    let mut text = format!(
        "[defaults]\nca_bundle = \"{}\"\n\n",
        stack.ca_path().display()
    );
    for (name, variable) in targets {
        text += &format!(
            "[[target]]\nname = \"{name}\"\nendpoint = \"{}\"\nport = {}\ndatabase = \"{}\"\nuser = \"{}\"\nrole_arn = \"{}\"\nexternal_id_env = \"{variable}\"\nconnect_address = \"{}\"\nconnect_timeout = \"5s\"\n\n",
            ep.hostname,
            ep.port,
            stack.db_name(),
            stack.db_user(),
            stack.role_arn(),
            ep.listen
        );
    }
    let path = dir.join("targets.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn a_targets_file_serves_each_target_on_its_own_port() {
    let stack = common::stack().await;
    let dir = tempfile::tempdir().unwrap();
    let file = targets_file(
        &stack,
        dir.path(),
        &[("first", "GOOD_ID"), ("second", "GOOD_ID")],
    );
    let proxy = Proxy::start(
        &stack,
        &["--config", &file, "--port", "0"],
        &[("GOOD_ID", stack.external_id())],
    );
    assert_eq!(proxy.listening.len(), 2, "{}", proxy.log_text());
    for listener in &proxy.listening {
        let port: u16 = listener.rsplit_once(':').unwrap().1.parse().unwrap();
        let (ok, out, err) = psql(&conninfo(&stack, port), "SELECT 1");
        assert!(ok && out == "1", "{listener}: {err}");
    }
}

#[tokio::test]
async fn the_start_up_connection_test_fails_fast_on_a_broken_target() {
    let stack = common::stack().await;
    let dir = tempfile::tempdir().unwrap();
    let file = targets_file(
        &stack,
        dir.path(),
        &[("good", "GOOD_ID"), ("broken", "WRONG_ID")],
    );
    let mut proxy = Proxy::spawn(
        &stack,
        &["--config", &file, "--port", "0", "--run-connection-test"],
        &[
            ("GOOD_ID", stack.external_id()),
            ("WRONG_ID", "not-the-external-id"),
        ],
    );
    let status = proxy.wait_exit(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(100));
    let log = proxy.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("connection test passed"), "{log}");
    assert!(log.contains("connection test failed"), "{log}");
    assert!(log.contains("AccessDenied"), "{log}");
    assert!(
        !log.contains("not-the-external-id"),
        "the external ID stays out of the log"
    );
}
