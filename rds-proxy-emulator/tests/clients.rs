//! Third-party clients through the stand-in: psql with `sslmode=verify-full` and a token
//! as the password, and pgbench with several clients for a few seconds, also with more
//! clients than the pools may open database connections.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rds_proxy_emulator::{Endpoint, LocalStack};

fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is missing: install it with `apt-get install postgresql-client`"
    );
}

/// libpq connection string: verify the endpoint name against the stack's CA, dial 127.0.0.1.
fn conninfo(stack: &LocalStack, ep: &Endpoint) -> String {
    format!(
        "host={} hostaddr={} port={} sslmode=verify-full sslrootcert={} user=app_user dbname={}",
        ep.hostname,
        ep.listen.ip(),
        ep.listen.port(),
        stack.ca_path().display(),
        stack.db_name()
    )
}

/// Runs a command with a hard time limit (the test fails rather than hangs).
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("PGSERVICE")
        .env("PGCONNECT_TIMEOUT", "10")
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "command exceeded {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn psql(stack: &LocalStack, ep: &Endpoint, password: &str, sql: &str) -> Output {
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo(stack, ep))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password);
    tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(30)))
        .await
        .expect("psql task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_with_a_token() -> TestResult {
    require("psql");
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(
        &stack,
        &ep,
        "app_user",
        &creds,
        time::OffsetDateTime::now_utc(),
    );

    let out = psql(
        &stack,
        &ep,
        &token,
        "SELECT name FROM customers ORDER BY id",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Ada Lovelace\nGrace Hopper\nAlan Turing\nKatherine Johnson\n"
    );

    // Both endpoints: the READ_ONLY one lands on the reader, READ_WRITE on the writer.
    let out = psql(&stack, &ep, &token, "SELECT pg_is_in_recovery()").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "t\n");
    let rw = stack.endpoint("READ_WRITE").expect("READ_WRITE").clone();
    let rw_token = sign_token(
        &stack,
        &rw,
        "app_user",
        &creds,
        time::OffsetDateTime::now_utc(),
    );
    let out = psql(&stack, &rw, &rw_token, "SELECT pg_is_in_recovery()").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "f\n");

    let out = psql(&stack, &ep, "not-a-token", "SELECT 1").await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "FATAL:  The IAM authentication failed for the role app_user. Check the IAM token for this role and try again."
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // sslmode=disable: the RDS Proxy TLS message.
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host={} port={} sslmode=disable user=app_user dbname=example_db",
        ep.listen.ip(),
        ep.listen.port()
    ))
    .args(["-X", "-c", "SELECT 1"])
    .env("PGPASSWORD", &token);
    let out =
        tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(30))).await?;
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("FATAL:  This RDS Proxy requires TLS connections."));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_the_proxy_has_no_failed_transactions() -> TestResult {
    require("pgbench");
    let stack = demo().await;
    let rw = stack
        .endpoint("READ_WRITE")
        .expect("READ_WRITE endpoint")
        .clone();
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(
        &stack,
        &rw,
        "app_user",
        &creds,
        time::OffsetDateTime::now_utc(),
    );
    let info = conninfo(&stack, &rw);

    // Initialisation through the proxy too (COPY, VACUUM, ALTER TABLE).
    let mut init = Command::new("pgbench");
    init.args(["-i", "-q", "-s", "1", &info])
        .env("PGPASSWORD", &token);
    let out =
        tokio::task::spawn_blocking(move || run_bounded(init, Duration::from_secs(60))).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut bench = Command::new("pgbench");
    bench
        .args(["-n", "-c", "4", "-j", "2", "-T", "3", &info])
        .env("PGPASSWORD", &token);
    let out =
        tokio::task::spawn_blocking(move || run_bounded(bench, Duration::from_secs(60))).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("number of clients: 4"), "{stdout}");
    assert!(
        stdout.contains("number of failed transactions: 0 (0.000%)"),
        "{stdout}"
    );
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("processed count");
    assert!(processed > 100, "{stdout}");
    // Select-only through the READ_ONLY endpoint, on the reader, once the tables have
    // replicated there.
    let ro = stack
        .endpoint("READ_ONLY")
        .expect("READ_ONLY endpoint")
        .clone();
    let ro_token = sign_token(
        &stack,
        &ro,
        "app_user",
        &creds,
        time::OffsetDateTime::now_utc(),
    );
    let client = connect(&stack, &ro, "app_user", &ro_token).await?;
    let started = Instant::now();
    loop {
        let n: Option<i64> = client
            .query_one(
                "SELECT CASE WHEN to_regclass('pgbench_accounts') IS NULL THEN NULL ELSE (SELECT count(*) FROM pgbench_accounts) END",
                &[],
            )
            .await?
            .get(0);
        if n == Some(100_000) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not replicated: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
    let mut select = Command::new("pgbench");
    select
        .args([
            "-n",
            "-S",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "2",
            &conninfo(&stack, &ro),
        ])
        .env("PGPASSWORD", &ro_token);
    let out =
        tokio::task::spawn_blocking(move || run_bounded(select, Duration::from_secs(60))).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("number of failed transactions: 0 (0.000%)"),
        "{stdout}"
    );

    // The proxy released every client connection.
    for _ in 0..100 {
        if stack.proxy_client_connections() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stack.proxy_client_connections(), 0);
    Ok(())
}

/// pgbench with 16 clients on a proxy allowed 4 database connections (2% of
/// `max_connections`): every transaction waits its turn for a connection, none fails, and
/// PostgreSQL never sees more than 4 sessions of the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_with_more_clients_than_database_connections() -> TestResult {
    require("pgbench");
    let mut config = rds_proxy_emulator::StackConfig::demo();
    config.proxy.max_connections_percent = 2;
    let stack = start(config).await;
    let rw = stack.endpoint("READ_WRITE").expect("READ_WRITE").clone();
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(
        &stack,
        &rw,
        "app_user",
        &creds,
        time::OffsetDateTime::now_utc(),
    );
    let info = conninfo(&stack, &rw);
    let mut init = Command::new("pgbench");
    init.args(["-i", "-q", "-s", "1", &info])
        .env("PGPASSWORD", &token);
    let out =
        tokio::task::spawn_blocking(move || run_bounded(init, Duration::from_secs(60))).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let secret = stack.config().proxy.db_users[0].backend_password.clone();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(stack.backend_addr().port())
        .user("app_user")
        .password(secret.as_str())
        .dbname(stack.db_name());
    let (observer, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = std::sync::Arc::clone(&done);
        tokio::spawn(async move {
            let mut peak = 0i64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let n: i64 = observer
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench' AND backend_type = 'client backend'",
                        &[],
                    )
                    .await
                    .expect("pg_stat_activity")
                    .get(0);
                peak = peak.max(n);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let mut bench = Command::new("pgbench");
    bench
        .args(["-n", "-c", "16", "-j", "2", "-T", "3", &info])
        .env("PGPASSWORD", &token);
    let out =
        tokio::task::spawn_blocking(move || run_bounded(bench, Duration::from_secs(60))).await?;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("number of clients: 16"), "{stdout}");
    assert!(
        stdout.contains("number of failed transactions: 0 (0.000%)"),
        "{stdout}"
    );
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("processed count");
    assert!(processed > 100, "{stdout}");
    let m = stack.metrics();
    println!("pgbench, 16 clients: peak {peak} database sessions of the pool in pg_stat_activity; {processed} transactions; {m:?}");
    assert!(peak <= 4, "{peak} database sessions, cap 4");
    assert!(peak >= 1);
    assert!(m.database_connections <= 4, "{m:?}");
    assert_eq!(m.max_database_connections_allowed, 4, "{m:?}");
    Ok(())
}
