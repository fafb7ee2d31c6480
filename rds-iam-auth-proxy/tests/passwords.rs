//! Databases on passwords through the proxy: the local stack's password user
//! (`app_password_user`), whose password the proxy reads from its Secrets Manager secret
//! (with the database account's role) or from the SecureString copy in Parameter Store
//! (with its own credentials). Clients bring no password; the password follows a rotation
//! and never reaches the proxy's log or a client's error.

mod common;

use common::Proxy;
use rds_proxy_emulator::LocalStack;
use tokio_postgres::{Client, NoTls};

/// Every line, TRACE included: the password must not appear at any level.
const ALL_LOGS: (&str, &str) = ("RUST_LOG", "trace");

/// The variable the targets file names for the role's external ID.
const EXTERNAL_ID_VARIABLE: &str = "PASSWORD_TARGET_EXTERNAL_ID";

fn password_user(stack: &LocalStack) -> &str {
    stack
        .password_user()
        .expect("the stack seeds a password user")
}

/// A targets file for the password user behind the stack's application endpoint: target
/// `secret` reads the secret with the role, target `parameter` the SecureString copy with
/// the proxy's own credentials.
fn password_targets(stack: &LocalStack, dir: &std::path::Path) -> String {
    let ep = stack.app_endpoint();
    let parameter = format!(
        "{}/password",
        stack.parameter_path().expect("the stack seeds parameters")
    );
    let common = format!(
        "endpoint = \"{}\"\nport = {}\ndatabase = \"{}\"\nuser = \"{}\"\nconnect_address = \"{}\"\nca_bundle = \"{}\"\nconnect_timeout = \"5s\"\n",
        ep.hostname,
        ep.port,
        stack.db_name(),
        password_user(stack),
        ep.listen,
        stack.ca_path().display(),
    );
    let text = format!(
        "[[target]]\nname = \"secret\"\n{common}role_arn = \"{}\"\nexternal_id_env = \"{EXTERNAL_ID_VARIABLE}\"\nsecret_arn = \"{}\"\npassword_ttl = \"1h\"\n\n\
         [[target]]\nname = \"parameter\"\n{common}password_parameter = \"{parameter}\"\n",
        stack.role_arn(),
        stack.secret_arn().expect("the stack seeds a secret"),
    );
    let path = dir.join("targets.toml");
    std::fs::write(&path, text).expect("targets file");
    path.display().to_string()
}

/// A session through the proxy's listener on `port` as `user`, with no password.
async fn connect(
    stack: &LocalStack,
    port: u16,
    user: &str,
) -> Result<Client, tokio_postgres::Error> {
    let conninfo = format!(
        "host=127.0.0.1 port={port} user={user} dbname={} connect_timeout=20",
        stack.db_name()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn current_user(client: &Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query")
        .get(0)
}

/// The listener of the target named `name`, from its "listening on" line.
fn port_of(proxy: &Proxy, name: &str) -> u16 {
    let log = proxy.log_text();
    log.lines()
        .filter(|l| l.contains("listening on") && l.contains(&format!("target={name}")))
        .find_map(|l| {
            let address = l.split("listening on ").nth(1)?.split(' ').next()?;
            address.rsplit_once(':')?.1.parse().ok()
        })
        .unwrap_or_else(|| panic!("no listener for target {name}; log:\n{log}"))
}

/// Neither password appears in the log nor in `errors` (what clients were told).
fn assert_no_password(proxy: &Proxy, passwords: &[&str], errors: &[String]) {
    let log = proxy.log_text();
    for password in passwords {
        assert!(!password.is_empty());
        assert!(!log.contains(password), "a password in the proxy's log");
        for error in errors {
            assert!(!error.contains(password), "a password in a client's error");
        }
    }
}

#[tokio::test]
async fn a_targets_file_serves_a_secret_through_a_rotation_and_a_parameter() {
    let stack = common::stack().await;
    let dir = tempfile::tempdir().unwrap();
    let file = password_targets(&stack, dir.path());
    let proxy = Proxy::start(
        &stack,
        &["--config", &file, "--port", "0"],
        &[(EXTERNAL_ID_VARIABLE, stack.external_id()), ALL_LOGS],
    );
    let user = password_user(&stack);
    let (secret_port, parameter_port) = (port_of(&proxy, "secret"), port_of(&proxy, "parameter"));

    let held = connect(&stack, secret_port, user)
        .await
        .unwrap_or_else(|e| panic!("secret target: {e}\n{}", proxy.log_text()));
    assert_eq!(current_user(&held).await, user);
    let from_parameter = connect(&stack, parameter_port, user)
        .await
        .unwrap_or_else(|e| panic!("parameter target: {e}\n{}", proxy.log_text()));
    assert_eq!(current_user(&from_parameter).await, user);

    let before = stack.current_password().expect("password");
    assert!(stack.rotate_secret_now().await.expect("rotation") >= 1);
    let after = stack.current_password().expect("password");
    assert_ne!(before, after, "rotated");

    // The open session goes on (PostgreSQL checks passwords at login only); a new one
    // logs in with the new password: the proxy's cached one is refused, read again, and
    // the login retried, with nothing for the client to do.
    assert_eq!(current_user(&held).await, user);
    let fresh = connect(&stack, secret_port, user)
        .await
        .unwrap_or_else(|e| panic!("after the rotation: {e}\n{}", proxy.log_text()));
    assert_eq!(current_user(&fresh).await, user);
    assert_eq!(
        current_user(&from_parameter).await,
        user,
        "open: unaffected"
    );

    // The parameter is a copy the rotation did not update: a new login through it is
    // refused (after one re-read), and the client is told so as PostgreSQL would.
    let refused = connect(&stack, parameter_port, user)
        .await
        .expect_err("a stale copy of the password");
    let db_error = refused.as_db_error().expect("a PostgreSQL error");
    assert_eq!(db_error.code().code(), "28P01", "{refused}");

    // Every refusal here (the stale cache, then the stale copy) is explained as the stored
    // password's, at every level it is logged, never with IAM's hint.
    let log = proxy.log_text();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("28P01")).collect();
    assert!(refusals.len() >= 2, "{refusals:#?}");
    for line in &refusals {
        assert!(
            line.contains("the stored password") && !line.contains("rds-db:connect"),
            "{line}"
        );
    }

    assert_no_password(
        &proxy,
        &[&before, &after],
        &[refused.to_string(), format!("{refused:?}")],
    );
}

#[tokio::test]
async fn the_environment_serves_a_secret_with_db_secret_arn() {
    let stack = common::stack().await;
    let user = password_user(&stack);
    let arn = stack.secret_arn().expect("the stack seeds a secret");
    // The stack's environment (endpoint, role, external ID, CA) with the password user's
    // secret, and no user or database: the secret's `username` and `dbname` fill them
    // (blank is unset), and the listener serves that user.
    let proxy = Proxy::start(
        &stack,
        &["--port", "0"],
        &[
            ("DB_SECRET_ARN", &arn),
            ("DB_USERNAME", ""),
            ("DBNAME", ""),
            ALL_LOGS,
        ],
    );
    let client = connect(&stack, proxy.port(), user)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
    assert_eq!(current_user(&client).await, user);
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(database, stack.db_name());
    let password = stack.current_password().expect("password");
    assert_no_password(&proxy, &[&password], &[]);
}

/// At start-up the proxy reads a password target's secret as well as its credentials, so
/// that `/startup` vouches for it: a secret it cannot read holds the start-up back and the
/// log says why before any client comes, as bad credentials do.
#[tokio::test]
async fn start_up_reads_each_password_targets_secret() {
    let stack = common::stack().await;
    let dir = tempfile::tempdir().unwrap();
    let file = password_targets(&stack, dir.path());
    let env = [(EXTERNAL_ID_VARIABLE, stack.external_id())];
    let reads = stack.counters().get_secret_value_succeeded;
    let mut proxy = Proxy::spawn(&stack, &["--config", &file, "--port", "0"], &env);
    proxy.wait_for(
        "credentials fetched for every target",
        std::time::Duration::from_secs(30),
    );
    assert_eq!(
        stack.counters().get_secret_value_succeeded,
        reads + 1,
        "the secret was read once, with no client yet"
    );
    drop(proxy);

    // The same file naming a secret that does not exist.
    let arn = stack.secret_arn().expect("the stack seeds a secret");
    let missing = arn.replace("connectiontest/", "connectiontest/missing-");
    let text = std::fs::read_to_string(&file).expect("targets file");
    std::fs::write(&file, text.replace(&arn, &missing)).expect("targets file");
    let mut proxy = Proxy::spawn(&stack, &["--config", &file, "--port", "0"], &env);
    let line = proxy.wait_for("not fetched yet", std::time::Duration::from_secs(30));
    assert!(
        line.contains("target=secret") && line.contains("secret"),
        "{line}"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let log = proxy.log_text();
    assert!(
        !log.contains("credentials fetched for every target"),
        "started without the secret:\n{log}"
    );
    println!("{line}");
}
