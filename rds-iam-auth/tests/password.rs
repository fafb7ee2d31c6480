//! End to end for databases on passwords: the password of the local stack's password user
//! (`app_password_user`) read from its Secrets Manager secret (in the database account,
//! with the assumed role) or from Parameter Store (in the application account), the
//! settings read from Parameter Store, over verified TLS with SCRAM-SHA-256 at the proxy.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rds_iam_auth::{Config, Outcome, PasswordSource, Reason, Stage};
use rds_proxy_emulator::ServiceFault;

mod common;
use common::{sdk_config_all, secret_config, stack};

const PARAMETER_READER: Option<&str> = None; // the application principal reads parameters

/// A connector for the password user's secret ([`secret_config`]).
async fn secret_connector(stack: &rds_proxy_emulator::LocalStack) -> rds_iam_auth::Connector {
    secret_config(stack)
        .await
        .connector()
        .await
        .expect("connector")
}

/// A connector for the secret whose cached password is due for a refresh after 1 s, so
/// a test reaches "past the time to live" quickly.
async fn one_second_ttl_connector(
    stack: &rds_proxy_emulator::LocalStack,
) -> rds_iam_auth::Connector {
    secret_config(stack)
        .await
        .password_ttl(Duration::from_secs(1))
        .connector()
        .await
        .expect("connector")
}

/// Waits until `done` holds, at most `limit` (the assertions after it say what failed).
async fn wait_for(limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn check_on_the_secret_path_reads_the_secret_with_the_role_and_logs_in() {
    let stack = stack().await;
    let connector = secret_config(&stack)
        .await
        .connector()
        .await
        .expect("connector (the secret fills endpoint, port, user, database)");
    assert_eq!(connector.token_params().username(), "app_password_user");
    assert_eq!(connector.database(), Some("example_db"));
    assert_eq!(
        connector.password_reads(),
        1,
        "read once, to fill the settings"
    );

    let report = connector.check().await;
    assert!(report.is_success(), "{report}");
    let stages: Vec<Stage> = report.stages.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::Credentials,
            Stage::AssumeRole,
            Stage::Secret,
            Stage::Dns,
            Stage::Tcp,
            Stage::Tls,
            Stage::Login,
            Stage::Query
        ],
        "{report}"
    );
    let secret = report.stages.iter().find(|s| s.stage == Stage::Secret);
    assert_eq!(secret.map(|s| s.outcome), Some(Outcome::Cached), "{report}");

    let client = connector.connect().await.expect("connects");
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "app_password_user");
    assert_eq!(connector.password_reads(), 1, "served from the cache");
    assert_eq!(connector.tokens_signed(), 0, "no IAM token on this path");
}

#[tokio::test]
async fn the_parameter_store_password_logs_in_with_the_callers_own_credentials() {
    let stack = stack().await;
    let path = stack.parameter_path().expect("seeded parameters");
    let endpoint = stack.app_endpoint();
    let connector = Config::new()
        .hostname(&endpoint.hostname)
        .port(endpoint.port)
        .user(stack.password_user().expect("password user"))
        .database(stack.db_name())
        .password_parameter(format!("{path}/password"))
        .connect_address(endpoint.listen.to_string())
        .ca_bundle(rds_iam_auth::CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("CA"))
        .sdk_config(sdk_config_all(&stack, PARAMETER_READER).await)
        .connector()
        .await
        .expect("connector");
    let report = connector.check().await;
    assert!(report.is_success(), "{report}");
    let stages: Vec<Stage> = report.stages.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages[0],
        Stage::Secret,
        "no role, no credential cache: {report}"
    );
    assert!(!stages.contains(&Stage::Token), "{report}");
    assert_eq!(connector.password_reads(), 1);
}

#[tokio::test]
async fn settings_from_parameter_store_connect_through_the_secret() {
    let stack = stack().await;
    let path = stack.parameter_path().expect("seeded parameters");
    let sdk = sdk_config_all(&stack, PARAMETER_READER).await;
    let config = Config::from_parameters_with(&sdk, path)
        .await
        .expect("parameters read");
    assert_eq!(config.get_user(), Some("app_password_user"));
    assert_eq!(config.get_assume_role(), Some(stack.role_arn()));
    assert!(config.has_external_id());
    // The path holds the secret's ARN and a copy of the password: the secret wins.
    assert_eq!(
        config.password_source().expect("one source"),
        Some(PasswordSource::SecretsManager {
            secret_arn: stack.secret_arn().expect("secret")
        })
    );
    let shown = format!("{config:?}");
    let password = stack.current_password().expect("password");
    assert!(!shown.contains(&password), "{shown}");

    let client = config
        .ca_bundle(rds_iam_auth::CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("CA"))
        .sdk_config(sdk)
        .connect()
        .await
        .expect("connects");
    let row = client
        .query_one("SELECT 1::int4", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, i32>(0), 1);

    let err = Config::from_parameters_with(&sdk_config_all(&stack, None).await, "/nothing/here")
        .await
        .expect_err("empty path");
    assert_eq!(err.stage(), Stage::Parameters);
    assert_eq!(err.reason(), Reason::ParameterNotFound);
    assert!(err.to_string().contains("/nothing/here"), "{err}");
    assert_eq!(err.stage().failure_type(), "ParameterFailed");
}

#[tokio::test]
async fn a_role_the_secrets_policy_does_not_allow_gets_the_cross_account_hint() {
    let stack = stack().await;
    // Without the role, the application's own principal asks: the resource policy allows
    // only the database account's role.
    let config = Config::new()
        .hostname(&stack.app_endpoint().hostname)
        .user("app_password_user")
        .secret_arn(stack.secret_arn().expect("secret"))
        .connect_address(stack.app_endpoint().listen.to_string())
        .ca_bundle(rds_iam_auth::CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("CA"))
        .sdk_config(sdk_config_all(&stack, None).await);
    let err = config
        .connector()
        .await
        .expect_err("filling reads the secret");
    assert_eq!(err.stage(), Stage::Secret, "{err}");
    assert_eq!(err.reason(), Reason::SecretAccessDenied, "{err}");
    assert_eq!(err.aws_error_code(), Some("AccessDeniedException"));
    let hint = err.hint().expect("hint");
    assert!(hint.contains("resource policy"), "{hint}");
    assert!(hint.contains("aws/secretsmanager"), "{hint}");
}

#[tokio::test]
async fn a_wrong_secret_arn_is_not_found_with_its_hint() {
    let stack = stack().await;
    let arn = format!(
        "arn:aws:secretsmanager:{}:222222222222:secret:connectiontest/nope-AbCdEf",
        stack.region()
    );
    let connector = secret_config(&stack)
        .await
        .secret_arn(arn.clone())
        .hostname(&stack.app_endpoint().hostname)
        .port(stack.app_endpoint().port)
        .user("app_password_user")
        .database(stack.db_name())
        .connector()
        .await
        .expect("all settings given: nothing is read yet");
    let report = connector.check().await;
    let err = report.error.expect("fails");
    assert_eq!(err.stage(), Stage::Secret, "{err}");
    assert_eq!(err.reason(), Reason::SecretNotFound, "{err}");
    assert!(err.to_string().contains(&arn), "{err}");
    assert!(err.hint().expect("hint").contains("region"), "{err}");
    assert_eq!(err.stage().failure_type(), "SecretFailed");
}

#[tokio::test]
async fn a_hung_secrets_manager_fails_no_connect_while_the_password_is_cached() {
    let stack = stack().await;
    let connector = one_second_ttl_connector(&stack).await;
    connector.connect().await.expect("first connect");
    stack.set_secrets_fault(ServiceFault::Hang);
    // Past the time to live: every connect starts (or joins) a background read that hangs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..10 {
        let client = connector.connect().await.expect("served from the cache");
        client.simple_query("SELECT 1").await.expect("query");
    }
    assert_eq!(connector.failed_connects(), 0);
    stack.set_secrets_fault(ServiceFault::None);
}

#[tokio::test]
async fn a_refusing_secrets_manager_past_the_ttl_keeps_the_stored_password() {
    let stack = stack().await;
    let connector = one_second_ttl_connector(&stack).await;
    stack.set_secrets_fault(ServiceFault::Refuse);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Past the time to live, reads fail (after the SDK's retries, within the refresh's
    // 10 s bound): every check works meanwhile, and once a read has failed, says so.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = connector.check().await;
        assert!(report.is_success(), "{report}");
        let secret = report
            .stages
            .iter()
            .find(|s| s.stage == Stage::Secret)
            .expect("secret stage");
        if secret.detail.contains("refresh failing") {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "no failed read shown: {report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(connector.failed_connects(), 0);

    // Rotated meanwhile: the stored password is refused, read again once (refused by
    // Secrets Manager), and the check says so at the secret stage.
    stack.rotate_secret_now().await.expect("rotated");
    let report = connector.check().await;
    let err = report.error.as_ref().expect("fails");
    assert_eq!(err.stage(), Stage::Secret, "{report}");
    assert_eq!(err.reason(), Reason::SecretServiceUnavailable, "{report}");
    let login = report.stages.iter().find(|s| s.stage == Stage::Login);
    assert_eq!(login.map(|s| s.outcome), Some(Outcome::Retried), "{report}");
    stack.set_secrets_fault(ServiceFault::None);
}

/// A deadpool pool and a sqlx pool on one connector keep working across a rotation: the
/// refused login reads the secret again, the sqlx pool's options follow the new value.
#[tokio::test]
async fn pools_keep_working_across_a_rotation() {
    use rds_iam_auth::pool;
    use rds_iam_auth::sqlx::{PgPoolOptions, PoolBuilder};

    let stack = stack().await;
    let connector = secret_connector(&stack).await;
    let deadpool = pool::builder(&connector, deadpool_postgres::ManagerConfig::default())
        .max_size(2)
        .build()
        .expect("pool");
    let (sqlx_pool, refresh) = PoolBuilder::new(connector.clone())
        .pool_options(PgPoolOptions::new().max_connections(2))
        .connect()
        .await
        .expect("sqlx pool");
    let client = deadpool.get().await.expect("deadpool connection");
    client.simple_query("SELECT 1").await.expect("query");
    drop(client);
    let n: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&sqlx_pool)
        .await
        .expect("sqlx");
    assert_eq!(n, 1);
    let installed = refresh.refresh_count();

    let before = stack.current_password().expect("password");
    stack.rotate_secret_now().await.expect("rotated");
    assert_ne!(stack.current_password().expect("password"), before);

    // Open connections are not touched by a rotation.
    let n: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&sqlx_pool)
        .await
        .expect("sqlx");
    assert_eq!(n, 1);
    // A new deadpool connection: refused with the old password, read again, logged in.
    deadpool.retain(|_, _| false);
    let client = deadpool
        .get()
        .await
        .expect("a new connection after the rotation");
    client.simple_query("SELECT 1").await.expect("query");
    assert_eq!(connector.failed_connects(), 0);
    assert_eq!(
        connector.password_reads(),
        2,
        "read once more, after the refusal"
    );

    // sqlx got the new password too: a new sqlx connection logs in with it.
    wait_for(Duration::from_secs(5), || {
        refresh.refresh_count() > installed
    })
    .await;
    assert!(
        refresh.refresh_count() > installed,
        "options installed again"
    );
    let conn = sqlx_pool.acquire().await.expect("sqlx connection");
    sqlx::Connection::close(conn.detach())
        .await
        .expect("closed");
    for _ in 0..4 {
        let n: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&sqlx_pool)
            .await
            .expect("sqlx after rotation");
        assert_eq!(n, 1);
    }
    sqlx_pool.close().await;
}

/// Every event at TRACE level (the SDK's, hyper's, rustls's, tokio-postgres's, ours) of a
/// connector's build and a connect on the password path: the password is in none of them.
#[tokio::test]
async fn trace_logs_of_a_password_connect_never_hold_the_password() {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let stack = stack().await;
    let password = stack.current_password().expect("password");
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    {
        // A current-thread runtime: every task of the connect logs to this subscriber.
        let _guard = tracing::subscriber::set_default(subscriber);
        let connector = secret_config(&stack)
            .await
            .connector()
            .await
            .expect("connector");
        let report = connector.check().await;
        assert!(report.is_success(), "{report}");
        tracing::debug!(?connector, report = %report, "after the check");
    }
    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("GetSecretValue") || text.contains("secretsmanager"),
        "the capture saw the secret being read: {} bytes",
        text.len()
    );
    assert!(
        !text.contains(&password),
        "the password is in the trace output"
    );
}

/// The raw startup of `connect_stream` (the local auth proxy's) answers the proxy's
/// SCRAM-SHA-256 with the stored password.
#[tokio::test]
async fn connect_stream_logs_in_by_scram_with_the_stored_password() {
    let stack = stack().await;
    let connector = secret_connector(&stack).await;
    let session = connector
        .connect_stream(&[("application_name", "relay")])
        .await
        .expect("logged in");
    assert!(session.backend_key().is_some());
    assert_eq!(
        session.greeting().last(),
        Some(&b'I'),
        "ends with ReadyForQuery (idle)"
    );
}

/// A sqlx pool alone on its connector: its refresh task's login through the connector sees
/// the rotation (sqlx's own refused logins are invisible to the library) and installs the
/// new password.
#[tokio::test]
async fn a_sqlx_pool_alone_follows_a_rotation() {
    use rds_iam_auth::sqlx::{PgPoolOptions, PoolBuilder};

    let stack = stack().await;
    let connector = secret_connector(&stack).await;
    let (pool, refresh) = PoolBuilder::new(connector.clone())
        .pool_options(PgPoolOptions::new().max_connections(1))
        .refresh_every(Duration::from_secs(1))
        .connect()
        .await
        .expect("sqlx pool");
    stack.rotate_secret_now().await.expect("rotated");
    wait_for(Duration::from_secs(10), || connector.password_reads() >= 2).await;
    assert_eq!(
        connector.password_reads(),
        2,
        "read again after the probe was refused"
    );
    let installed = refresh.refresh_count();
    wait_for(Duration::from_secs(5), || {
        refresh.refresh_count() > installed
    })
    .await;
    // A new connection (the only one closed first) logs in with the new password.
    let conn = pool.acquire().await.expect("connection");
    sqlx::Connection::close(conn.detach())
        .await
        .expect("closed");
    let n: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .expect("a new connection after the rotation");
    assert_eq!(n, 1);
    assert_eq!(refresh.failed_refresh_count(), 0);
    pool.close().await;
}

/// Rotations seconds apart (a schedule far shorter than a minute, or a rotation retried
/// by hand): each refused login reads the secret again when the last re-read found a new
/// password, so the once-a-minute limit on re-reads never turns a rotation into failures.
/// And when eight connects are refused at once after a rotation, one reads the secret and
/// the other seven retry with what it read: all eight log in, with one read between them.
#[tokio::test]
async fn rotations_seconds_apart_and_many_refused_logins_at_once_all_recover() {
    let stack = stack().await;
    let connector = secret_connector(&stack).await;
    connector.connect().await.expect("first connect");
    assert_eq!(connector.password_reads(), 1);

    for rotation in 1..=3u64 {
        stack.rotate_secret_now().await.expect("rotated");
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let connector = connector.clone();
            connects.spawn(async move { connector.connect().await.map(drop) });
        }
        let failed: Vec<_> = connects
            .join_all()
            .await
            .into_iter()
            .filter_map(Result::err)
            .map(|e| e.to_string())
            .collect();
        assert!(failed.is_empty(), "rotation {rotation}: {failed:?}");
        assert_eq!(
            connector.password_reads(),
            1 + rotation,
            "rotation {rotation}: one read of the secret per rotation"
        );
    }
    assert_eq!(connector.failed_connects(), 0);
}
