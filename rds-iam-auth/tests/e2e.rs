//! End to end against the local stack: a real PostgreSQL behind the STS and RDS Proxy
//! stand-ins (`rds-proxy-emulator`), over verified TLS, dialing 127.0.0.1 while verifying
//! the endpoint's real-looking name.

use std::time::Duration;

use aws_credential_types::Credentials;
use rds_iam_auth::{CaBundle, Config, Error, Outcome, Stage};
use rds_proxy_emulator::LocalStack;

const UNTRUSTED: &str = "arn:aws:iam::111111111111:role/some-other-lambda-role";
const NO_CONNECT_ROLE: &str = "arn:aws:iam::222222222222:role/proxy-no-connect-role";

mod common;
use common::{config, config_without_ca, connector_for, ro, sdk_config, stack};

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
    let connector = connector_for(&stack, ro(&stack)).await;
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
    let connector = connector_for(&stack, ro(&stack)).await;
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
    let good = connector_for(&stack, ro(&stack))
        .await
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

#[tokio::test]
async fn listen_notify_works_through_the_stand_in_with_the_raw_connection() {
    let stack = stack().await;
    let rw = stack.endpoint("READ_WRITE").expect("READ_WRITE endpoint");
    let connector = connector_for(&stack, rw).await;
    let (listener, mut connection) = connector.connect_unspawned().await.expect("raw connection");
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
async fn target_session_attrs_keeps_writers_off_the_reader_endpoint() {
    use rds_iam_auth::tokio_postgres::config::TargetSessionAttrs;
    let stack = stack().await;
    let rw = stack.endpoint("READ_WRITE").expect("READ_WRITE endpoint");
    let writer = config(&stack, rw)
        .await
        .target_session_attrs(TargetSessionAttrs::ReadWrite)
        .connect()
        .await
        .expect("READ_WRITE gives a writable session");
    writer.simple_query("SELECT 1").await.expect("usable");

    let err = config(&stack, ro(&stack))
        .await
        .target_session_attrs(TargetSessionAttrs::ReadWrite)
        .connect()
        .await
        .expect_err("READ_ONLY reaches a reader");
    assert_eq!(err.stage(), Stage::Login, "{err}");
    assert!(
        err.to_string().contains("the session is read-only"),
        "{err}"
    );
    assert!(
        err.hint().expect("hint").contains("READ_ONLY endpoint"),
        "{err}"
    );

    config(&stack, ro(&stack))
        .await
        .target_session_attrs(TargetSessionAttrs::ReadOnly)
        .connect()
        .await
        .expect("READ_ONLY is what read-only asks for");
}

#[tokio::test]
async fn settings_from_a_tokio_postgres_config_reach_the_server() {
    let stack = stack().await;
    let rw = stack.endpoint("READ_WRITE").expect("READ_WRITE endpoint");
    let conninfo = format!(
        "host={} port={} user={} dbname={} application_name=billing-worker \
         connect_timeout=15 keepalives_idle=30 target_session_attrs=read-write",
        rw.hostname,
        rw.port,
        stack.db_user(),
        stack.db_name()
    );
    let pg: rds_iam_auth::tokio_postgres::Config = conninfo.parse().expect("conninfo");
    let client = Config::from_pg_config(&pg)
        .expect("taken over")
        .assume_role(stack.role_arn())
        .external_id(stack.external_id())
        .connect_address(rw.listen.to_string())
        .ca_bundle(CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("stack CA"))
        .sdk_config(common::sdk_config(&stack, None).await)
        .connect()
        .await
        .expect("connect");
    let row = client
        .query_one(
            "SELECT current_setting('application_name'), current_user::text, current_database()::text",
            &[],
        )
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), "billing-worker");
    assert_eq!(row.get::<_, String>(1), stack.db_user());
    assert_eq!(row.get::<_, String>(2), stack.db_name());
}

#[tokio::test]
async fn the_proxy_refuses_the_options_startup_parameter_and_the_error_says_what_to_do() {
    let stack = stack().await;
    let err = config(&stack, ro(&stack))
        .await
        .options("-c search_path=app")
        .connect()
        .await
        .expect_err("RDS Proxy does not take `options`");
    assert_eq!(err.stage(), Stage::Login, "{err}");
    assert!(
        err.to_string()
            .contains("doesn't support the option options"),
        "{err}"
    );
    assert!(err.hint().expect("hint").contains("ALTER ROLE"), "{err}");
}

#[tokio::test]
async fn a_set_in_the_after_connect_hook_pins_the_session_and_plain_queries_do_not() {
    let stack = stack().await;
    let plain = config(&stack, ro(&stack))
        .await
        .connect()
        .await
        .expect("connect");
    plain
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .expect("query");
    assert_eq!(
        stack.counters().sessions_pinned,
        0,
        "reading a setting pins nothing"
    );

    let hooked = config(&stack, ro(&stack))
        .await
        .after_connect(|client| {
            Box::pin(async move { client.batch_execute("SET search_path TO app, public").await })
        })
        .connect()
        .await
        .expect("connect");
    hooked.simple_query("SELECT 1").await.expect("query");
    assert_eq!(stack.counters().sessions_pinned, 1, "SET pins its session");
}

#[tokio::test]
async fn a_warm_check_recovers_from_a_revoked_role_session_with_fresh_credentials() {
    let stack = stack().await;
    let connector = connector_for(&stack, ro(&stack)).await;
    let first = connector.check().await;
    assert!(first.is_success(), "{first}");
    let cached = connector
        .credentials()
        .credentials()
        .await
        .expect("cached role credentials");
    assert!(stack.revoke_credentials(cached.access_key_id()), "revoked");

    // The cached session is refused by the proxy: the check retries once with a new one,
    // as connect does, instead of reporting the refusal until the next scheduled refresh.
    let report = connector.check().await;
    assert!(report.is_success(), "{report}");
    let logins: Vec<Outcome> = report
        .stages
        .iter()
        .filter(|s| s.stage == Stage::Login)
        .map(|s| s.outcome)
        .collect();
    assert_eq!(logins, [Outcome::Retried, Outcome::Ok], "{report}");
    assert_eq!(connector.credentials().refresh_count(), 2, "{report}");
    let now = connector
        .credentials()
        .credentials()
        .await
        .expect("fresh credentials");
    assert_ne!(now.access_key_id(), cached.access_key_id());
}

#[tokio::test]
async fn one_iam_refusal_while_sts_refuses_does_not_stop_connects() {
    let stack = stack().await;
    let connector = connector_for(&stack, ro(&stack)).await;
    connector.connect().await.expect("first connect");
    // The proxy refuses one login (an IAM hiccup) while STS is down: the credentials it
    // refused are still valid for an hour, so they must keep serving.
    stack.set_sts_fault(rds_proxy_emulator::StsFault::Refuse);
    stack.refuse_next_logins(1);
    for i in 0..5 {
        let client = connector
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect {i} after the refusal: {e}"));
        let one: i32 = client
            .query_one("SELECT 1::int4", &[])
            .await
            .expect("query")
            .get(0);
        assert_eq!(one, 1);
    }
    assert_eq!(stack.counters().logins_refused, 1);
    assert!(
        connector.credentials().failed_refresh_count() >= 1,
        "a refresh was tried (and failed: STS refuses)"
    );
    stack.clear_faults();
}

/// A TCP relay on 127.0.0.1 to `upstream` that holds each connection for `delay` before
/// connecting it: a slow network path.
async fn slow_relay(upstream: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_token_is_signed_when_the_login_needs_it_not_when_the_credentials_arrive() {
    let stack = stack().await;
    let ep = ro(&stack);
    let issue = |lifetime: Duration| {
        let expiry = time::OffsetDateTime::now_utc() + lifetime;
        let c = stack
            .issue_credentials(stack.role_arn(), "short-lived", expiry)
            .expect("issued");
        Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            Some(std::time::SystemTime::from(c.expiration)),
            "test",
        )
    };
    // Credentials with seconds left (about 7 s: the stand-in drops the fraction), then
    // hour-long ones. The network branch takes longer than the short ones live.
    let provider = Sequence::new(vec![
        issue(Duration::from_secs(8)),
        issue(Duration::from_secs(3600)),
    ]);
    let relay = slow_relay(ep.listen, Duration::from_millis(8500)).await;
    let connector = Config::new()
        .hostname(&ep.hostname)
        .port(ep.port)
        .user(stack.db_user())
        .database(stack.db_name())
        .connect_address(relay.to_string())
        .connect_timeout(Duration::from_secs(30))
        .ca_bundle(CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("stack CA"))
        .sdk_config(sdk_config(&stack, None).await)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(provider.clone()),
        )
        .connector()
        .await
        .expect("connector");
    let client = connector.connect().await.expect("connects");
    client.simple_query("SELECT 1").await.expect("query");
    assert_eq!(
        stack.counters().logins_refused,
        0,
        "the login was signed with credentials that were still valid at login"
    );
    assert_eq!(
        provider.calls(),
        2,
        "the short-lived credentials were replaced"
    );
}
