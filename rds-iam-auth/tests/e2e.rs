//! End to end against the local stack: a real PostgreSQL behind the STS and RDS Proxy
//! stand-ins (`rds-proxy-emulator`), over verified TLS, dialing 127.0.0.1 while verifying
//! the endpoint's real-looking name.

use std::time::Duration;

use aws_credential_types::Credentials;
use rds_iam_auth::{CaBundle, Config, Error, Outcome, Stage};
use rds_proxy_emulator::{LocalStack, StackConfig};

const UNTRUSTED: &str = "arn:aws:iam::111111111111:role/some-other-lambda-role";
const NO_CONNECT_ROLE: &str = "arn:aws:iam::222222222222:role/proxy-no-connect-role";

mod common;
use common::{config, config_without_ca, ro, sdk_config, stack};

async fn failure(config: Config) -> Error {
    let report = config.connector().await.expect("connector").check().await;
    let failed = report
        .stages
        .iter()
        .filter(|s| s.outcome == Outcome::Failed)
        .count();
    assert_eq!(failed, 1, "exactly one failed stage:\n{report}");
    report.error.expect("the check failed")
}

#[tokio::test]
async fn connect_assumes_role_signs_and_reads_seeded_rows() {
    let stack = stack().await;
    let client = config(&stack, ro(&stack))
        .await
        .application_name("e2e")
        .connect()
        .await
        .expect("connects");
    let rows = client
        .query("SELECT name FROM customers ORDER BY id", &[])
        .await
        .expect("query");
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(&names[..3], ["Ada Lovelace", "Grace Hopper", "Alan Turing"]);
    let row = client
        .query_one("SELECT current_user::text, current_database()::text, current_setting('application_name')", &[])
        .await
        .expect("session info");
    assert_eq!(row.get::<_, String>(0), "app_user");
    assert_eq!(row.get::<_, String>(1), "example_db");
    assert_eq!(row.get::<_, String>(2), "e2e");
    // A READ_ONLY endpoint refuses writes.
    let err = client
        .execute(
            "INSERT INTO products (id, name, price_cents) VALUES (99, 'x', 1)",
            &[],
        )
        .await
        .expect_err("read-only");
    assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err}");
}

#[tokio::test]
async fn check_reports_every_stage_in_order() {
    let stack = stack().await;
    let connector = config(&stack, ro(&stack))
        .await
        .connector()
        .await
        .expect("connector");
    let report = connector.check().await;
    assert!(report.is_success(), "{report}");
    let seen: Vec<(Stage, Outcome)> = report.stages.iter().map(|s| (s.stage, s.outcome)).collect();
    assert_eq!(
        seen,
        [
            (Stage::Credentials, Outcome::Ok),
            (Stage::AssumeRole, Outcome::Ok),
            (Stage::Token, Outcome::Ok),
            (Stage::Dns, Outcome::Skipped),
            (Stage::Tcp, Outcome::Ok),
            (Stage::Tls, Outcome::Ok),
            (Stage::Login, Outcome::Ok),
            (Stage::Query, Outcome::Ok),
        ]
    );
    let text = report.to_string();
    assert!(text.ends_with("in all)"), "{text}");
    assert!(
        text.contains(&format!("verified {}", ro(&stack).hostname)),
        "{text}"
    );

    // A second check reuses the cached role credentials.
    let again = connector.check().await;
    assert!(again.is_success(), "{again}");
    assert_eq!(again.stages[0].outcome, Outcome::Cached);
    assert_eq!(again.stages[1].outcome, Outcome::Cached);
    assert_eq!(connector.credentials().refresh_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_connections_share_one_assume_role_and_get_fresh_tokens() {
    let stack = stack().await;
    let connector = config(&stack, ro(&stack))
        .await
        .connector()
        .await
        .expect("connector");
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let c = connector.clone();
            tokio::spawn(async move {
                let client = c.connect().await?;
                let row = client
                    .query_one("SELECT $1::int4 + 1", &[&i])
                    .await
                    .map_err(Error::from_query)?;
                Ok::<i32, Error>(row.get(0))
            })
        })
        .collect();
    let mut sums = Vec::new();
    for t in tasks {
        sums.push(t.await.expect("join").expect("connects and queries"));
    }
    sums.sort_unstable();
    assert_eq!(sums, (1..=12).collect::<Vec<i32>>());
    assert_eq!(
        connector.credentials().refresh_count(),
        1,
        "one AssumeRole for 12 connections"
    );
}

#[tokio::test]
async fn wrong_external_id_fails_at_assume_role() {
    let stack = stack().await;
    let err = failure(config(&stack, ro(&stack)).await.external_id("not-the-id")).await;
    assert_eq!(err.stage(), Stage::AssumeRole);
    let text = err.to_string();
    assert!(text.contains("AccessDenied: User: arn:aws:iam::111111111111:role/connectiontest-lambda-role is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role"), "{text}");
    assert!(text.contains("external ID must match"), "{text}");
}

#[tokio::test]
async fn untrusted_caller_fails_at_assume_role() {
    let stack = stack().await;
    let cfg = config(&stack, ro(&stack))
        .await
        .sdk_config(sdk_config(&stack, Some(UNTRUSTED)).await);
    let err = failure(cfg).await;
    assert_eq!(err.stage(), Stage::AssumeRole);
    assert!(
        err.to_string()
            .contains(&format!("User: {UNTRUSTED} is not authorized")),
        "{err}"
    );
}

#[tokio::test]
async fn role_without_rds_db_connect_fails_at_login() {
    let stack = stack().await;
    let err = failure(
        config(&stack, ro(&stack))
            .await
            .assume_role(NO_CONNECT_ROLE),
    )
    .await;
    assert_eq!(err.stage(), Stage::Login);
    assert_eq!(err.stage().failure_type(), "AuthenticationFailed");
    let text = err.to_string();
    assert!(text.contains("FATAL 28P01: The IAM authentication failed for the role app_user. Check the IAM token for this role and try again."), "{text}");
    assert!(text.contains("hint: check rds-db:connect on arn:aws:rds-db:REGION:ACCOUNT:dbuser:prx-RESOURCEID/DBUSER"), "{text}");
}

#[tokio::test]
async fn token_for_another_region_fails_at_login() {
    let stack = stack().await;
    let err = failure(config(&stack, ro(&stack)).await.region("eu-west-1")).await;
    assert_eq!(err.stage(), Stage::Login);
    assert!(
        err.to_string()
            .contains("The IAM authentication failed for the role app_user."),
        "{err}"
    );
}

#[tokio::test]
async fn user_without_a_proxy_secret_fails_at_login_with_its_hint() {
    let stack = stack().await;
    let err = failure(config(&stack, ro(&stack)).await.user("nobody")).await;
    assert_eq!(err.stage(), Stage::Login);
    let text = err.to_string();
    assert!(
        text.contains("FATAL 28P01: This RDS proxy has no credentials for the role nobody."),
        "{text}"
    );
    assert!(
        text.contains("hint: the proxy has no secret for this database user"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_ca_fails_at_tls_with_the_bundle_hint() {
    let stack = stack().await;
    let err = failure(config_without_ca(&stack, ro(&stack)).await).await;
    assert_eq!(err.stage(), Stage::Tls);
    let text = err.to_string();
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(text.contains("hint: unknown certificate issuer"), "{text}");
}

#[tokio::test]
async fn wrong_host_name_fails_at_tls_with_the_name_hint() {
    let stack = stack().await;
    let err = failure(
        config(&stack, ro(&stack))
            .await
            .hostname("other-endpoint.endpoint.proxy-zzz.us-east-1.rds.amazonaws.com"),
    )
    .await;
    assert_eq!(err.stage(), Stage::Tls);
    assert!(
        err.to_string().contains("certificate not valid for name"),
        "{err}"
    );
    assert!(
        err.to_string().contains("does not match the host name"),
        "{err}"
    );
}

#[tokio::test]
async fn proxy_down_fails_at_tcp() {
    let stack = stack().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = failure(
        config(&stack, ro(&stack))
            .await
            .connect_address(format!("127.0.0.1:{port}")),
    )
    .await;
    assert_eq!(err.stage(), Stage::Tcp);
    assert!(err.to_string().contains("Connection refused"), "{err}");
}

#[tokio::test]
async fn backend_down_fails_at_login_not_with_a_hang() {
    let stack = stack().await;
    stack.stop_backend().await;
    let started = std::time::Instant::now();
    let err = failure(config(&stack, ro(&stack)).await).await;
    assert_eq!(err.stage(), Stage::Login, "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_bounds_connections_and_survives_the_proxy_idle_timeout() {
    use rds_iam_auth::pool::{Manager, Pool};

    let mut cfg = StackConfig::demo();
    cfg.proxy.idle_client_timeout_seconds = 1;
    let stack = LocalStack::start(cfg).await.expect("stack");
    let connector = config(&stack, ro(&stack))
        .await
        .connector()
        .await
        .expect("connector");
    let pool = Pool::builder(Manager::new(connector.clone()))
        .max_size(3)
        .build()
        .expect("pool");

    let tasks: Vec<_> = (0..20)
        .map(|i: i32| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let client = pool.get().await.expect("pooled connection");
                let row = client
                    .query_one("SELECT $1::int4 * 2", &[&i])
                    .await
                    .expect("query");
                row.get::<_, i32>(0)
            })
        })
        .collect();
    let mut doubled = Vec::new();
    for t in tasks {
        doubled.push(t.await.expect("join"));
    }
    doubled.sort_unstable();
    assert_eq!(doubled, (0..20).map(|i| i * 2).collect::<Vec<i32>>());
    assert!(pool.status().size <= 3, "{:?}", pool.status());
    assert!(stack.proxy_client_connections() <= 3);

    // The proxy drops idle clients after 1 s; the pool notices at checkout and reconnects
    // (with a new token, from the cached role credentials).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stack.proxy_client_connections() != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stack.proxy_client_connections(),
        0,
        "the proxy closed idle clients"
    );
    let client = pool.get().await.expect("replaced connection");
    let one: i32 = client
        .query_one("SELECT 1::int4", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(one, 1);
    assert_eq!(connector.credentials().refresh_count(), 1);
}

/// Base credentials from a list, one per fetch (the last one repeats), counting fetches.
#[derive(Debug, Clone)]
struct Sequence {
    list: std::sync::Arc<Vec<Credentials>>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Sequence {
    fn new(list: Vec<Credentials>) -> Self {
        Self {
            list: std::sync::Arc::new(list),
            calls: Default::default(),
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl aws_credential_types::provider::ProvideCredentials for Sequence {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let credentials = self.list[n.min(self.list.len() - 1)].clone();
        aws_credential_types::provider::future::ProvideCredentials::ready(Ok(credentials))
    }
}

/// A session the proxy does not know (revoked, or rotated away), valid for an hour as far
/// as the client can tell.
fn revoked() -> Credentials {
    Credentials::new(
        "ASIAREVOKEDSESSION01",
        "revoked-secret",
        Some("revoked-session-token".to_owned()),
        Some(std::time::SystemTime::now() + Duration::from_secs(3600)),
        "test",
    )
}

async fn connector_signing_with(stack: &LocalStack, provider: Sequence) -> rds_iam_auth::Connector {
    let ep = ro(stack);
    Config::new()
        .hostname(&ep.hostname)
        .port(ep.port)
        .user(stack.db_user())
        .database(stack.db_name())
        .connect_address(ep.listen.to_string())
        .ca_bundle(CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("stack CA"))
        .sdk_config(sdk_config(stack, None).await)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(provider),
        )
        .connector()
        .await
        .expect("connector")
}

#[tokio::test]
async fn a_login_refused_for_revoked_credentials_is_retried_once_with_fresh_ones() {
    let stack = stack().await;
    // Valid role credentials from the STS stand-in.
    let good = config(&stack, ro(&stack))
        .await
        .connector()
        .await
        .expect("connector")
        .credentials()
        .credentials()
        .await
        .expect("assumed role");

    let provider = Sequence::new(vec![revoked(), good]);
    let connector = connector_signing_with(&stack, provider.clone()).await;
    let client = connector
        .connect()
        .await
        .expect("retried with fresh credentials");
    let one: i32 = client
        .query_one("SELECT 1::int4", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(one, 1);
    assert_eq!(
        provider.calls(),
        2,
        "the refused credentials were replaced once"
    );
    connector.connect().await.expect("cached fresh credentials");
    assert_eq!(provider.calls(), 2);

    // A refusal that fresh credentials do not cure: one retry, then none for a minute.
    let provider = Sequence::new(vec![revoked()]);
    let connector = connector_signing_with(&stack, provider.clone()).await;
    for _ in 0..3 {
        let err = connector.connect().await.expect_err("refused");
        assert_eq!(err.stage(), Stage::Login);
        assert!(
            err.to_string().contains("IAM authentication failed"),
            "{err}"
        );
    }
    assert_eq!(provider.calls(), 2, "one refresh, not one per connect");
}

/// A TCP relay in front of the proxy that can freeze the connections it carries: bytes
/// stop flowing both ways but nothing is closed, as when a network path dies silently.
struct Freezer {
    addr: std::net::SocketAddr,
    flows: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
}

impl Freezer {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let flows: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
        let registry = flows.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                registry.lock().expect("lock").push(frozen.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Self::pump(cr, sw, frozen.clone()));
                tokio::spawn(Self::pump(sr, cw, frozen));
            }
        });
        Self { addr, flows }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.load(std::sync::atomic::Ordering::SeqCst) {
                // Hold both sockets open and forward nothing, forever.
                std::future::pending::<()>().await;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// Freezes every connection open now; later ones flow normally.
    fn freeze_existing(&self) {
        for flow in self.flows.lock().expect("lock").iter() {
            flow.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

async fn backend_pid(client: &rds_iam_auth::tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("query")
        .get(0)
}

#[tokio::test]
async fn a_half_open_pooled_connection_is_replaced_within_the_recycle_timeout() {
    use rds_iam_auth::pool::{Manager, Pool};
    let stack = stack().await;
    let freezer = Freezer::start(ro(&stack).listen).await;
    let connector = config(&stack, ro(&stack))
        .await
        .connect_address(freezer.addr.to_string())
        .connector()
        .await
        .expect("connector");
    let manager = Manager::new(connector).recycle_timeout(Duration::from_millis(500));
    let pool = Pool::builder(manager).max_size(1).build().expect("pool");
    let first = backend_pid(&pool.get().await.expect("first connection")).await;

    freezer.freeze_existing();
    let started = std::time::Instant::now();
    let client = pool.get().await.expect("a new connection");
    let took = started.elapsed();
    assert_ne!(backend_pid(&client).await, first, "not the frozen session");
    assert!(
        took >= Duration::from_millis(500),
        "the recycle check waited: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "and then gave up: {took:?}");
}

#[tokio::test]
async fn pooled_connections_are_replaced_after_their_maximum_lifetime() {
    use rds_iam_auth::pool::{Manager, Pool, Recycling};
    let stack = stack().await;
    let connector = config(&stack, ro(&stack))
        .await
        .connector()
        .await
        .expect("connector");
    let manager = Manager::new(connector)
        .recycling(Recycling::Fast)
        .max_lifetime(Some(Duration::from_millis(800)));
    let pool = Pool::builder(manager).max_size(1).build().expect("pool");
    let first = backend_pid(&pool.get().await.expect("first")).await;
    assert_eq!(
        backend_pid(&pool.get().await.expect("reused")).await,
        first,
        "young connections are reused"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    let replaced = backend_pid(&pool.get().await.expect("replaced")).await;
    assert_ne!(
        replaced, first,
        "an old connection is closed, a new one opened"
    );
}

#[tokio::test]
async fn the_after_connect_hook_runs_once_per_physical_connection_and_its_settings_stick() {
    use rds_iam_auth::pool::{Manager, Pool};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let stack = stack().await;
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let connector = config(&stack, ro(&stack))
        .await
        .after_connect(move |client| {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                client
                    .batch_execute(
                        "SET statement_timeout = '4321ms'; SET search_path TO app, public",
                    )
                    .await
            })
        })
        .connector()
        .await
        .expect("connector");
    let pool = Pool::builder(Manager::new(connector.clone()))
        .max_size(2)
        .build()
        .expect("pool");
    for _ in 0..10 {
        let client = pool.get().await.expect("pooled");
        let row = client
            .query_one(
                "SELECT current_setting('statement_timeout'), current_setting('search_path')",
                &[],
            )
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), "4321ms");
        assert_eq!(row.get::<_, String>(1), "app, public");
    }
    assert_eq!(runs.load(Ordering::SeqCst), pool.status().size);

    // A failing hook fails the connect, naming itself.
    let err = config(&stack, ro(&stack))
        .await
        .after_connect(|client| {
            Box::pin(async move { client.batch_execute("SET no_such_setting = 1").await })
        })
        .connector()
        .await
        .expect("connector")
        .connect()
        .await
        .expect_err("the hook fails");
    assert_eq!(err.stage(), Stage::Query);
    assert!(
        err.to_string()
            .starts_with("query: after-connect hook: ERROR"),
        "{err}"
    );
}

#[tokio::test]
async fn listen_notify_works_through_the_stand_in_with_the_raw_connection() {
    let stack = stack().await;
    let rw = stack.endpoint("READ_WRITE").expect("READ_WRITE endpoint");
    let connector = config(&stack, rw)
        .await
        .connector()
        .await
        .expect("connector");
    let (listener, mut connection) = connector.connect_raw().await.expect("raw connection");
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(rds_iam_auth::tokio_postgres::AsyncMessage::Notification(n)) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.expect("LISTEN");
    let sender = connector.connect().await.expect("second connection");
    sender
        .batch_execute("NOTIFY jobs, 'job 42'")
        .await
        .expect("NOTIFY");
    let got = tokio::time::timeout(Duration::from_secs(5), notifications.recv())
        .await
        .expect("a notification within 5 s")
        .expect("channel open");
    assert_eq!(got, ("jobs".to_owned(), "job 42".to_owned()));
}

#[tokio::test]
async fn the_pool_recovers_from_a_failover_without_user_code() {
    use rds_iam_auth::pool::{Manager, Pool};
    let stack = stack().await;
    let rw = stack.endpoint("READ_WRITE").expect("READ_WRITE endpoint");
    let connector = config(&stack, rw)
        .await
        .connector()
        .await
        .expect("connector");
    let pool = Pool::builder(Manager::new(connector))
        .max_size(4)
        .build()
        .expect("pool");
    let writer_before = {
        let client = pool.get().await.expect("pooled");
        client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("query")
            .get::<_, Option<i32>>(0)
    };
    let report = stack.failover().await.expect("failover");
    let started = std::time::Instant::now();
    // What a service does anyway: take a connection, write, give it back. The pooled
    // session the failover closed is found at checkout and replaced.
    let mut failed = 0;
    loop {
        let attempt = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            client
                .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(row) => {
                let (port, in_recovery): (Option<i32>, bool) = (row.get(0), row.get(1));
                assert!(!in_recovery, "READ_WRITE reaches the new writer");
                assert_ne!(port, writer_before, "a different server: {report:?}");
                break;
            }
            Err(e) => {
                failed += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "no recovery after {failed} attempts: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    eprintln!(
        "failover: promoted in {:?}; the pool served the new writer {:?} later, after {failed} failed checkouts",
        report.took,
        started.elapsed()
    );
}
