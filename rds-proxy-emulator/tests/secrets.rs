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
