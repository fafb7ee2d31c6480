//! Knobs for testing long-running clients: credential and token lifetimes, STS and proxy
//! faults, and the counters tests read.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_sts::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sts::error::ProvideErrorMetadata;
use common::*;
use rds_proxy_emulator::{Counters, LocalStack, StackConfig, StsFault, TemporaryCredentials};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The application's STS client, without retries (so each call is one request).
fn sts_client(stack: &LocalStack) -> aws_sdk_sts::Client {
    let (akid, secret) = stack.app_credentials();
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(stack.region().to_string()))
        .endpoint_url(stack.sts_endpoint_url())
        .credentials_provider(Credentials::new(akid, secret, None, None, "test"))
        .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}

async fn assume(stack: &LocalStack, duration: i32) -> TemporaryCredentials {
    let out = sts_client(stack)
        .assume_role()
        .role_arn(stack.role_arn())
        .external_id(stack.external_id())
        .role_session_name("knobs")
        .duration_seconds(duration)
        .send()
        .await
        .expect("AssumeRole");
    let c = out.credentials().expect("credentials");
    TemporaryCredentials {
        access_key_id: c.access_key_id().into(),
        secret_access_key: c.secret_access_key().into(),
        session_token: c.session_token().into(),
        expiration: OffsetDateTime::from_unix_timestamp(c.expiration().secs()).expect("time"),
        role_arn: stack.role_arn().into(),
        assumed_role_arn: String::new(),
        assumed_role_id: String::new(),
    }
}

/// Polls until `f` holds (bounded), returning how long it took.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn credential_and_token_lifetimes() -> TestResult {
    let mut config = StackConfig::demo();
    config.sts.credentials_lifetime_seconds = Some(2);
    config.proxy.token_lifetime_seconds = 60;
    let stack = start(config).await;
    let ep = stack.app_endpoint().clone();

    // 900 s asked, 2 s issued.
    let before = now();
    let creds = assume(&stack, 900).await;
    let ttl = (creds.expiration - before).whole_seconds();
    assert!((1..=2).contains(&ttl), "credentials live {ttl} s");
    assert_eq!(
        stack.counters(),
        Counters {
            assume_role_calls: 1,
            assume_role_succeeded: 1,
            ..Counters::default()
        }
    );

    // Valid credentials: a token works. Then, keep signing fresh tokens with them: once
    // the credentials have expired the proxy refuses, as AWS does.
    connect(
        &stack,
        &ep,
        "app_user",
        &sign_token(&stack, &ep, "app_user", &creds, now()),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused_at = loop {
        assert!(Instant::now() < deadline, "still accepted 10 s later");
        let token = sign_token(&stack, &ep, "app_user", &creds, now());
        match connect(&stack, &ep, "app_user", &token).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                assert_eq!(refusal(&e), iam_failed("app_user"), "{e}");
                break now();
            }
        }
    };
    assert!(refused_at >= creds.expiration, "refused before expiry");
    let counters = stack.counters();
    assert!(counters.logins_accepted >= 1 && counters.logins_refused == 1);

    // Token lifetime 60 s: a token signed 61 s ago is refused although its X-Amz-Expires
    // (900) has not run out; one signed 50 s ago is accepted.
    let fresh = session(&stack, CONNECT_ROLE);
    let old = sign_token(
        &stack,
        &ep,
        "app_user",
        &fresh,
        now() - time::Duration::seconds(61),
    );
    let err = connect(&stack, &ep, "app_user", &old)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(refusal(&err), iam_failed("app_user"));
    let recent = sign_token(
        &stack,
        &ep,
        "app_user",
        &fresh,
        now() - time::Duration::seconds(50),
    );
    let client = connect(&stack, &ep, "app_user", &recent).await?;
    assert_eq!(client.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
    Ok(())
}

/// A raw, unsigned AssumeRole request (STS answers MissingAuthenticationToken when healthy).
async fn raw_assume_role(stack: &LocalStack) -> tokio::net::TcpStream {
    let addr = stack.sts_endpoint_url().replace("http://", "");
    let body = "Action=AssumeRole&Version=2011-06-15";
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("dial STS");
    s.write_all(request.as_bytes()).await.expect("send");
    s
}

#[tokio::test]
async fn sts_faults_hang_and_refuse() -> TestResult {
    let stack = demo().await;

    // Hang: the request is taken in (counted) and not answered until the fault clears.
    stack.set_sts_fault(StsFault::Hang);
    let mut held = raw_assume_role(&stack).await;
    eventually(Duration::from_secs(5), || {
        stack.counters().assume_role_calls == 1
    })
    .await;
    let mut first = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(500), held.read(&mut first)).await;
    assert!(waited.is_err(), "a hung STS answered: {waited:?}");
    // The SDK with a deadline gives up.
    let sdk = tokio::time::timeout(
        Duration::from_millis(500),
        sts_client(&stack)
            .assume_role()
            .role_arn(stack.role_arn())
            .external_id(stack.external_id())
            .role_session_name("hung")
            .send(),
    )
    .await;
    assert!(sdk.is_err(), "AssumeRole returned during a hang");
    assert_eq!(stack.counters().assume_role_calls, 2);
    assert_eq!(stack.counters().assume_role_succeeded, 0);
    stack.set_sts_fault(StsFault::None);
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), held.read_to_string(&mut answer)).await??;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("<Code>MissingAuthenticationToken</Code>"));

    // Refuse: 503 ServiceUnavailable, as the SDK sees it.
    stack.set_sts_fault(StsFault::Refuse);
    let e = sts_client(&stack)
        .assume_role()
        .role_arn(stack.role_arn())
        .external_id(stack.external_id())
        .role_session_name("refused")
        .send()
        .await
        .expect_err("refused");
    let status = e.raw_response().map(|r| r.status().as_u16());
    assert_eq!(status, Some(503));
    assert_eq!(e.code(), Some("ServiceUnavailable"));
    assert_eq!(e.message(), Some("Service is unable to handle request."));

    // Cleared: service as usual.
    stack.clear_faults();
    let creds = assume(&stack, 900).await;
    assert!(creds.access_key_id.starts_with("ASIA"));
    let c = stack.counters();
    // Received: the hung raw request, the SDK request cut off by its deadline, the
    // refused one, the last one. Succeeded: the last one, and the SDK request the client
    // gave up on if the server got to answer it after the fault was cleared (its client
    // had closed the connection; whether the server notices first is a race).
    assert_eq!(c.assume_role_calls, 4);
    assert!((1..=2).contains(&c.assume_role_succeeded), "{c:?}");
    Ok(())
}

#[tokio::test]
async fn proxy_stall_and_login_counters() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(&stack, &ep, "app_user", &creds, now());

    connect(&stack, &ep, "app_user", &token).await?;
    connect(&stack, &ep, "app_user", "not a token")
        .await
        .map(|_| ())
        .expect_err("refused");
    let c = stack.counters();
    assert_eq!((c.logins_accepted, c.logins_refused), (1, 1));

    // Stall: TCP is accepted, the SSLRequest is never answered.
    stack.set_proxy_stall(true);
    let mut tcp = tokio::net::TcpStream::connect(ep.listen).await?;
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut b = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut b)).await;
    assert!(waited.is_err(), "a stalled proxy answered: {waited:?}");
    // A client with a deadline gives up; nothing was counted as a login.
    let attempt = tokio::time::timeout(
        Duration::from_millis(500),
        connect(&stack, &ep, "app_user", &token),
    )
    .await;
    assert!(attempt.is_err(), "login completed through a stalled proxy");
    assert_eq!(stack.counters(), c);

    stack.set_proxy_stall(false);
    let client = connect(&stack, &ep, "app_user", &token).await?;
    assert_eq!(client.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
    assert_eq!(stack.counters().logins_accepted, 2);
    // The stalled connection is still held open, silent.
    drop(tcp);
    Ok(())
}
