//! The sqlx integration (feature `sqlx`) against the local stack: a `PgPool` that keeps
//! opening connections through token windows and credential rotations, TLS that refuses
//! an untrusted server, and refresh failures that show.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
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
async fn the_endpoint_name_is_verified_with_and_without_an_override() {
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
    assert!(options.get_socket().is_none(), "dialed directly");
    let err = PgConnection::connect_with(&options)
        .await
        .expect_err("the certificate does not name localhost");
    assert!(
        err.to_string()
            .contains("certificate not valid for name \"localhost\""),
        "a name mismatch: {err}"
    );

    // Dialing 127.0.0.1 for the endpoint name: still VerifyFull, for the endpoint name,
    // through the local forwarder (a private Unix socket that only moves ciphertext).
    let connector = connector(&stack).await;
    let options = connect_options(&connector).await.expect("options");
    assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
    assert_eq!(options.get_host(), endpoint.hostname);
    assert_eq!(options.get_port(), endpoint.port);
    assert_eq!(options.get_username(), "app_user");
    assert_eq!(options.get_database(), Some("example_db"));
    assert_eq!(options.get_application_name(), Some("sqlx-test"));
    let dir = options.get_socket().expect("a forwarder socket").clone();
    assert_private_socket_dir(&dir, endpoint.port);
    let again = connect_options(&connector).await.expect("options again");
    assert_eq!(
        again.get_socket(),
        Some(&dir),
        "one forwarder per dial target"
    );
    assert!(!logs.text().contains("VerifyCa"), "{}", logs.text());

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

    // A pool over the override: VerifyFull too, and it works.
    let (pool, _refresh) = PoolBuilder::new(connector.clone())
        .pool_options(PgPoolOptions::new().max_connections(2))
        .connect()
        .await
        .expect("pool");
    let in_force = pool.connect_options();
    assert!(matches!(in_force.get_ssl_mode(), PgSslMode::VerifyFull));
    assert_eq!(in_force.get_host(), endpoint.hostname);
    assert_eq!(in_force.get_socket(), Some(&dir));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .expect("query");
    assert_eq!(one, 1);
    pool.close().await;

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

/// The forwarder's socket directory: private to this user, named so a stale one is
/// recognisable, holding the socket sqlx dials.
fn assert_private_socket_dir(dir: &std::path::Path, port: u16) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let name = dir.file_name().and_then(|n| n.to_str()).expect("a name");
    assert!(
        name.starts_with(&format!("rds-iam-auth-sqlx-{}-", std::process::id())),
        "{name}"
    );
    let mode = std::fs::metadata(dir).expect("dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    let socket = dir.join(format!(".s.PGSQL.{port}"));
    let meta = std::fs::metadata(&socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

/// A TLS server that plays PostgreSQL with a certificate for `name` from a CA of its own
/// (trusted by the connectors that dial it: "a certificate from a trusted CA for another
/// name"), and asks for the password in cleartext to lure it out.
struct Lure {
    addr: std::net::SocketAddr,
    ca_pem: String,
    handshakes: Arc<AtomicUsize>,
    passwords: Arc<AtomicUsize>,
}

impl Lure {
    fn start(name: &str) -> Lure {
        let tls = rds_proxy_emulator::tls::ProxyTls::generate(&[name.to_owned()]).expect("certs");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (handshakes, passwords) = (Arc::default(), Arc::default());
        let counters = (Arc::clone(&handshakes), Arc::clone(&passwords));
        let config = tls.server_config.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (config, counters) = (config.clone(), counters.clone());
                std::thread::spawn(move || {
                    let _ = lure_one(stream, config, counters);
                });
            }
        });
        Lure {
            addr,
            ca_pem: tls.ca_pem,
            handshakes,
            passwords,
        }
    }

    fn passwords(&self) -> usize {
        self.passwords.load(Ordering::SeqCst)
    }

    /// A connector for the endpoint `hostname:port` that trusts the lure's CA; no STS
    /// (long-term keys sign the token).
    async fn connector(
        &self,
        hostname: &str,
        port: u16,
        connect_address: Option<String>,
    ) -> Connector {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::from_keys(
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                None,
            )))
            .build();
        Config::new()
            .hostname(hostname)
            .port(port)
            .region("us-east-1")
            .user("app_user")
            .database("example_db")
            .set_connect_address(connect_address)
            .ca_bundle(rds_iam_auth::CaBundle::from_pem(self.ca_pem.as_bytes()).expect("CA"))
            .connect_timeout(Duration::from_secs(5))
            .sdk_config(sdk)
            .connector()
            .await
            .expect("connector")
    }
}

/// SSLRequest, TLS, the startup message, then AuthenticationCleartextPassword; counts the
/// password messages ('p') that come back.
fn lure_one(
    mut tcp: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    (handshakes, passwords): (Arc<AtomicUsize>, Arc<AtomicUsize>),
) -> std::io::Result<()> {
    use std::io::Read;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = [0u8; 8];
    tcp.read_exact(&mut request)?;
    if request != [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
        return Ok(());
    }
    tcp.write_all(b"S")?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    handshakes.fetch_add(1, Ordering::SeqCst);
    let mut len = [0u8; 4];
    tls.read_exact(&mut len)?;
    let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    tls.read_exact(&mut startup)?;
    // AuthenticationCleartextPassword.
    tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?;
    tls.flush()?;
    let mut kind = [0u8; 1];
    tls.read_exact(&mut kind)?;
    if kind[0] == b'p' {
        passwords.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

#[tokio::test]
async fn over_connect_address_a_trusted_certificate_for_another_name_never_gets_the_password() {
    let lure = Lure::start("attacker.example.com");
    let endpoint = "app.proxy-lure0example.us-east-1.rds.amazonaws.com";
    let connector = lure
        .connector(endpoint, 5432, Some(lure.addr.to_string()))
        .await;

    let options = connect_options(&connector).await.expect("options");
    assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
    assert_eq!(options.get_host(), endpoint);
    let err = PgConnection::connect_with(&options)
        .await
        .expect_err("the certificate names another host");
    assert!(
        err.to_string()
            .contains(&format!("certificate not valid for name \"{endpoint}\"")),
        "a name mismatch: {err}"
    );

    let err = PoolBuilder::new(connector.clone())
        .pool_options(PgPoolOptions::new().acquire_timeout(Duration::from_secs(10)))
        .connect()
        .await
        .expect_err("the certificate names another host");
    assert_eq!(err.stage(), Stage::Tls, "{err}");
    assert!(
        err.hint()
            .is_some_and(|h| h.contains("does not match the host name")),
        "{err}"
    );
    assert_eq!(lure.passwords(), 0, "the lure got a password");

    // The lure works: a client that checks the chain only (sqlx's VerifyCa, what the pool
    // used over an override before) hands it the token.
    let handshakes = lure.handshakes.load(Ordering::SeqCst);
    let _ = PgConnection::connect_with(&options.clone().ssl_mode(PgSslMode::VerifyCa)).await;
    assert_eq!(lure.passwords(), 1, "the lure did not work");
    assert!(lure.handshakes.load(Ordering::SeqCst) > handshakes);
}

#[tokio::test]
async fn dialing_by_name_a_trusted_certificate_for_another_name_never_gets_the_password() {
    let lure = Lure::start("attacker.example.com");
    // "localhost" resolves to the lure; its certificate does not name it.
    let connector = lure.connector("localhost", lure.addr.port(), None).await;
    let options = connect_options(&connector).await.expect("options");
    assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
    let err = PgConnection::connect_with(&options)
        .await
        .expect_err("the certificate names another host");
    assert!(
        err.to_string()
            .contains("certificate not valid for name \"localhost\""),
        "{err}"
    );
    let err = PoolBuilder::new(connector)
        .pool_options(PgPoolOptions::new().acquire_timeout(Duration::from_secs(10)))
        .connect()
        .await
        .expect_err("the certificate names another host");
    assert_eq!(err.stage(), Stage::Tls, "{err}");
    assert_eq!(lure.passwords(), 0, "the lure got a password");
}

#[tokio::test]
async fn a_refused_connect_address_fails_the_pool_promptly_at_tcp_with_a_warning() {
    let (logs, _guard) = Logs::capture();
    // Bind then drop: nothing listens there afterwards.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let lure = Lure::start("unused.example.com");
    let connector = lure
        .connector(
            "app.proxy-refused0example.us-east-1.rds.amazonaws.com",
            5432,
            Some(refused.to_string()),
        )
        .await;
    let started = Instant::now();
    let err = PoolBuilder::new(connector)
        .pool_options(PgPoolOptions::new().acquire_timeout(Duration::from_secs(20)))
        .connect()
        .await
        .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.stage(), Stage::Tcp, "{err}");
    assert!(err.to_string().contains(&refused.to_string()), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains(&refused.to_string()))
        .unwrap_or_else(|| panic!("a WARN for the failed dial: {text}"));
    assert!(line.contains("stage=tcp"), "{line}");
    for secret in ["wJalrXUtnFEMI", "X-Amz-Signature", "X-Amz-Credential"] {
        assert!(!text.contains(secret), "{secret} in the logs: {text}");
    }
}

#[test]
fn the_forwarder_outlives_the_runtime_that_started_it_and_is_shared() {
    // The stack runs on a runtime of its own that lives through the test. Runtime A builds
    // the first pool (and with it the forwarder); runtime B builds a second pool for the
    // same dial target; A is then shut down while B's pool keeps using the forwarder.
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime {name}: {e}"))
    };
    let runtime_stack = runtime("stack");
    let stack = runtime_stack.block_on(stack(|_| {}));
    let build_pool = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let (pool, _refresh) = PoolBuilder::new(connector(&stack).await)
                .pool_options(PgPoolOptions::new().max_connections(1))
                .connect()
                .await
                .expect("pool");
            pool
        })
    };

    let runtime_a = runtime("A");
    let pool_a = build_pool(&runtime_a);
    let dir = pool_a
        .connect_options()
        .get_socket()
        .cloned()
        .expect("forwarded");
    let threads = forwarder_threads();
    #[cfg(target_os = "linux")]
    assert!(threads >= 1, "a forwarder thread");

    let runtime_b = runtime("B");
    let pool_b = build_pool(&runtime_b);
    assert_eq!(pool_b.connect_options().get_socket(), Some(&dir), "shared");
    assert_eq!(
        forwarder_threads(),
        threads,
        "no thread of its own per pool"
    );

    drop(pool_a);
    runtime_a.shutdown_timeout(Duration::from_secs(5));

    runtime_b.block_on(async {
        let mut conn = PgConnection::connect_with(&pool_b.connect_options())
            .await
            .expect("a new connection through the forwarder A started");
        sqlx::query("SELECT 1")
            .execute(&mut conn)
            .await
            .expect("query");
        conn.close().await.expect("close");
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool_b)
            .await
            .expect("pool B");
        assert_eq!(one, 1);
        pool_b.close().await;
    });
    runtime_stack.block_on(async move { drop(stack) });
}

/// How many forwarder threads this process runs (Linux: thread names; elsewhere 0).
fn forwarder_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "rds-iam-forward")
        .count()
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
