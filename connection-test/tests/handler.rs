//! The handler against the local stack: the exact success answer, and the errorType of
//! each failure stage, with settings read the way the function reads its environment.

use std::collections::HashMap;

use connection_test::{config_from_lookup, Function};
use rds_proxy_emulator::LocalStack;

mod common;
use common::{function, stack};

async fn failure_type(stack: &LocalStack, changes: &[(&str, Option<&str>)]) -> (String, String) {
    let f = function(stack, changes).await;
    let failure = f.invoke().await.expect_err("the invocation fails");
    let secret = stack.app_credentials().1;
    assert!(
        !failure.error_message.contains(&secret),
        "{}",
        failure.error_message
    );
    assert!(
        !failure.error_message.contains("X-Amz-Signature"),
        "{}",
        failure.error_message
    );
    (failure.error_type, failure.error_message)
}

#[tokio::test]
async fn success_is_the_exact_contract_and_credentials_stay_warm() {
    let stack = stack().await;
    let f = function(&stack, &[]).await;
    for _ in 0..3 {
        let answer = f.invoke().await.expect("success");
        // The reference sample's bytes, written out: a change to the constant must fail here.
        assert_eq!(
            answer.get(),
            r#"{"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "Database connection was successful!"}"#
        );
    }
    let connector = f.connector().expect("configured");
    assert_eq!(
        connector.credentials().refresh_count(),
        1,
        "one AssumeRole for three invocations"
    );
    // Every invocation closed its connection (the proxy sees the close a moment later).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stack.proxy_client_connections() != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(stack.proxy_client_connections(), 0);
}

#[tokio::test]
async fn wrong_external_id_is_assume_role_failed() {
    let stack = stack().await;
    let (kind, message) = failure_type(&stack, &[("EXTERNAL_ID", Some("wrong-id"))]).await;
    assert_eq!(kind, "AssumeRoleFailed");
    assert!(message.contains("AccessDenied"), "{message}");
    assert!(
        message.contains("Hint: the role's trust policy must name the caller's role ARN"),
        "{message}"
    );
}

#[tokio::test]
async fn proxy_down_is_tcp_connect_failed() {
    let stack = stack().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (kind, message) = failure_type(&stack, &[("DB_CONNECT_HOST", Some(&addr))]).await;
    assert_eq!(kind, "TcpConnectFailed");
    assert!(message.contains("Hint: check security groups"), "{message}");
}

#[tokio::test]
async fn unknown_ca_is_tls_failed() {
    let stack = stack().await;
    let (kind, message) = failure_type(&stack, &[("DB_CA_BUNDLE", None)]).await;
    assert_eq!(kind, "TlsFailed");
    assert!(message.contains("UnknownIssuer"), "{message}");
}

#[tokio::test]
async fn role_without_rds_db_connect_is_authentication_failed() {
    let stack = stack().await;
    let (kind, message) = failure_type(
        &stack,
        &[(
            "DATABASE_ACCOUNT_IAM_ROLE",
            Some("arn:aws:iam::222222222222:role/proxy-no-connect-role"),
        )],
    )
    .await;
    assert_eq!(kind, "AuthenticationFailed");
    assert!(
        message.contains("The IAM authentication failed for the role app_user."),
        "{message}"
    );
    assert!(message.contains("Hint: check rds-db:connect"), "{message}");
}

#[tokio::test]
async fn missing_variable_is_configuration_error() {
    let stack = stack().await;
    let env: HashMap<String, String> = stack
        .env()
        .into_iter()
        .filter(|(k, _)| k != "RDS_PROXY_APPLICATION_ENDPOINT")
        .collect();
    let f = Function::new(config_from_lookup(|k| env.get(k).cloned())).await;
    let failure = f.invoke().await.expect_err("config");
    assert_eq!(failure.error_type, "ConfigurationError");
    assert!(failure
        .error_message
        .starts_with("environment variable RDS_PROXY_APPLICATION_ENDPOINT is not set"));
}

#[tokio::test]
async fn a_stalled_proxy_is_a_stage_error_before_the_invocation_deadline() {
    let stack = stack().await;
    // Accepts TCP and never says a word: TLS waits forever for the server's answer.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = stalled.local_addr().expect("addr").to_string();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = stalled.accept().await {
            sockets.push(socket);
        }
    });
    // A 30 s connect timeout: only the invocation's deadline can end the wait in time.
    let f = function(
        &stack,
        &[
            ("DB_CONNECT_HOST", Some(&addr)),
            ("DB_CONNECT_TIMEOUT_SECONDS", Some("30")),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(3);
    let failure = f.invoke_before(deadline).await.expect_err("stalled");
    let took = started.elapsed();
    held.abort();
    assert_eq!(failure.error_type, "TlsFailed", "{}", failure.error_message);
    assert!(
        failure.error_message.starts_with("tls: timed out after 2."),
        "{}",
        failure.error_message
    );
    assert!(
        took < std::time::Duration::from_secs(3),
        "answered before the deadline: {took:?}"
    );
}

#[tokio::test]
async fn a_deadline_that_leaves_no_time_falls_back_to_the_connect_timeout() {
    let stack = stack().await;
    let f = function(&stack, &[]).await;
    // As some local runtimes send: zero, or a time already past.
    for deadline in [
        std::time::SystemTime::UNIX_EPOCH,
        std::time::SystemTime::now() - std::time::Duration::from_secs(1),
    ] {
        f.invoke_before(deadline).await.expect("the check ran");
    }
}
