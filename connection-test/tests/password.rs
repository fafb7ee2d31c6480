//! The function on a password database, configured as deployed: its process environment
//! from the stack's `stack.env` and `secret.env` (endpoints of the STS, Secrets Manager and
//! Parameter Store stand-ins included), read by `Function::from_env`.
//!
//! One test function: it sets the process environment, which nextest gives each test
//! process of its own.

use connection_test::{Function, SUCCESS_RESPONSE};

mod common;
use common::stack;

fn set_env(pairs: &[(String, String)], without: &[&str]) {
    for (key, value) in pairs {
        if !without.contains(&key.as_str()) {
            std::env::set_var(key, value);
        }
    }
    for key in without {
        std::env::remove_var(key);
    }
}

#[tokio::test]
async fn secret_and_parameter_store_settings_and_their_failure_types() {
    let stack = stack().await;
    let mut env = stack.env();
    env.extend(stack.secret_env());

    // The secret (read with the assumed role), settings under CONFIG_PARAMETER_PATH.
    set_env(&env, &["DB_PASSWORD_PARAMETER"]);
    let f = Function::from_env().await;
    for _ in 0..2 {
        let answer = f.invoke().await.expect("success");
        assert_eq!(answer.get(), SUCCESS_RESPONSE);
    }
    let connector = f.connector().expect("configured");
    assert_eq!(
        connector.password_reads(),
        1,
        "read once, kept across invocations"
    );
    assert_eq!(connector.token_params().username(), "app_password_user");

    // A password parameter that does not exist: ParameterFailed, naming it.
    set_env(
        &[(
            "DB_PASSWORD_PARAMETER".to_owned(),
            "/connectiontest/db/nope".to_owned(),
        )],
        &["DB_SECRET_ARN", "CONFIG_PARAMETER_PATH"],
    );
    let f = Function::from_env().await;
    let failure = f.invoke().await.expect_err("fails");
    assert_eq!(failure.error_type, "ParameterFailed", "{failure:?}");
    assert!(
        failure.error_message.contains("/connectiontest/db/nope"),
        "{failure:?}"
    );

    // A wrong secret ARN: SecretFailed with its hint.
    let wrong = stack
        .secret_arn()
        .expect("secret")
        .replace("app_password_user", "nobody");
    set_env(
        &[("DB_SECRET_ARN".to_owned(), wrong)],
        &["DB_PASSWORD_PARAMETER", "CONFIG_PARAMETER_PATH"],
    );
    let failure = Function::from_env()
        .await
        .invoke()
        .await
        .expect_err("fails");
    assert_eq!(failure.error_type, "SecretFailed", "{failure:?}");
    assert!(
        failure.error_message.contains("ResourceNotFoundException"),
        "{failure:?}"
    );
    assert!(failure.error_message.contains("Hint: "), "{failure:?}");

    // Settings that cannot be read: every invocation reports ParameterFailed.
    set_env(
        &[(
            "CONFIG_PARAMETER_PATH".to_owned(),
            "/nothing/here".to_owned(),
        )],
        &["DB_PASSWORD_PARAMETER"],
    );
    let failure = Function::from_env()
        .await
        .invoke()
        .await
        .expect_err("fails");
    assert_eq!(failure.error_type, "ParameterFailed", "{failure:?}");
    assert!(
        failure.error_message.contains("/nothing/here"),
        "{failure:?}"
    );
}
