//! The `rds-proxy-emulator` binary: `serve` writes its state (a client using only
//! `stack.env` gets in), SIGTERM stops PostgreSQL and removes everything; errors are one
//! line; the root `local-stack.toml` is the package's.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_rds-proxy-emulator");

fn read_env(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .expect("stack.env")
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_clean_shutdown() -> TestResult {
    let state = tempfile::tempdir()?;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("local-stack.toml");
    let mut serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let env_path = state.path().join("stack.env");
    let started = Instant::now();
    while !env_path.exists() {
        assert!(serve.try_wait()?.is_none(), "serve exited early");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let env = read_env(&env_path);
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for key in [
        "DATABASE_ACCOUNT_IAM_ROLE",
        "RDS_PROXY_APPLICATION_ENDPOINT",
        "DB_USERNAME",
        "DBNAME",
        "DB_PORT",
        "EXTERNAL_ID",
        "DB_CA_BUNDLE",
        "DB_CONNECT_HOST",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_STS",
    ] {
        assert!(!get(key).is_empty(), "{key} missing");
    }
    assert_eq!(get("DB_PORT"), "5432");
    assert_eq!(
        get("RDS_PROXY_APPLICATION_ENDPOINT"),
        "application-db-endpoint-read-only.endpoint.proxy-abc123xyz789.us-east-1.rds.amazonaws.com"
    );
    assert!(Path::new(&get("DB_CA_BUNDLE")).is_file());
    let read_pids = || -> Vec<u32> {
        std::fs::read_to_string(state.path().join("postgres.pid"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().expect("a pid a line"))
            .collect()
    };
    // The writer and one reader.
    let mut pg_pids = read_pids();
    assert_eq!(pg_pids.len(), 2, "{pg_pids:?}");
    let pg_dir = std::fs::read_to_string(state.path().join("postgres.dir"))?
        .trim()
        .to_string();
    for pid in &pg_pids {
        assert!(Path::new(&format!("/proc/{pid}")).exists());
    }

    // AssumeRole through the STS stand-in with the stack.env keys (the AWS SDK), then a
    // token signed with the session credentials.
    let sts_conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(get("AWS_REGION")))
        .endpoint_url(get("AWS_ENDPOINT_URL_STS"))
        .credentials_provider(aws_sdk_sts::config::Credentials::new(
            get("AWS_ACCESS_KEY_ID"),
            get("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "stack.env",
        ))
        .build();
    let assumed = aws_sdk_sts::Client::from_conf(sts_conf)
        .assume_role()
        .role_arn(get("DATABASE_ACCOUNT_IAM_ROLE"))
        .external_id(get("EXTERNAL_ID"))
        .role_session_name("cli-test")
        .send()
        .await?;
    let c = assumed.credentials().expect("credentials");
    let token = TokenSpec {
        host: &get("RDS_PROXY_APPLICATION_ENDPOINT"),
        port: get("DB_PORT").parse()?,
        region: &get("AWS_REGION"),
        user: &get("DB_USERNAME"),
        access_key_id: c.access_key_id(),
        secret_access_key: c.secret_access_key(),
        session_token: Some(c.session_token()),
        expires_in: 900,
    }
    .sign(time::OffsetDateTime::now_utc());

    // The token works through the proxy (tokio-postgres, verified TLS).
    let listen: std::net::SocketAddr = get("DB_CONNECT_HOST").parse()?;
    let mut roots = rustls::RootCertStore::empty();
    for c in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_file_iter(
        get("DB_CA_BUNDLE"),
    )? {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(get("RDS_PROXY_APPLICATION_ENDPOINT"))
        .hostaddr(listen.ip())
        .port(listen.port())
        .user(get("DB_USERNAME"))
        .dbname(get("DBNAME"))
        .password(&token)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, conn) = cfg
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await?;
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await?
        .get(0);
    assert_eq!(n, 5);
    drop(client);

    // Faults and counters through the control socket.
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--state-dir")
            .arg(state.path())
            .output()
            .expect("run the CLI")
    };
    let out = cli(&["fault", "sts-refuse"]);
    assert!(out.status.success(), "{out:?}");
    let status = String::from_utf8(cli(&["status"]).stdout)?;
    assert!(
        status.contains("STS AssumeRole     1 received, 1 succeeded"),
        "{status}"
    );
    assert!(
        status.contains("proxy logins       1 accepted, 0 refused"),
        "{status}"
    );
    assert!(
        status.contains("faults             STS refuse, Secrets Manager none, proxy stall off"),
        "{status}"
    );
    assert!(cli(&["fault", "proxy-stall"]).status.success());
    assert!(cli(&["fault", "secrets", "hang"]).status.success());
    assert!(String::from_utf8(cli(&["status"]).stdout)?
        .contains("faults             STS refuse, Secrets Manager hang, proxy stall on"));
    let out = cli(&["fault", "secrets"]);
    assert_eq!(out.status.code(), Some(2), "a mode is required: {out:?}");
    assert!(cli(&["fault", "clear"]).status.success());
    assert!(String::from_utf8(cli(&["status"]).stdout)?
        .contains("faults             STS none, Secrets Manager none, proxy stall off"));
    let out = cli(&["rotate-secret"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8(cli(&["status"]).stdout)?
        .contains("GetSecretValue     0 received, 0 succeeded; 1 rotation(s)"));

    // Servers with their roles, the pinned count; then a failover from the CLI.
    let status = String::from_utf8(cli(&["status"]).stdout)?;
    assert!(status.contains("  pg-1   writer "), "{status}");
    assert!(status.contains("  pg-2   reader "), "{status}");
    // The reader's lag, as the writer reports it: "lag N bytes[, replay lag X ms]".
    let reader_line = status
        .lines()
        .find(|l| l.starts_with("  pg-2   reader "))
        .expect("reader line");
    let lag: Option<u64> = reader_line
        .split_once(" lag ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok());
    assert!(lag.is_some(), "{reader_line}");
    assert!(
        status.contains("sessions pinned    0 pinned so far"),
        "{status}"
    );
    // RDS Proxy's metrics, under CloudWatch's names: in `status`, and alone.
    for name in [
        "ClientConnections",
        "DatabaseConnections",
        "DatabaseConnectionsCurrentlyBorrowed",
        "DatabaseConnectionsCurrentlySessionPinned",
        "DatabaseConnectionsCurrentlyInTransaction",
        "ClientConnectionsSetupFailedAuth",
        "ClientConnectionsNoTLS",
        "QueryDatabaseResponseLatency",
    ] {
        assert!(status.contains(&format!("  {name} ")), "{name}: {status}");
    }
    let metrics = String::from_utf8(cli(&["metrics"]).stdout)?;
    let value = |name: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        value("DatabaseConnectionsCurrentlyBorrowed"),
        Some(0),
        "{metrics}"
    );
    assert!(
        value("DatabaseConnections").is_some_and(|n| n >= 1),
        "{metrics}"
    );
    assert!(value("QueryDatabaseResponseLatency").is_some(), "{metrics}");
    let out = cli(&["failover"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8(out.stdout)?;
    assert!(
        said.starts_with("failover: pg-1 stopped, pg-2 promoted to writer in "),
        "{said}"
    );
    let started = Instant::now();
    loop {
        let status = String::from_utf8(cli(&["status"]).stdout)?;
        if status.contains("  pg-3   reader ") {
            assert!(status.contains("  pg-2   writer "), "{status}");
            assert!(status.contains("  pg-1   stopped "), "{status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no new reader: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // postgres.pid follows: the new writer and the new reader.
    let started = Instant::now();
    while read_pids().len() != 2 || read_pids() == pg_pids {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            read_pids()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg_pids.extend(read_pids());

    // A second serve on the same state dir refuses.
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(state.path())
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)?.contains("already running"));

    // SIGTERM: PostgreSQL stopped, its directory and the state files removed.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(serve.id() as libc::pid_t, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || serve.wait()).await??;
    assert!(status.success(), "{status}");
    for pid in &pg_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "postgres {pid} still running"
        );
    }
    assert!(!Path::new(&pg_dir).exists(), "{pg_dir} left behind");
    for f in [
        "stack.env",
        "secret.env",
        "serve.pid",
        "postgres.pid",
        "backend.env",
        "control.sock",
    ] {
        assert!(!state.path().join(f).exists(), "{f} left behind");
    }
    Ok(())
}

fn spawn_serve(state_dir: &Path) -> std::io::Result<std::process::Child> {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("local-stack.toml"))
        .arg("--state-dir")
        .arg(state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

/// What a `serve` that did not shut down left running: its PostgreSQL servers (from
/// `postgres.pid`), stopped here, and their directory (`postgres.dir`), removed. Returns
/// the pids that were still running.
fn stop_leftovers(state_dir: &Path) -> Vec<u32> {
    let pids: Vec<u32> = std::fs::read_to_string(state_dir.join("postgres.pid"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    for pid in pids.iter().rev() {
        // SAFETY: kill has no memory-safety preconditions; these are the servers the
        // test's own `serve` started.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGINT) };
    }
    let started = Instant::now();
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(dir) = std::fs::read_to_string(state_dir.join("postgres.dir")) {
        let _ = std::fs::remove_dir_all(dir.trim());
    }
    pids
}

/// `stack.env` (the application principal's secret key) and `backend.env` (the database
/// password) are readable by their owner only, from the moment they exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_holding_secrets_are_owner_only() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir()?;
    let mut serve = spawn_serve(state.path())?;
    let env_path = state.path().join("stack.env");
    let started = Instant::now();
    while !env_path.exists() {
        assert!(serve.try_wait()?.is_none(), "serve exited early");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let modes: Vec<(&str, u32)> = ["stack.env", "secret.env", "backend.env"]
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(state.path().join(f)).expect(f);
            (f, meta.permissions().mode() & 0o777)
        })
        .collect();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(serve.id() as libc::pid_t, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || serve.wait()).await??;
    let left_running = stop_leftovers(state.path());
    assert!(status.success(), "{status}");
    assert!(left_running.is_empty(), "{left_running:?}");
    assert_eq!(
        modes,
        [
            ("stack.env", 0o600),
            ("secret.env", 0o600),
            ("backend.env", 0o600)
        ]
    );
    Ok(())
}

/// `stack.env` appearing means "ready": a SIGTERM sent at that very moment (as a script
/// waiting for the file would) stops `serve` cleanly, PostgreSQL and the state files with
/// it, instead of killing it with its servers left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_the_moment_stack_env_appears_shuts_down_cleanly() -> TestResult {
    for attempt in 1..=4 {
        let state = tempfile::tempdir()?;
        let mut serve = spawn_serve(state.path())?;
        let env_path = state.path().join("stack.env");
        // Watched in a tight loop, so the signal follows the file as closely as it can.
        let serve = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            while !env_path.exists() {
                assert!(
                    serve.try_wait().expect("try_wait").is_none(),
                    "serve exited early"
                );
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "serve not ready"
                );
            }
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(serve.id() as libc::pid_t, libc::SIGTERM) };
            serve
        })
        .await?;
        let status = tokio::task::spawn_blocking(move || {
            let mut serve = serve;
            serve.wait()
        })
        .await??;
        let left_running = stop_leftovers(state.path());
        let left_files: Vec<String> = std::fs::read_dir(state.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f != "ca.pem")
            .collect();
        assert!(status.success(), "attempt {attempt}: {status}");
        assert!(
            left_running.is_empty(),
            "attempt {attempt}: {left_running:?}"
        );
        assert!(left_files.is_empty(), "attempt {attempt}: {left_files:?}");
    }
    Ok(())
}

#[test]
fn errors_are_one_line_with_exit_codes() {
    let out = Command::new(BIN)
        .args(["check-config", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("rds-proxy-emulator: configuration: cannot read /nonexistent.toml"),
        "{err}"
    );

    // A control command without a running stack: one line, exit 1.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["fault", "clear", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no running stack at"), "{err}");

    let out = Command::new(BIN)
        .args(["serve", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        rds_proxy_emulator::config::DEMO_TOML
            .replace("db_user = \"app_user\"", "db_user = \"ghost\""),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "rds-proxy-emulator: configuration: client.db_user ghost is not one of [[proxy.db_users]]\n"
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("local-stack.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let _ = TestResult::Ok(());
}

/// One source of truth: the repository root's `local-stack.toml` (what `make local-up` and
/// the README point at) is the package's file, which `StackConfig::demo()` compiles in.
#[test]
fn root_config_is_the_package_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../local-stack.toml");
    let text = std::fs::read_to_string(&root).expect("root local-stack.toml");
    assert_eq!(text, rds_proxy_emulator::config::DEMO_TOML);
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("local-stack.toml");
    assert_eq!(
        std::fs::canonicalize(&root).unwrap(),
        std::fs::canonicalize(&package).unwrap(),
        "the root file must be a link to the package's, not a copy"
    );
}
