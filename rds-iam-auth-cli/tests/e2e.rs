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

/// The CLI with the Lambda's variables of `stack` (changed by `changes`) and nothing else of
/// this process's environment but PATH.
fn cli_for(stack: &LocalStack, home: &std::path::Path, changes: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rds-iam-auth"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (key, value) in stack.env() {
        cmd.env(key, value);
    }
    for (key, value) in changes {
        cmd.env(key, value);
    }
    cmd
}

#[tokio::test]
async fn psql_runs_through_the_iam_path_on_the_read_only_endpoint() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = cli_for(&stack, home.path(), &[]);
    cmd.args([
        "psql",
        "--",
        "-X",
        "-A",
        "-t",
        "-c",
        "select 1, pg_is_in_recovery()",
    ]);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "1|t",
        "a reader, through the READ_ONLY endpoint"
    );
}

#[tokio::test]
async fn psql_with_a_wrong_external_id_fails_at_assume_role_like_check() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let wrong = [("EXTERNAL_ID", "not-the-external-id")];
    let mut cmd = cli_for(&stack, home.path(), &wrong);
    cmd.args(["psql", "--", "-c", "select 1"]);
    let psql = run(cmd).await;
    let mut cmd = cli_for(&stack, home.path(), &wrong);
    cmd.arg("check");
    let check = run(cmd).await;
    assert_eq!(psql.status.code(), Some(1));
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&psql.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("rds-iam-auth: error: "))
        .expect("one error line");
    assert!(line.starts_with("assume-role: "), "{line}");
    assert!(line.contains("AccessDenied"), "{line}");
    let (cause, hint) = line.split_once(" | hint: ").expect("cause and hint");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        report.contains(&format!("verdict: FAILED at {cause}")),
        "{report}"
    );
    assert!(report.contains(&format!("hint: {hint}")), "{report}");
}

#[tokio::test]
async fn psql_gets_the_token_through_its_environment_never_its_arguments() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    // A stand-in psql that records what it was given.
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    let record = home.path().join("record");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{0}.args'\nprintf '%s' \"$PGPASSWORD\" > '{0}.password'\n",
        record.display()
    );
    let fake = bin.join("psql");
    std::fs::write(&fake, script).expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = cli_for(&stack, home.path(), &[("PATH", path.as_str())]);
    cmd.args(["psql", "--", "-c", "select 1"]);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = std::fs::read_to_string(record.with_extension("args")).expect("args");
    let password = std::fs::read_to_string(record.with_extension("password")).expect("password");
    assert!(
        password.contains("X-Amz-Signature=") && password.contains("X-Amz-Security-Token="),
        "a token signed with the assumed role"
    );
    assert!(!args.contains("X-Amz"), "{args}");
    let ep = ro(&stack);
    let conninfo = args.lines().next().expect("conninfo first");
    assert!(
        conninfo.contains(&format!("host={} ", ep.hostname)),
        "{conninfo}"
    );
    assert!(
        conninfo.contains(&format!("hostaddr={} ", ep.listen.ip())),
        "{conninfo}"
    );
    assert!(
        conninfo.contains(&format!("port={} ", ep.listen.port())),
        "{conninfo}"
    );
    assert!(conninfo.contains("sslmode=verify-full"), "{conninfo}");
    assert_eq!(args.lines().skip(1).collect::<Vec<_>>(), ["-c", "select 1"]);
}
