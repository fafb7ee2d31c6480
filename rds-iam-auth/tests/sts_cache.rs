//! The credential cache against a local STS stub that counts AssumeRole calls.
//!
//! The stub speaks just enough HTTP/1.1 and STS Query protocol for `aws-sdk-sts`; it answers
//! with a configurable expiration, delay or refusal and records every request body.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use rds_iam_auth::{AssumeRole, Config, CredentialCache, Stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BASE_SECRET: &str = "base-secret-key-DO-NOT-PRINT";
const ISSUED_SECRET: &str = "issued-secret-key-DO-NOT-PRINT";
const ISSUED_TOKEN: &str = "issued-session-token-DO-NOT-PRINT";
const ROLE: &str = "arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role";

#[derive(Clone, Copy)]
enum Answer {
    /// Credentials valid for this long, after a delay.
    Issue { lifetime_secs: i64, delay_ms: u64 },
    /// HTTP 403 AccessDenied.
    Deny,
    /// Reads the request and never answers (a hung STS).
    Hang,
}

struct Stub {
    url: String,
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<String>>>,
    /// What the next requests get: tests switch it to start and end outages.
    answer: Arc<Mutex<Answer>>,
}

impl Stub {
    fn answer(&self, answer: Answer) {
        *self.answer.lock().expect("lock") = answer;
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn start_stub(answer: Answer) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let calls = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(Mutex::new(answer));
    let (c, b, a) = (calls.clone(), bodies.clone(), answer.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (c, b, a) = (c.clone(), b.clone(), a.clone());
            tokio::spawn(async move {
                // Keep-alive: serve requests on this socket until the client closes it.
                let mut buf = Vec::new();
                loop {
                    let Some(body) = read_request(&mut sock, &mut buf).await else {
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    b.lock().expect("lock").push(body);
                    let answer = *a.lock().expect("lock");
                    let (status, xml) = match answer {
                        Answer::Issue {
                            lifetime_secs,
                            delay_ms,
                        } => {
                            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                            ("200 OK", issue_xml(lifetime_secs))
                        }
                        Answer::Deny => ("403 Forbidden", deny_xml()),
                        Answer::Hang => {
                            std::future::pending::<()>().await;
                            unreachable!("a hung STS never answers")
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{xml}",
                        xml.len()
                    );
                    if sock.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Stub {
        url,
        calls,
        bodies,
        answer,
    }
}

/// Reads one request; returns its body.
async fn read_request(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            return Some(body);
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn issue_xml(lifetime_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let expiry = aws_smithy_types::DateTime::from_secs(now + lifetime_secs)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .expect("format");
    format!(
        r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAISSUEDKEY</AccessKeyId>
      <SecretAccessKey>{ISSUED_SECRET}</SecretAccessKey>
      <SessionToken>{ISSUED_TOKEN}</SessionToken>
      <Expiration>{expiry}</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::222222222222:assumed-role/proxy-cross-account-rds-connect-role/rds-iam-auth</Arn>
      <AssumedRoleId>AROAEXAMPLE:rds-iam-auth</AssumedRoleId>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
    )
}

fn deny_xml() -> String {
    format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>AccessDenied</Code>
  <Message>User: arn:aws:sts::111111111111:assumed-role/connectiontest-lambda-role/x is not authorized to perform: sts:AssumeRole on resource: {ROLE}</Message></Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
</ErrorResponse>"#
    )
}

async fn sdk_config(url: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::from_keys("AKIDBASE", BASE_SECRET, None))
        .load()
        .await
}

fn cache(sdk: &SdkConfig, external_id: &str) -> CredentialCache {
    let role = AssumeRole::new(ROLE)
        .and_then(|r| r.with_external_id(external_id))
        .and_then(|r| r.with_session_name("connection-test"))
        .expect("valid role settings");
    let base = sdk.credentials_provider().expect("provider");
    CredentialCache::new(base, Some(role), sdk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_cause_one_sts_call() {
    let stub = start_stub(Answer::Issue {
        lifetime_secs: 3600,
        delay_ms: 300,
    })
    .await;
    let sdk = sdk_config(&stub.url).await;
    let cache = Arc::new(cache(&sdk, "ext-123"));

    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.credentials().await })
        })
        .collect();
    for task in tasks {
        let creds = task.await.expect("join").expect("credentials");
        assert_eq!(creds.access_key_id(), "ASIAISSUEDKEY");
        assert_eq!(creds.session_token(), Some(ISSUED_TOKEN));
    }
    assert_eq!(
        stub.calls.load(Ordering::SeqCst),
        1,
        "32 callers, one STS call"
    );

    // Later callers are served from the cache too.
    for _ in 0..10 {
        cache.credentials().await.expect("cached");
    }
    assert_eq!(stub.calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.refresh_count(), 1);

    // The call carried the role, the external ID and the session name.
    let body = stub.bodies.lock().expect("lock")[0].clone();
    assert!(body.contains("Action=AssumeRole"), "{body}");
    assert!(body.contains("ExternalId=ext-123"), "{body}");
    assert!(body.contains("RoleSessionName=connection-test"), "{body}");
    assert!(body.contains("DurationSeconds=3600"), "{body}");
    assert!(
        body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A222222222222%3Arole%2Fproxy-cross-account-rds-connect-role"),
        "{body}"
    );
}

/// A clock `offset` seconds ahead of the system's: credentials age in an instant.
fn shifted_clock() -> (Arc<AtomicU64>, rds_iam_auth::credentials::Clock) {
    let offset = Arc::new(AtomicU64::new(0));
    let o = offset.clone();
    let clock = Arc::new(move || SystemTime::now() + Duration::from_secs(o.load(Ordering::SeqCst)));
    (offset, clock)
}

/// Polls `done` every 10 ms for up to `limit`.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    while !done() {
        if std::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test]
async fn near_expiry_the_cached_credentials_are_served_while_a_refresh_runs_behind() {
    let stub = start_stub(Answer::Issue {
        lifetime_secs: 3600,
        delay_ms: 500,
    })
    .await;
    let sdk = sdk_config(&stub.url).await;
    let (offset, clock) = shifted_clock();
    let cache = cache(&sdk, "ext-123").with_clock(clock);
    cache.credentials().await.expect("first");
    assert_eq!(stub.calls(), 1);

    // 15 minutes before expiry: inside the refresh margin, far from the hard margin.
    offset.store(3600 - 15 * 60, Ordering::SeqCst);
    for _ in 0..20 {
        let started = std::time::Instant::now();
        cache.credentials().await.expect("still valid");
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "served from the cache, not after the 500 ms STS call: {:?}",
            started.elapsed()
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || cache.refresh_count() == 2).await,
        "the background refresh ended"
    );
    assert_eq!(stub.calls(), 2, "one refresh for 20 callers");
}

#[tokio::test]
async fn a_hung_sts_delays_no_caller_while_credentials_are_valid() {
    let stub = start_stub(Answer::Issue {
        lifetime_secs: 3600,
        delay_ms: 0,
    })
    .await;
    let sdk = sdk_config(&stub.url).await;
    let (offset, clock) = shifted_clock();
    let cache = Arc::new(cache(&sdk, "ext-123").with_clock(clock));
    cache.credentials().await.expect("first");
    stub.answer(Answer::Hang);
    offset.store(3600 - 10 * 60, Ordering::SeqCst);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                cache.credentials().await.map(|_| started.elapsed())
            })
        })
        .collect();
    for task in tasks {
        let waited = task.await.expect("join").expect("cached credentials");
        assert!(waited < Duration::from_millis(200), "{waited:?}");
    }
    assert!(eventually(Duration::from_secs(2), || stub.calls() == 2).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stub.calls(), 2, "one refresh hangs; nobody starts another");
}

#[tokio::test]
async fn an_outage_costs_a_few_sts_calls_every_caller_shares_its_failure_and_recovery_is_quick() {
    let stub = start_stub(Answer::Deny).await;
    let sdk = sdk_config(&stub.url).await;
    let cache = Arc::new(cache(&sdk, "ext-123"));

    // 32 concurrent first callers: one STS call, one failure for all.
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.credentials().await })
        })
        .collect();
    for task in tasks {
        let err = task.await.expect("join").expect_err("denied");
        assert_eq!(err.stage(), Stage::AssumeRole);
        assert!(err.to_string().contains("AccessDenied"), "{err}");
        // The shared failure keeps its cause chain.
        assert!(std::error::Error::source(&err).is_some(), "{err}");
    }
    assert_eq!(stub.calls(), 1);

    // A caller every 10 ms for 3 s: attempts back off (1 s, then 2 s), not one per caller.
    let started = std::time::Instant::now();
    let mut callers = 0;
    while started.elapsed() < Duration::from_secs(3) {
        assert!(cache.credentials().await.is_err());
        callers += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = stub.calls();
    assert!(callers > 100, "{callers}");
    assert!(
        (2..=4).contains(&calls),
        "{calls} STS calls for {callers} callers"
    );
    assert!(cache.failed_refresh_count() as usize == calls);
    assert!(cache
        .refresh_error()
        .is_some_and(|e| e.contains("AccessDenied")));

    // STS answers again: callers succeed within the longest backoff.
    stub.answer(Answer::Issue {
        lifetime_secs: 3600,
        delay_ms: 0,
    });
    let back = std::time::Instant::now();
    while cache.credentials().await.is_err() {
        assert!(back.elapsed() < Duration::from_secs(10), "not recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        back.elapsed() <= Duration::from_secs(6),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(cache.refresh_error(), None);
}

#[tokio::test]
async fn a_caller_that_gives_up_does_not_cancel_the_refresh() {
    let stub = start_stub(Answer::Issue {
        lifetime_secs: 3600,
        delay_ms: 400,
    })
    .await;
    let sdk = sdk_config(&stub.url).await;
    let cache = cache(&sdk, "ext-123");
    let gave_up = tokio::time::timeout(Duration::from_millis(50), cache.credentials()).await;
    assert!(gave_up.is_err(), "the caller's deadline passed first");
    assert!(
        eventually(Duration::from_secs(3), || cache.refresh_count() == 1).await,
        "the refresh finished without its caller"
    );
    let started = std::time::Instant::now();
    cache.credentials().await.expect("cached");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(stub.calls(), 1, "the next caller did not start over");
}

#[tokio::test]
async fn expired_credentials_are_never_handed_out() {
    let stub = start_stub(Answer::Issue {
        lifetime_secs: -60,
        delay_ms: 0,
    })
    .await;
    let sdk = sdk_config(&stub.url).await;
    let cache = cache(&sdk, "ext-123");
    for _ in 0..2 {
        let err = cache.credentials().await.expect_err("expired on arrival");
        assert_eq!(err.stage(), Stage::AssumeRole);
        assert!(err.to_string().contains("expire in 0 s"), "{err}");
    }
    // Nothing was cached; the second caller got the shared failure (backing off).
    assert_eq!(stub.calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.refresh_count(), 0);
}

#[tokio::test]
async fn access_denied_names_the_stage_and_the_trust_policy() {
    let stub = start_stub(Answer::Deny).await;
    let sdk = sdk_config(&stub.url).await;
    let err = cache(&sdk, "wrong")
        .credentials()
        .await
        .expect_err("denied");
    assert_eq!(err.stage(), Stage::AssumeRole);
    assert_eq!(err.stage().failure_type(), "AssumeRoleFailed");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("assume-role: {ROLE}: AccessDenied: User: arn:aws:sts::111111111111:assumed-role/connectiontest-lambda-role/x is not authorized to perform: sts:AssumeRole on resource: {ROLE}")),
        "{text}"
    );
    assert!(text.contains("| hint: the role's trust policy must name the caller's role ARN, the external ID must match"), "{text}");
}

#[tokio::test]
async fn unreachable_sts_says_so() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let sdk = sdk_config(&format!("http://127.0.0.1:{port}")).await;
    let err = cache(&sdk, "x").credentials().await.expect_err("refused");
    assert_eq!(err.stage(), Stage::AssumeRole);
    assert!(err.to_string().contains("STS unreachable"), "{err}");
    assert!(err.to_string().contains("STS VPC endpoint"), "{err}");
}

#[tokio::test]
async fn secrets_never_show_in_debug_display_or_errors() {
    let stub = start_stub(Answer::Issue {
        lifetime_secs: 3600,
        delay_ms: 0,
    })
    .await;
    let sdk = sdk_config(&stub.url).await;
    let config = Config::new()
        .hostname("app.endpoint.proxy-abc.us-east-1.rds.amazonaws.com")
        .user("app_reader")
        .assume_role(ROLE)
        .external_id("shared-external-id-DO-NOT-PRINT")
        .sdk_config(sdk)
        // Nothing listens on port 9 of loopback: the check fails at TCP, after signing.
        .connect_address("127.0.0.1:9");
    let config_debug = format!("{config:?}");
    let connector = config.connector().await.expect("connector");
    let token = connector.token().await.expect("token");
    assert!(token
        .as_str()
        .contains("X-Amz-Security-Token=issued-session-token-DO-NOT-PRINT"));
    let report = connector.check().await;
    assert_eq!(report.error.as_ref().map(|e| e.stage()), Some(Stage::Tcp));

    let texts = [
        config_debug,
        format!("{connector:?}"),
        format!("{token:?}"),
        format!("{report}"),
        format!("{report:?}"),
        format!(
            "{:?}",
            connector.credentials().credentials().await.expect("cached")
        ),
    ];
    for text in &texts {
        for secret in [
            BASE_SECRET,
            ISSUED_SECRET,
            ISSUED_TOKEN,
            "shared-external-id-DO-NOT-PRINT",
            token.as_str(),
        ] {
            assert!(!text.contains(secret), "{secret} leaked in: {text}");
        }
    }
    // The report shows the stages that ran, in order.
    let stages: Vec<_> = report.stages.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::Credentials,
            Stage::AssumeRole,
            Stage::Token,
            Stage::Dns,
            Stage::Tcp
        ]
    );
}

#[tokio::test]
async fn no_base_credentials_fail_at_the_credentials_stage() {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .no_credentials()
        .load()
        .await;
    let provider = SharedCredentialsProvider::new(EmptyProvider);
    let err = CredentialCache::new(provider, None, &sdk)
        .credentials()
        .await
        .expect_err("no credentials");
    assert_eq!(err.stage(), Stage::Credentials);
    assert!(
        err.to_string().contains("hint: no AWS credentials found"),
        "{err}"
    );
}

#[derive(Debug)]
struct EmptyProvider;

impl aws_credential_types::provider::ProvideCredentials for EmptyProvider {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no credentials in this test",
            ),
        ))
    }
}

/// A provider whose first call does `first` and whose later calls give valid credentials.
#[derive(Debug)]
struct FirstCall {
    first: FirstCallDoes,
    calls: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
enum FirstCallDoes {
    Panic,
    Hang,
}

impl aws_credential_types::provider::ProvideCredentials for FirstCall {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let does = self.first;
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            if first {
                match does {
                    FirstCallDoes::Panic => panic!("credentials provider bug (on purpose)"),
                    FirstCallDoes::Hang => std::future::pending::<()>().await,
                }
            }
            Ok(Credentials::new(
                "ASIAGOODAFTER",
                "good-secret",
                Some("good-token".to_owned()),
                Some(SystemTime::now() + Duration::from_secs(3600)),
                "test",
            ))
        })
    }
}

fn cache_over(first: FirstCallDoes) -> Arc<CredentialCache> {
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .build();
    let provider = SharedCredentialsProvider::new(FirstCall {
        first,
        calls: AtomicUsize::new(0),
    });
    Arc::new(CredentialCache::new(provider, None, &sdk))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_provider_fails_the_refresh_wakes_every_waiter_and_the_next_one_recovers() {
    let cache = cache_over(FirstCallDoes::Panic);
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(5), cache.credentials()).await
            })
        })
        .collect();
    for waiter in waiters {
        let err = waiter
            .await
            .expect("join")
            .expect("woken, not left waiting")
            .expect_err("the refresh failed");
        assert_eq!(err.stage(), Stage::Credentials);
        assert!(err.to_string().contains("panicked"), "{err}");
    }
    assert_eq!(cache.failed_refresh_count(), 1);
    // After the backoff (at most 1 s), the next caller refreshes again and gets credentials.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let creds = tokio::time::timeout(Duration::from_secs(5), cache.credentials())
        .await
        .expect("not stuck")
        .expect("recovered");
    assert_eq!(creds.access_key_id(), "ASIAGOODAFTER");
}

#[test]
fn a_refresh_cut_off_by_its_runtime_shutting_down_is_started_again_from_another_runtime() {
    let cache = cache_over(FirstCallDoes::Hang);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    // The first runtime starts the refresh (its provider call hangs), gives up waiting,
    // and shuts down with the refresh task in flight, as a #[tokio::test] does at its end.
    let first = runtime();
    first.block_on(async {
        let gave_up = tokio::time::timeout(Duration::from_millis(200), cache.credentials()).await;
        assert!(gave_up.is_err(), "the first fetch hangs");
    });
    drop(first);
    // Another runtime uses the same cache: it must not wait forever for the dead task.
    let second = runtime();
    let creds = second
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), cache.credentials()).await })
        .expect("not stuck on the refresh of a runtime that is gone")
        .expect("credentials");
    assert_eq!(creds.access_key_id(), "ASIAGOODAFTER");
}
