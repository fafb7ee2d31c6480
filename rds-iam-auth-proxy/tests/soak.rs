//! Soak through the proxy: pgbench opening a new connection per transaction (`-C`, 4
//! clients) plus 2 clients holding their sessions for the whole run, while role
//! credentials expire every 20 s and the stand-in accepts tokens for 10 s only. Every
//! transaction must succeed, and STS must see the rotations, not the connects.
//!
//! Ignored by plain test runs (it takes minutes); `make soak` runs it, and `make test`
//! runs it after the other suites, beside the library's soak. `SOAK_SECONDS` sets the
//! length (default 120).

mod common;

use std::process::Command;

use common::Proxy;
use rds_proxy_emulator::{LocalStack, StackConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: make soak"]
async fn soak_pgbench_through_the_proxy_while_credentials_and_tokens_rotate() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .map(|v| v.parse().expect("SOAK_SECONDS is a whole number"))
        .unwrap_or(120);
    let mut config = StackConfig::demo();
    config.sts.credentials_lifetime_seconds = Some(20);
    config.proxy.token_lifetime_seconds = 10;
    let stack = LocalStack::start(config).await.expect("local stack");
    let proxy = Proxy::start(&stack, &["--port", "0"], &[]);
    let port = proxy.port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tx.sql");
    std::fs::write(
        &script,
        "BEGIN;\nSELECT count(*) FROM pg_class;\nSELECT now();\nCOMMIT;\n",
    )
    .unwrap();
    let pgbench = |clients: &str, reconnect: bool| {
        let mut command = Command::new("pgbench");
        command
            .args(["-h", "127.0.0.1", "-p", &port, "-U", stack.db_user()])
            .args(["-n", "-c", clients, "-j", "1", "-T", &seconds.to_string()])
            .arg("-f")
            .arg(&script)
            .arg(stack.db_name())
            .env("PGPASSFILE", "/nonexistent")
            .env_remove("PGPASSWORD");
        if reconnect {
            command.arg("-C");
        }
        command
    };
    // New sessions all along (each with a fresh token), and long-lived ones alongside.
    let spawn = |mut command: Command| {
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("pgbench runs")
    };
    let reconnecting = spawn(pgbench("4", true));
    let holding = spawn(pgbench("2", false));
    let reconnecting = reconnecting.wait_with_output().unwrap();
    let holding = holding.wait_with_output().unwrap();
    let text = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let (r, h) = (text(&reconnecting), text(&holding));
    let counters = stack.counters();
    eprintln!(
        "soak {seconds} s through the proxy: {} logins, {} AssumeRole calls\n-- pgbench -C:\n{r}\n-- pgbench (held sessions):\n{h}",
        counters.logins_accepted, counters.assume_role_calls
    );
    for (out, text) in [(&reconnecting, &r), (&holding, &h)] {
        assert!(out.status.success(), "{text}\n{}", proxy.log_text());
        assert!(text.contains("number of failed transactions: 0"), "{text}");
    }
    // A refresh about every half life (10 s), not one per connect.
    let rotations = seconds / 10 + 1;
    assert!(
        counters.assume_role_calls <= rotations + 3,
        "{} AssumeRole calls for about {rotations} rotations and {} logins",
        counters.assume_role_calls,
        counters.logins_accepted
    );
    assert!(counters.logins_accepted > seconds * 5, "{counters:?}");
}
