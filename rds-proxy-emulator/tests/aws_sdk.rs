//! The Secrets Manager and Parameter Store stand-ins driven by the clients the library
//! uses, `aws-sdk-secretsmanager` and `aws-sdk-ssm`, with credentials from `aws-sdk-sts`.

mod common;

use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_sdk_sts::config::{BehaviorVersion, Credentials, Region};
use common::{demo, TestResult};
use rds_proxy_emulator::{LocalStack, ServiceFault};

fn app_keys(stack: &LocalStack) -> Credentials {
    let (akid, secret) = stack.app_credentials();
    Credentials::new(akid, secret, None, None, "test")
}

/// The database account role's session credentials, from AssumeRole at the STS stand-in.
async fn role_keys(stack: &LocalStack) -> Credentials {
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(stack.region().to_string()))
            .endpoint_url(stack.sts_endpoint_url())
            .credentials_provider(app_keys(stack))
            .build(),
    );
    let c = sts
        .assume_role()
        .role_arn(stack.role_arn())
        .role_session_name("sdk-test")
        .external_id(stack.external_id())
        .send()
        .await
        .expect("AssumeRole")
        .credentials
        .expect("credentials");
    Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        Some(c.session_token),
        None,
        "assumed",
    )
}

fn secrets_client(stack: &LocalStack, creds: Credentials) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::from_conf(
        aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new(
                stack.region().to_string(),
            ))
            .endpoint_url(stack.secrets_endpoint_url())
            .credentials_provider(creds)
            .build(),
    )
}

fn ssm_client(stack: &LocalStack, creds: Credentials) -> aws_sdk_ssm::Client {
    aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new(stack.region().to_string()))
            .endpoint_url(stack.ssm_endpoint_url())
            .credentials_provider(creds)
            .build(),
    )
}

#[tokio::test]
async fn the_sdk_reads_the_secret_with_the_roles_credentials_only() -> TestResult {
    let stack = demo().await;
    let arn = stack.secret_arn().expect("secret");
    let sm = secrets_client(&stack, role_keys(&stack).await);
    let got = sm.get_secret_value().secret_id(&arn).send().await?;
    assert_eq!(got.arn(), Some(arn.as_str()));
    assert_eq!(got.name(), Some("connectiontest/app_password_user"));
    assert_eq!(got.version_stages(), ["AWSCURRENT"]);
    assert!(got.created_date().is_some() && got.version_id().is_some());
    let secret: serde_json::Value = serde_json::from_str(got.secret_string().unwrap_or("{}"))?;
    assert_eq!(
        secret["password"].as_str(),
        stack.current_password().as_deref()
    );
    assert_eq!(secret["username"], "app_password_user");

    let e = secrets_client(&stack, app_keys(&stack))
        .get_secret_value()
        .secret_id(&arn)
        .send()
        .await
        .expect_err("the application's own keys are refused");
    assert_eq!(e.code(), Some("AccessDeniedException"));
    let e = sm
        .get_secret_value()
        .secret_id("connectiontest/none")
        .send()
        .await
        .expect_err("unknown");
    assert!(e.into_service_error().is_resource_not_found_exception());
    Ok(())
}

#[tokio::test]
async fn the_sdk_pages_through_the_parameters() -> TestResult {
    let stack = demo().await;
    let path = stack.parameter_path().expect("path").to_string();
    let ssm = ssm_client(&stack, app_keys(&stack));
    let pages: Vec<_> = ssm
        .get_parameters_by_path()
        .path(&path)
        .with_decryption(true)
        .max_results(4)
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await?;
    assert_eq!(pages.len(), 3);
    let params: Vec<_> = pages.iter().flat_map(|p| p.parameters()).collect();
    assert_eq!(params.len(), 9);
    let password = params
        .iter()
        .find(|p| p.name() == Some(&format!("{path}/password")))
        .expect("the password parameter");
    assert_eq!(password.value(), stack.current_password().as_deref());
    assert_eq!(
        password.r#type(),
        Some(&aws_sdk_ssm::types::ParameterType::SecureString)
    );
    assert!(password.last_modified_date().is_some() && password.version() == 1);
    let e = ssm_client(&stack, role_keys(&stack).await)
        .get_parameter()
        .name(format!("{path}/user"))
        .send()
        .await
        .expect_err("the database account's role is refused");
    assert_eq!(e.code(), Some("AccessDeniedException"));
    Ok(())
}

#[tokio::test]
async fn the_sdk_retries_a_refusing_secrets_manager_and_times_out_on_a_hung_one() -> TestResult {
    let stack = demo().await;
    let arn = stack.secret_arn().expect("secret");
    let sm = secrets_client(&stack, role_keys(&stack).await);
    stack.set_secrets_fault(ServiceFault::Refuse);
    let e = sm
        .get_secret_value()
        .secret_id(&arn)
        .send()
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some("InternalServiceError"));
    // The SDK's standard retry mode: 3 attempts.
    assert_eq!(stack.counters().get_secret_value_calls, 3);

    stack.set_secrets_fault(ServiceFault::Hang);
    let hung = sm
        .get_secret_value()
        .secret_id(&arn)
        .customize()
        .config_override(
            aws_sdk_secretsmanager::Config::builder().timeout_config(
                aws_sdk_secretsmanager::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(std::time::Duration::from_millis(500))
                    .build(),
            ),
        )
        .send()
        .await;
    assert!(matches!(
        hung,
        Err(aws_sdk_secretsmanager::error::SdkError::TimeoutError(_))
    ));
    stack.clear_faults();
    sm.get_secret_value().secret_id(&arn).send().await?;
    // Three refused, one held until its client gave up, one answered. Whether the held one
    // is answered once the fault clears depends on whether the HTTP server noticed its
    // client leave first (then it drops the request), so only the new answer is counted.
    let c = stack.counters();
    assert_eq!(c.get_secret_value_calls, 5, "{c:?}");
    assert!((1..=2).contains(&c.get_secret_value_succeeded), "{c:?}");
    Ok(())
}

#[tokio::test]
async fn unknown_and_expired_keys_get_the_json_protocols_errors() -> TestResult {
    let stack = demo().await;
    let arn = stack.secret_arn().expect("secret");
    let unknown = Credentials::new("AKIAUNKNOWN000000000", "secret", None, None, "test");
    let e = secrets_client(&stack, unknown)
        .get_secret_value()
        .secret_id(&arn)
        .send()
        .await
        .expect_err("unknown key");
    assert_eq!(e.code(), Some("UnrecognizedClientException"));
    assert_eq!(
        e.message(),
        Some("The security token included in the request is invalid.")
    );
    let expired = stack.issue_credentials(
        stack.role_arn(),
        "expired",
        time::OffsetDateTime::now_utc() - time::Duration::minutes(1),
    )?;
    let creds = Credentials::new(
        expired.access_key_id.clone(),
        expired.secret_access_key.clone(),
        Some(expired.session_token.clone()),
        None,
        "expired",
    );
    let e = ssm_client(&stack, creds)
        .get_parameter()
        .name("/connectiontest/db/user")
        .send()
        .await
        .expect_err("expired credentials");
    assert_eq!(e.code(), Some("ExpiredTokenException"));
    let (akid, _) = stack.app_credentials();
    let wrong_secret = Credentials::new(akid, "not-the-secret", None, None, "test");
    let e = ssm_client(&stack, wrong_secret)
        .get_parameter()
        .name("/connectiontest/db/user")
        .send()
        .await
        .expect_err("bad signature");
    assert_eq!(e.code(), Some("InvalidSignatureException"));
    Ok(())
}
