//! The `rds-iam-auth` binary against the local stack: its token works with psql, and
//! `check` reads the Lambda's variables.

use std::process::Command;

use rds_proxy_emulator::{Endpoint, LocalStack, StackConfig};

async fn stack() -> LocalStack {
    LocalStack::start(StackConfig::demo())
        .await
        .expect("local stack starts")
}

fn ro(stack: &LocalStack) -> &Endpoint {
    stack.endpoint("READ_ONLY").expect("READ_ONLY endpoint")
}

/// Runs a command on a blocking thread: never stall the runtime the stack's clients use.
async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("the command runs (psql: apt-get install postgresql-client)")
}

#[tokio::test]
async fn the_cli_token_works_with_psql() {
    let stack = stack().await;
    let ep = ro(&stack);
    let (akid, secret) = stack.app_credentials();
    let home = tempfile::tempdir().expect("tempdir");
    let mut cli = Command::new(env!("CARGO_BIN_EXE_rds-iam-auth"));
    cli.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", akid)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", stack.region())
        .env("AWS_ENDPOINT_URL_STS", stack.sts_endpoint_url())
        .args([
            "generate-db-auth-token",
            "--hostname",
            &ep.hostname,
            "--port",
            "5432",
        ])
        .args([
            "--username",
            stack.db_user(),
            "--role-arn",
            stack.role_arn(),
        ])
        .args(["--external-id", stack.external_id()]);
    let out = run(cli).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim_end()
        .to_owned();
    assert!(
        token.contains("X-Amz-Security-Token="),
        "signed with the assumed role"
    );

    let conninfo = format!(
        "host={} hostaddr={} port={} user={} dbname={} sslmode=verify-full sslrootcert={}",
        ep.hostname,
        ep.listen.ip(),
        ep.listen.port(),
        stack.db_user(),
        stack.db_name(),
        stack.ca_path().display()
    );
    let mut psql = Command::new("psql");
    psql.env("PGPASSWORD", &token)
        .env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT count(*) FROM customers",
            &conninfo,
        ]);
    let out = run(psql).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count");
    assert!(count >= 3, "{count}");
}

#[tokio::test]
async fn the_cli_check_reads_the_lambda_variables() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rds-iam-auth"));
    cmd.env_clear()
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (key, value) in stack.env() {
        cmd.env(key, value);
    }
    cmd.arg("check");
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stages: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        stages,
        [
            "credentials",
            "assume-role",
            "token",
            "dns",
            "tcp",
            "tls",
            "login",
            "query",
            "verdict:"
        ]
    );
}
