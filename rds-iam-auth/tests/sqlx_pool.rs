//! The sqlx integration (feature `sqlx`) against the local stack: a `PgPool` that keeps
//! opening connections through token windows and credential rotations, TLS that refuses
//! an untrusted server, and refresh failures that show.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rds_iam_auth::sqlx::{connect_options, PgPoolOptions, PgSslMode, PoolBuilder};
use rds_iam_auth::{Config, Connector, Stage};
use rds_proxy_emulator::control::StsFault;
use rds_proxy_emulator::{Endpoint, LocalStack, StackConfig};
use sqlx::{Connection, PgConnection};

mod common;
use common::{config, config_without_ca, sdk_config, stack_with};

/// A stack without readers (faster to start): the tests use the READ_WRITE endpoint.
async fn stack(edit: impl FnOnce(&mut StackConfig)) -> LocalStack {
    stack_with(|c| {
        c.database.replicas = 0;
        edit(c);
    })
    .await
}

fn rw(stack: &LocalStack) -> &Endpoint {
    stack.endpoint("READ_WRITE").expect("READ_WRITE endpoint")
}

async fn connector(stack: &LocalStack) -> Connector {
    config(stack, rw(stack))
        .await
        .application_name("sqlx-test")
        .connector()
        .await
        .expect("connector")
}

/// WARN and above, as text, of everything on this thread (the current-thread runtime of
/// the test: its spawned tasks too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_of_four_under_sixteen_tasks_rides_through_token_windows_and_credential_rotations() {
    const RUN: Duration = Duration::from_secs(45);
    const TOKEN_LIFETIME: u64 = 12;
    // Credentials live 20 s, tokens are accepted for 12 s: across 45 s the pool must
    // install tokens from several sessions, each before the last one dies.
    let stack = stack(|c| {
        c.sts.credentials_lifetime_seconds = Some(20);
        c.proxy.token_lifetime_seconds = TOKEN_LIFETIME as u32;
    })
    .await;
    let (pool, refresh) = PoolBuilder::new(connector(&stack).await)
        .pool_options(
            PgPoolOptions::new()
                .max_connections(4)
                // Physical connections are replaced all along, each with a new login.
                .max_lifetime(Duration::from_secs(5))
                .acquire_timeout(Duration::from_secs(30)),
        )
        .refresh_every(Duration::from_secs(4))
        .connect()
        .await
        .expect("pool");
    let started = Instant::now();

    let workers: Vec<_> = (0..16)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0u64, Vec::new());
                while started.elapsed() < RUN {
                    match sqlx::query_scalar::<_, String>("SELECT current_user::text")
                        .fetch_one(&pool)
                        .await
                    {
                        Ok(user) if user == "app_user" => ok += 1,
                        Ok(other) => failures.push(format!("logged in as {other}")),
                        Err(e) => failures.push(e.to_string()),
                    }
                    // Busy, not flat out: the stack shares the machine with other tests.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ok, failures)
            })
        })
        .collect();

    // Logins from here on cannot use the first token: the proxy refuses it by now.
    tokio::time::sleep(Duration::from_secs(TOKEN_LIFETIME + 3)).await;
    let after_first_token = stack.counters();

    let (mut queries, mut failures) = (0, Vec::new());
    for worker in workers {
        let (ok, failed) = worker.await.expect("join");
        queries += ok;
        failures.extend(failed);
    }
    let counters = stack.counters();
    eprintln!(
        "{queries} queries, {} failed, {} logins ({} after the first token died), {} AssumeRole, {} tokens installed",
        failures.len(),
        counters.logins_accepted,
        counters.logins_accepted - after_first_token.logins_accepted,
        counters.assume_role_succeeded,
        refresh.refresh_count()
    );
    assert!(
        failures.is_empty(),
        "{} failed, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(queries >= 16 * 10, "{queries} queries");
    assert_eq!(counters.logins_refused, 0, "{counters:?}");
    // Every 5 s four connections are replaced: about 24 logins in the last 30 s.
    let late_logins = counters.logins_accepted - after_first_token.logins_accepted;
    assert!(late_logins >= 10, "{late_logins} logins after 15 s");
    // More than one token, more than one session: a refresh every 4 s, a session every ~10 s.
    assert!(refresh.refresh_count() >= 8, "{refresh:?}");
    assert!(counters.assume_role_succeeded >= 3, "{counters:?}");
    assert_eq!(refresh.failed_refresh_count(), 0, "{refresh:?}");
    assert!(refresh.last_refresh_error().is_none());
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_that_expire_before_the_next_scheduled_refresh_bring_it_forward() {
    const RUN: Duration = Duration::from_secs(35);
    // Tokens are good for 900 s, so the default schedule would refresh every 5 minutes;
    // but the session credentials that sign them live 15 s, and a token dies with them.
    let stack = stack(|c| c.sts.credentials_lifetime_seconds = Some(15)).await;
    let (pool, refresh) = PoolBuilder::new(connector(&stack).await)
        .pool_options(
            PgPoolOptions::new()
                .max_connections(2)
                .max_lifetime(Duration::from_secs(3)),
        )
        .connect()
        .await
        .expect("pool");
    let first_expiry = refresh
        .credentials_expire_at()
        .expect("session credentials");
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while started.elapsed() < RUN {
                    if let Err(e) = sqlx::query("SELECT 1").execute(&pool).await {
                        failures.push(e.to_string());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                failures
            })
        })
        .collect();
    // Wait until the first credentials (and any token they signed) are dead.
    let dead_in = first_expiry
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(dead_in + Duration::from_secs(1)).await;
    let after_first_credentials = stack.counters();
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.expect("join"));
    }
    let counters = stack.counters();
    let late_logins = counters.logins_accepted - after_first_credentials.logins_accepted;
    eprintln!(
        "{} failed, {late_logins} logins after the first credentials expired, {} AssumeRole, {} tokens installed",
        failures.len(),
        counters.assume_role_succeeded,
        refresh.refresh_count()
    );
    assert!(
        failures.is_empty(),
        "{} failed, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(counters.logins_refused, 0, "{counters:?}");
    assert!(
        late_logins >= 5,
        "{late_logins} logins after the first credentials expired"
    );
    assert!(refresh.refresh_count() >= 4, "{refresh:?}");
    assert!(counters.assume_role_succeeded >= 3, "{counters:?}");
    assert!(refresh.credentials_expire_at() > Some(first_expiry));
    pool.close().await;
}

#[tokio::test]
async fn tls_is_verified_a_server_outside_the_trust_store_is_refused_before_any_login() {
    let stack = stack(|_| {}).await;
    let connector = config_without_ca(&stack, rw(&stack))
        .await
        .connector()
        .await
        .expect("connector");
    let err = PoolBuilder::new(connector)
        .pool_options(PgPoolOptions::new().acquire_timeout(Duration::from_secs(10)))
        .connect()
        .await
        .expect_err("the stack's CA is not trusted");
    assert_eq!(err.stage(), Stage::Tls, "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(
        err.hint()
            .is_some_and(|h| h.contains("unknown certificate issuer")),
        "{err}"
    );
    let counters = stack.counters();
    assert_eq!(
        counters.logins_accepted + counters.logins_refused,
        0,
        "no password reached the server: {counters:?}"
    );
}

#[tokio::test]
async fn without_an_override_the_name_is_verified_with_one_the_chain_and_a_warning() {
    let stack = stack(|_| {}).await;
    let (logs, _guard) = Logs::capture();
    let endpoint = rw(&stack);

    // Dialing the endpoint name: VerifyFull. The stand-in's certificate names the endpoint
    // host names only, so a name it does not cover ("localhost", which resolves to the
    // stand-in) must be refused on the name.
    let by_name = Config::new()
        .hostname("localhost")
        .port(endpoint.listen.port())
        .region(stack.region())
        .user(stack.db_user())
        .database(stack.db_name())
        .assume_role(stack.role_arn())
        .external_id(stack.external_id())
        .ca_bundle(rds_iam_auth::CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("CA"))
        .sdk_config(sdk_config(&stack, None).await)
        .connector()
        .await
        .expect("connector");
    let options = connect_options(&by_name).await.expect("options");
    assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
    assert_eq!(options.get_host(), "localhost");
    let err = PgConnection::connect_with(&options)
        .await
        .expect_err("the certificate does not name localhost");
    assert!(
        err.to_string()
            .contains("certificate not valid for name \"localhost\""),
        "a name mismatch: {err}"
    );
    assert!(!logs.text().contains("sqlx can verify"), "{}", logs.text());

    // Dialing 127.0.0.1 for the endpoint name: VerifyCa, said once per address.
    let connector = connector(&stack).await;
    let options = connect_options(&connector).await.expect("options");
    assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyCa));
    assert_eq!(options.get_host(), "127.0.0.1");
    assert_eq!(options.get_port(), endpoint.listen.port());
    assert_eq!(options.get_username(), "app_user");
    assert_eq!(options.get_database(), Some("example_db"));
    assert_eq!(options.get_application_name(), Some("sqlx-test"));
    connect_options(&connector).await.expect("options again");
    let warnings = logs.text();
    assert_eq!(
        warnings
            .matches("sqlx can verify the certificate's chain")
            .count(),
        1,
        "{warnings}"
    );
    assert!(warnings.contains(&endpoint.hostname), "{warnings}");

    // Those options open a session over TLS: the proxy refuses any other.
    let mut conn = PgConnection::connect_with(&options)
        .await
        .expect("connects");
    let (user, db, app): (String, String, String) = sqlx::query_as(
        "SELECT current_user::text, current_database()::text, current_setting('application_name')",
    )
    .fetch_one(&mut conn)
    .await
    .expect("session info");
    assert_eq!(
        (user.as_str(), db.as_str(), app.as_str()),
        ("app_user", "example_db", "sqlx-test")
    );
    conn.close().await.expect("close");
    let plaintext = PgConnection::connect_with(&options.clone().ssl_mode(PgSslMode::Disable))
        .await
        .expect_err("the proxy requires TLS");
    assert!(
        plaintext.to_string().contains("requires TLS"),
        "{plaintext}"
    );

    // A refresh interval the token cannot outlive is refused before any I/O.
    for every in [Duration::ZERO, Duration::from_secs(900)] {
        let err = PoolBuilder::new(connector.clone())
            .refresh_every(every)
            .connect_lazy()
            .await
            .expect_err("invalid interval");
        assert_eq!(err.stage(), Stage::Config, "{err}");
        assert!(err.to_string().contains("refresh_every"), "{err}");
    }
}

#[tokio::test]
async fn a_refresh_failure_is_reported_logged_and_retried_until_sts_answers_again() {
    // 12 s credentials: renewing them starts at 6 s; they are unusable 2 s before expiry.
    let stack = stack(|c| c.sts.credentials_lifetime_seconds = Some(12)).await;
    let (logs, _guard) = Logs::capture();
    let (pool, refresh) = PoolBuilder::new(connector(&stack).await)
        .pool_options(PgPoolOptions::new().max_connections(2))
        .refresh_every(Duration::from_secs(2))
        .connect()
        .await
        .expect("pool");
    assert_eq!(refresh.refresh_count(), 1);
    assert!(refresh.last_refresh_error().is_none());
    assert!(refresh.is_running());

    stack.set_sts_fault(StsFault::Refuse);
    wait_for("a failed refresh", Duration::from_secs(30), || {
        refresh.last_refresh_error().is_some()
    })
    .await;
    let err = refresh.last_refresh_error().expect("failing");
    assert_eq!(err.stage(), Stage::AssumeRole, "{err}");
    assert!(err.to_string().contains("ServiceUnavailable"), "{err}");
    let failed = refresh.failed_refresh_count();
    assert!(failed >= 1);

    // The pool keeps the options it has through the next failed attempt.
    let in_force = pool.connect_options();
    wait_for("another failed attempt", Duration::from_secs(10), || {
        refresh.failed_refresh_count() > failed
    })
    .await;
    assert!(Arc::ptr_eq(&in_force, &pool.connect_options()));
    assert!(refresh.last_refresh_error().is_some());

    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("refreshing the IAM token failed"))
        .unwrap_or_else(|| panic!("a WARN for the failure: {text}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("stage=assume-role"), "{line}");
    assert!(line.contains("ServiceUnavailable"), "{line}");
    assert!(line.contains("hint="), "{line}");
    let (_, app_secret) = stack.app_credentials();
    for secret in [
        app_secret.as_str(),
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    ] {
        assert!(!text.contains(secret), "{secret} in the logs: {text}");
    }

    // STS answers again: refreshing recovers by itself and the new options log in.
    stack.clear_faults();
    let before = refresh.refresh_count();
    wait_for("recovery", Duration::from_secs(20), || {
        refresh.last_refresh_error().is_none()
    })
    .await;
    assert!(refresh.refresh_count() > before);
    assert!(!Arc::ptr_eq(&in_force, &pool.connect_options()));
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .expect("a new login with the refreshed options");
    sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .expect("query");
    conn.close().await.expect("close");

    // Closing the pool ends the task.
    pool.close().await;
    wait_for("the task to end", Duration::from_secs(2), || {
        !refresh.is_running()
    })
    .await;
}

#[tokio::test]
async fn connector_settings_sqlx_cannot_carry_are_refused_not_dropped() {
    let stack = stack(|_| {}).await;
    let with_options = config(&stack, rw(&stack))
        .await
        .options("-c search_path=app")
        .connector()
        .await
        .expect("connector");
    let err = PoolBuilder::new(with_options)
        .connect_lazy()
        .await
        .expect_err("options refused");
    assert_eq!(err.stage(), Stage::Config);
    assert!(err.to_string().contains("PoolBuilder::customize"), "{err}");

    let with_hook = config(&stack, rw(&stack))
        .await
        .after_connect(|client| Box::pin(async move { client.batch_execute("SELECT 1").await }))
        .connector()
        .await
        .expect("connector");
    let err = PoolBuilder::new(with_hook)
        .connect_lazy()
        .await
        .expect_err("hook refused");
    assert!(
        err.to_string().contains("PgPoolOptions::after_connect"),
        "{err}"
    );
}
