//! The STS stand-in, driven by the real `aws-sdk-sts` client.

mod common;

use aws_sdk_sts::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sts::error::ProvideErrorMetadata;
use common::*;
use rds_proxy_emulator::LocalStack;

fn client(
    stack: &LocalStack,
    akid: &str,
    secret: &str,
    session_token: Option<String>,
) -> aws_sdk_sts::Client {
    let creds = Credentials::new(akid, secret, session_token, None, "test");
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(stack.sts_endpoint_url())
        .credentials_provider(creds)
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}

fn app_client(stack: &LocalStack) -> aws_sdk_sts::Client {
    let (akid, secret) = stack.app_credentials();
    client(stack, &akid, &secret, None)
}

/// `(HTTP status, code, message)` of an SDK service error.
fn sts_error<E: ProvideErrorMetadata + std::fmt::Debug>(
    e: aws_sdk_sts::error::SdkError<E, aws_sdk_sts::config::http::HttpResponse>,
) -> (u16, String, String) {
    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    let code = e.code().unwrap_or("").to_string();
    let message = e.message().unwrap_or("").to_string();
    (status, code, message)
}

#[tokio::test]
async fn assume_role_with_external_id_then_connect_through_the_proxy() -> TestResult {
    let stack = demo().await;
    let sts = app_client(&stack);
    let who = sts.get_caller_identity().send().await?;
    assert_eq!(
        who.arn(),
        Some("arn:aws:iam::111111111111:role/connectiontest-lambda-role")
    );
    assert_eq!(who.account(), Some("111111111111"));

    let before = time::OffsetDateTime::now_utc();
    let out = sts
        .assume_role()
        .role_arn(stack.role_arn())
        .role_session_name("connectiontest")
        .external_id(stack.external_id())
        .duration_seconds(900)
        .send()
        .await?;
    let creds = out.credentials().expect("credentials");
    assert!(creds.access_key_id().starts_with("ASIA"));
    let exp = time::OffsetDateTime::from_unix_timestamp(creds.expiration().secs())?;
    let ttl = (exp - before).whole_seconds();
    assert!((899..=901).contains(&ttl), "{ttl}");
    let user = out.assumed_role_user().expect("assumed role user");
    assert_eq!(
        user.arn(),
        "arn:aws:sts::222222222222:assumed-role/proxy-cross-account-rds-connect-role/connectiontest"
    );
    assert!(user.assumed_role_id().ends_with(":connectiontest"));

    // The session credentials work against STS itself (with their session token) ...
    let session_sts = client(
        &stack,
        creds.access_key_id(),
        creds.secret_access_key(),
        Some(creds.session_token().to_string()),
    );
    let who = session_sts.get_caller_identity().send().await?;
    assert_eq!(who.arn(), Some(user.arn()));
    assert_eq!(who.account(), Some("222222222222"));

    // ... and sign a token the proxy accepts.
    let issued = rds_proxy_emulator::TemporaryCredentials {
        access_key_id: creds.access_key_id().into(),
        secret_access_key: creds.secret_access_key().into(),
        session_token: creds.session_token().into(),
        expiration: exp,
        role_arn: stack.role_arn().into(),
        assumed_role_arn: user.arn().into(),
        assumed_role_id: user.assumed_role_id().into(),
    };
    let ep = stack.app_endpoint().clone();
    let token = sign_token(
        &stack,
        &ep,
        "app_user",
        &issued,
        time::OffsetDateTime::now_utc(),
    );
    let db = connect(&stack, &ep, "app_user", &token).await?;
    let n: i64 = db
        .query_one("SELECT count(*) FROM customers", &[])
        .await?
        .get(0);
    assert_eq!(n, 4);

    // Session credentials without their session token are unknown to STS.
    let no_token = client(
        &stack,
        creds.access_key_id(),
        creds.secret_access_key(),
        None,
    );
    let e = no_token.get_caller_identity().send().await.unwrap_err();
    assert_eq!(
        sts_error(e),
        (
            403,
            "InvalidClientTokenId".into(),
            "The security token included in the request is invalid.".into()
        )
    );
    Ok(())
}

fn denied(caller: &str, role: &str) -> (u16, String, String) {
    (
        403,
        "AccessDenied".into(),
        format!("User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role}"),
    )
}

const APP: &str = "arn:aws:iam::111111111111:role/connectiontest-lambda-role";

#[tokio::test]
async fn wrong_or_missing_external_id_is_access_denied() -> TestResult {
    let stack = demo().await;
    let sts = app_client(&stack);
    let e = sts
        .assume_role()
        .role_arn(stack.role_arn())
        .role_session_name("s1")
        .external_id("wrong-external-id")
        .send()
        .await
        .unwrap_err();
    assert_eq!(sts_error(e), denied(APP, stack.role_arn()));
    let e = sts
        .assume_role()
        .role_arn(stack.role_arn())
        .role_session_name("s1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(sts_error(e), denied(APP, stack.role_arn()));
    Ok(())
}

#[tokio::test]
async fn untrusted_caller_and_unknown_role_are_access_denied() -> TestResult {
    let stack = demo().await;
    let (akid, secret) = stack.principal_credentials(UNTRUSTED).expect("configured");
    let sts = client(&stack, &akid, &secret, None);
    let e = sts
        .assume_role()
        .role_arn(stack.role_arn())
        .role_session_name("s1")
        .external_id(stack.external_id())
        .send()
        .await
        .unwrap_err();
    assert_eq!(sts_error(e), denied(UNTRUSTED, stack.role_arn()));

    let missing = "arn:aws:iam::222222222222:role/does-not-exist";
    let e = app_client(&stack)
        .assume_role()
        .role_arn(missing)
        .role_session_name("s1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(sts_error(e), denied(APP, missing));
    Ok(())
}

#[tokio::test]
async fn bad_signature_and_unknown_key() -> TestResult {
    let stack = demo().await;
    let (akid, _) = stack.app_credentials();
    let e = client(&stack, &akid, "not-the-secret", None)
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    let (status, code, message) = sts_error(e);
    assert_eq!((status, code.as_str()), (403, "SignatureDoesNotMatch"));
    assert!(message.starts_with("The request signature we calculated does not match"));
    let e = client(&stack, "AKIANOTAKNOWNKEY0000", "x", None)
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        sts_error(e),
        (
            403,
            "InvalidClientTokenId".into(),
            "The security token included in the request is invalid.".into()
        )
    );
    Ok(())
}

#[tokio::test]
async fn short_durations_and_expired_sessions() -> TestResult {
    let mut config = rds_proxy_emulator::StackConfig::demo();
    config.sts.min_duration_seconds = 1;
    let stack = start(config).await;
    let sts = app_client(&stack);
    // Below the configured minimum.
    let e = sts
        .assume_role()
        .role_arn(stack.role_arn())
        .role_session_name("s1")
        .external_id(stack.external_id())
        .duration_seconds(0)
        .send()
        .await
        .unwrap_err();
    let (status, code, message) = sts_error(e);
    assert_eq!((status, code.as_str()), (400, "ValidationError"));
    assert!(message.contains("greater than or equal to 1"), "{message}");
    // Above the role's maximum.
    let e = sts
        .assume_role()
        .role_arn(stack.role_arn())
        .role_session_name("s1")
        .external_id(stack.external_id())
        .duration_seconds(3601)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        sts_error(e),
        (
            400,
            "ValidationError".into(),
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
                .into()
        )
    );
    // Two-second credentials: valid now, refused by STS and by the proxy once expired.
    let out = sts
        .assume_role()
        .role_arn(stack.role_arn())
        .role_session_name("short")
        .external_id(stack.external_id())
        .duration_seconds(2)
        .send()
        .await?;
    let c = out.credentials().expect("credentials");
    let session_sts = client(
        &stack,
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().into()),
    );
    session_sts.get_caller_identity().send().await?;
    let issued = rds_proxy_emulator::TemporaryCredentials {
        access_key_id: c.access_key_id().into(),
        secret_access_key: c.secret_access_key().into(),
        session_token: c.session_token().into(),
        expiration: time::OffsetDateTime::from_unix_timestamp(c.expiration().secs())?,
        role_arn: stack.role_arn().into(),
        assumed_role_arn: String::new(),
        assumed_role_id: String::new(),
    };
    let ep = stack.app_endpoint().clone();
    let token = sign_token(
        &stack,
        &ep,
        "app_user",
        &issued,
        time::OffsetDateTime::now_utc(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let e = session_sts.get_caller_identity().send().await.unwrap_err();
    let (status, code, message) = sts_error(e);
    assert_eq!(code, "ExpiredToken");
    assert_eq!(status, 400);
    assert_eq!(
        message,
        "The security token included in the request is expired"
    );
    // A token signed while the credentials were valid is refused once they expired.
    let err = connect(&stack, &ep, "app_user", &token)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(refusal(&err), iam_failed("app_user"));
    Ok(())
}

#[tokio::test]
async fn raw_query_protocol_errors() -> TestResult {
    let stack = demo().await;
    let url = stack.sts_endpoint_url();
    let addr = url.trim_start_matches("http://");
    // No Authorization header at all.
    let body = "Action=GetCallerIdentity&Version=2011-06-15";
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = http(addr, &request).await?;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(
        response.contains("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">")
    );
    assert!(response.contains("<Code>MissingAuthenticationToken</Code>"));
    // Unknown action.
    let body = "Action=GetSessionToken&Version=2011-06-15";
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = http(addr, &request).await?;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("<Code>InvalidAction</Code>"));
    Ok(())
}

/// Deliberately blocking I/O on the test's (current-thread) runtime: the stack runs on
/// its own runtime, so it still answers.
async fn http(addr: &str, request: &str) -> Result<String, std::io::Error> {
    http_sync(addr, request)
}

fn http_sync(addr: &str, request: &str) -> Result<String, std::io::Error> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A SigV4 header-signed form POST (the AWS SDK's SigV4 crate, with the
/// `x-amz-content-sha256` header the way S3-style signers send it): the request text with
/// `sent_body` in place of the `signed_body` the signature covers.
fn signed_post(addr: &str, akid: &str, secret: &str, signed_body: &str, sent_body: &str) -> String {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
    };
    let identity = aws_credential_types::Credentials::new(akid, secret, None, None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("sts")
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()
        .expect("signing params")
        .into();
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let headers = [("host", addr), ("content-type", content_type)];
    let signable = SignableRequest::new(
        "POST",
        format!("http://{addr}/"),
        headers.iter().copied(),
        SignableBody::Bytes(signed_body.as_bytes()),
    )
    .expect("signable request");
    let (instructions, _) = sign(signable, &params).expect("signing").into_parts();
    let mut request =
        format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n");
    for (name, value) in instructions.headers() {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{sent_body}",
        sent_body.len()
    ));
    request
}

/// The payload hash in the canonical request is the hash of the body received, never the
/// client's `x-amz-content-sha256` claim: a body changed after signing is refused.
#[tokio::test]
async fn a_body_altered_after_signing_is_refused() -> TestResult {
    let stack = demo().await;
    let url = stack.sts_endpoint_url();
    let addr = url.trim_start_matches("http://");
    let (akid, secret) = stack.app_credentials();
    let signed = "Action=GetCallerIdentity&Version=2011-06-15";

    // As signed: accepted (the signer and the header are fine).
    let response = http(addr, &signed_post(addr, &akid, &secret, signed, signed)).await?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("<Arn>arn:aws:iam::111111111111:role/connectiontest-lambda-role</Arn>")
    );

    // Another body under the same headers (x-amz-content-sha256 still claiming the
    // signed body's hash): an AssumeRole the caller never signed.
    let altered = format!(
        "Action=AssumeRole&Version=2011-06-15&RoleArn={}&RoleSessionName=forged&ExternalId={}",
        stack.role_arn().replace(':', "%3A").replace('/', "%2F"),
        stack.external_id()
    );
    let response = http(addr, &signed_post(addr, &akid, &secret, signed, &altered)).await?;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(
        response.contains("<Code>SignatureDoesNotMatch</Code>"),
        "{response}"
    );
    assert!(
        response.contains("The provided &apos;x-amz-content-sha256&apos; header does not match"),
        "{response}"
    );
    assert!(!response.contains("<Credentials>"), "{response}");
    assert_eq!(stack.counters().assume_role_succeeded, 0);
    Ok(())
}
