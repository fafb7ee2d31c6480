//! Password users at the RDS Proxy stand-in: SCRAM-SHA-256 logins checked against the
//! Secrets Manager secret's AWSCURRENT password, rotation, and the Secrets Manager fault.

mod common;

use common::{connect, demo, iam_failed, refusal, session, sign_token, TestResult, CONNECT_ROLE};
use time::OffsetDateTime;

fn password_failed(user: &str) -> (String, String) {
    (
        "28P01".into(),
        format!("password authentication failed for user \"{user}\""),
    )
}

#[tokio::test]
async fn a_password_user_logs_in_with_scram_and_the_secrets_password() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let user = stack.password_user().expect("the demo has a password user");
    let password = stack
        .current_password()
        .expect("its secret holds a password");
    let client = connect(&stack, &ep, user, &password).await?;
    let row = client
        .query_one("SELECT current_user::text, count(*) FROM customers", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), user);
    assert!(row.get::<_, i64>(1) > 0, "same read grants as app_user");

    let wrong = connect(&stack, &ep, user, "not-the-password")
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(refusal(&wrong), password_failed(user));

    // An IAM token is just a wrong password for a password user (RDS Proxy's IAMAuth
    // DISABLED), even one its role could use for an IAM user.
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(&stack, &ep, user, &creds, OffsetDateTime::now_utc());
    let e = connect(&stack, &ep, user, &token)
        .await
        .expect_err("an IAM token is refused");
    assert_eq!(refusal(&e), password_failed(user));

    // And the password user's password does not admit the IAM user.
    let e = connect(&stack, &ep, stack.db_user(), &password)
        .await
        .expect_err("a password for an IAM user is refused");
    assert_eq!(refusal(&e), iam_failed(stack.db_user()));
    let m = stack.metrics();
    assert_eq!(m.client_connections_setup_failed_auth, 3);
    Ok(())
}

/// `GetSecretValue` signed with `creds` (aws-sigv4, header signing as the SDKs do) over a
/// plain HTTP/1.1 connection: `(status, body)`.
async fn get_secret_value(
    stack: &rds_proxy_emulator::LocalStack,
    creds: &rds_proxy_emulator::TemporaryCredentials,
    secret_id: &str,
) -> std::io::Result<(u16, String)> {
    let keys = (
        creds.access_key_id.as_str(),
        creds.secret_access_key.as_str(),
        Some(creds.session_token.as_str()),
    );
    get_secret_value_with(stack, keys, secret_id).await
}

/// [`get_secret_value`] with any keys: `(access key id, secret key, session token)`.
async fn get_secret_value_with(
    stack: &rds_proxy_emulator::LocalStack,
    (access_key_id, secret_access_key, session_token): (&str, &str, Option<&str>),
    secret_id: &str,
) -> std::io::Result<(u16, String)> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = stack
        .secrets_endpoint_url()
        .trim_start_matches("http://")
        .to_string();
    let body = serde_json::json!({ "SecretId": secret_id }).to_string();
    let identity = aws_credential_types::Credentials::new(
        access_key_id,
        secret_access_key,
        session_token.map(str::to_string),
        None,
        "test",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(stack.region())
        .name("secretsmanager")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let headers = [
        ("host", addr.as_str()),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "secretsmanager.GetSecretValue"),
    ];
    let signable = SignableRequest::new(
        "POST",
        format!("http://{addr}/"),
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signing").into_parts();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/"));
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let mut request = request.body(()).expect("request");
    instructions.apply_to_request_http1x(&mut request);
    let mut raw = format!(
        "POST / HTTP/1.1\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in request.headers() {
        raw.push_str(&format!("{k}: {}\r\n", v.to_str().expect("ASCII header")));
    }
    raw.push_str("\r\n");
    raw.push_str(&body);
    let mut tcp = tokio::net::TcpStream::connect(&addr).await?;
    tcp.write_all(raw.as_bytes()).await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test]
async fn secrets_manager_faults_hang_and_refuse_get_secret_value() -> TestResult {
    use rds_proxy_emulator::ServiceFault;
    let stack = demo().await;
    let creds = session(&stack, CONNECT_ROLE);
    let arn = stack.secret_arn().expect("the demo's secret");
    let (status, body) = get_secret_value(&stack, &creds, &arn).await?;
    assert_eq!(status, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body)?;
    let secret: serde_json::Value =
        serde_json::from_str(value["SecretString"].as_str().unwrap_or("{}"))?;
    assert_eq!(
        secret["password"].as_str(),
        stack.current_password().as_deref()
    );

    stack.set_secrets_fault(ServiceFault::Refuse);
    let (status, body) = get_secret_value(&stack, &creds, &arn).await?;
    assert_eq!(status, 500);
    assert!(
        body.contains("\"__type\":\"InternalServiceError\""),
        "{body}"
    );

    stack.set_secrets_fault(ServiceFault::Hang);
    let hung = tokio::time::timeout(
        std::time::Duration::from_millis(700),
        get_secret_value(&stack, &creds, &arn),
    )
    .await;
    assert!(hung.is_err(), "a hung request is not answered");
    // Logins of the password user do not go through the service: they still work.
    let ep = stack.app_endpoint().clone();
    let user = stack.password_user().expect("password user").to_string();
    let password = stack.current_password().expect("password");
    connect(&stack, &ep, &user, &password).await?;
    stack.clear_faults();
    let (status, _) = get_secret_value(&stack, &creds, &arn).await?;
    assert_eq!(status, 200);
    let c = stack.counters();
    assert_eq!(
        (c.get_secret_value_calls, c.get_secret_value_succeeded),
        (4, 2)
    );
    Ok(())
}

#[tokio::test]
async fn rotation_moves_the_password_and_keeps_open_sessions() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let rw = stack
        .endpoint("READ_WRITE")
        .expect("a READ_WRITE endpoint")
        .clone();
    let user = stack.password_user().expect("password user").to_string();
    let old = stack.current_password().expect("password");
    let open = connect(&stack, &ep, &user, &old).await?;
    let open_rw = connect(&stack, &rw, &user, &old).await?;
    open_rw.batch_execute("BEGIN; SELECT 1").await?;

    assert_eq!(stack.rotate_secret_now().await?, 1);
    let new = stack.current_password().expect("password");
    assert_ne!(new, old);
    let secret = stack.secret_store();
    let name = "connectiontest/app_password_user";
    let previous = secret
        .read(
            name,
            rds_proxy_emulator::secrets::VersionSelector::Stage("AWSPREVIOUS"),
        )
        .expect("AWSPREVIOUS");
    assert_eq!(
        rds_proxy_emulator::secrets::password_of(&previous.value),
        Some(old.clone())
    );

    let e = connect(&stack, &ep, &user, &old)
        .await
        .expect_err("the old password no longer logs in");
    assert_eq!(refusal(&e), password_failed(&user));
    // New logins with the new password, including ones needing new database connections.
    let mut fresh = Vec::new();
    for _ in 0..3 {
        let c = connect(&stack, &ep, &user, &new).await?;
        c.batch_execute("BEGIN; SELECT 1").await?;
        fresh.push(c);
    }
    // Sessions opened before the rotation carry on, on their database connections.
    open.query_one("SELECT 1", &[]).await?;
    open_rw.batch_execute("COMMIT").await?;
    assert_eq!(stack.counters().secret_rotations, 1);
    Ok(())
}

#[tokio::test]
async fn the_aws_managed_key_cannot_be_used_from_another_account() -> TestResult {
    use rds_proxy_emulator::config::KmsKey;
    // The application principal (account 111111111111) is allowed by the resource policy,
    // so only the key decides.
    let mut config = rds_proxy_emulator::StackConfig::demo();
    let app = config.client.principal.clone();
    config.secrets.secrets[0].readers.push(app.clone());
    config.secrets.secrets[0].kms_key = KmsKey::AwsManaged;
    let stack = common::start(config).await;
    let (akid, key) = stack.app_credentials();
    let arn = stack.secret_arn().expect("the secret");
    let (status, body) = get_secret_value_with(&stack, (&akid, &key, None), &arn).await?;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)?,
        serde_json::json!({"__type": "AccessDeniedException", "message": "Access to KMS is not allowed"})
    );
    // The database account's own role is not affected by the key.
    let (status, _) = get_secret_value(&stack, &session(&stack, CONNECT_ROLE), &arn).await?;
    assert_eq!(status, 200);
    drop(stack);

    // With the customer managed key, the same cross-account read succeeds.
    let mut config = rds_proxy_emulator::StackConfig::demo();
    config.secrets.secrets[0].readers.push(app);
    let stack = common::start(config).await;
    let (akid, key) = stack.app_credentials();
    let arn = stack.secret_arn().expect("the secret");
    let (status, body) = get_secret_value_with(&stack, (&akid, &key, None), &arn).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}
