//! The `rds-proxy-emulator` binary: `serve` writes its state, `token` signs tokens the
//! proxy accepts, SIGTERM stops PostgreSQL and removes everything; errors are one line.

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
async fn serve_token_and_clean_shutdown() -> TestResult {
    let state = tempfile::tempdir()?;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../local-stack.toml");
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
    let pg_pid: u32 = std::fs::read_to_string(state.path().join("postgres.pid"))?
        .trim()
        .parse()?;
    let pg_dir = std::fs::read_to_string(state.path().join("postgres.dir"))?
        .trim()
        .to_string();
    assert!(Path::new(&format!("/proc/{pg_pid}")).exists());

    // `token` with the stack.env variables: AssumeRole through STS, then sign.
    let out = Command::new(BIN)
        .arg("token")
        .env_clear()
        .envs(env.iter().cloned())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    assert!(token.starts_with(&format!(
        "{}:5432/?Action=connect&DBUser=app_user&",
        get("RDS_PROXY_APPLICATION_ENDPOINT")
    )));
    assert!(token.contains("X-Amz-Security-Token="));

    // The token works through the proxy (tokio-postgres, verified TLS).
    let listen: std::net::SocketAddr = get("DB_CONNECT_HOST").parse()?;
    let mut roots = rustls::RootCertStore::empty();
    for c in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_file_iter(
        get("DB_CA_BUNDLE"),
    )? {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
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

    // A wrong external id: one line, exit 1.
    let out = Command::new(BIN)
        .arg("token")
        .env_clear()
        .envs(env.iter().cloned())
        .env("EXTERNAL_ID", "wrong")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr)?,
        "rds-proxy-emulator: STS AssumeRole refused: AccessDenied: User: arn:aws:iam::111111111111:role/connectiontest-lambda-role is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role\n"
    );

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
    assert!(
        !Path::new(&format!("/proc/{pg_pid}")).exists(),
        "postgres still running"
    );
    assert!(!Path::new(&pg_dir).exists(), "{pg_dir} left behind");
    for f in ["stack.env", "serve.pid", "postgres.pid", "backend.env"] {
        assert!(!state.path().join(f).exists(), "{f} left behind");
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
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../local-stack.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let _ = TestResult::Ok(());
}
