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
    // The external ID from a file: never on a command line, where `ps` shows it.
    let id_file = home.path().join("external-id");
    std::fs::write(&id_file, format!("{}\n", stack.external_id())).expect("id file");
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
        .args(["--external-id-file"])
        .arg(&id_file);
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

/// The CLI running `generate-db-auth-token` for the stack's role, with `args` added.
fn generate_for(
    stack: &LocalStack,
    home: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Command {
    let mut cmd = cli_for(stack, home, env);
    let ep = ro(stack);
    cmd.env_remove("EXTERNAL_ID")
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
        .args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

#[tokio::test]
async fn generate_reads_the_external_id_from_the_environment_or_a_file() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let ok = run(generate_for(
        &stack,
        home.path(),
        &[("EXTERNAL_ID", stack.external_id())],
        &[],
    ))
    .await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The variable is really what is sent: a wrong one is refused by STS.
    let wrong = run(generate_for(
        &stack,
        home.path(),
        &[("EXTERNAL_ID", "not-the-external-id")],
        &[],
    ))
    .await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("AccessDenied"));
    // A file that cannot be read is bad input, naming the flag and the file.
    let missing = home.path().join("no-such-file");
    let missing = missing.to_str().expect("utf-8");
    let out = run(generate_for(
        &stack,
        home.path(),
        &[],
        &["--external-id-file", missing],
    ))
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--external-id-file") && stderr.contains("no-such-file"),
        "{stderr}"
    );
    // The flag and the file together are refused by clap.
    let both = run(generate_for(
        &stack,
        home.path(),
        &[],
        &["--external-id", "x", "--external-id-file", missing],
    ))
    .await;
    assert_eq!(both.status.code(), Some(2));
}

/// A stand-in psql (a shell script first on PATH) that records its arguments, its
/// environment, its password file and that file's mode, and what a program it starts sees.
fn fake_psql(home: &std::path::Path) -> (String, std::path::PathBuf) {
    let bin = home.join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    let record = home.join("record");
    let script = format!(
        "#!/bin/sh\n\
         printf '%s\\n' \"$@\" > '{0}.args'\n\
         env > '{0}.env'\n\
         stat -c %a \"$PGPASSFILE\" > '{0}.mode'\n\
         cat \"$PGPASSFILE\" > '{0}.passfile'\n\
         sleep 0.5\n\
         test -e \"$PGPASSFILE\" && echo present > '{0}.after' || echo gone > '{0}.after'\n\
         sh -c 'env' > '{0}.child-env'\n",
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
    (path, record)
}

#[tokio::test]
async fn psql_gets_the_token_through_a_private_password_file_read_once_never_its_environment_or_arguments(
) {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let (path, record) = fake_psql(home.path());
    let mut cmd = cli_for(
        &stack,
        home.path(),
        &[("PATH", path.as_str()), ("PGPASSWORD", "stale")],
    );
    cmd.args(["psql", "--", "-c", "select 1"]);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |ext: &str| std::fs::read_to_string(record.with_extension(ext)).expect(ext);
    let passfile = read("passfile");
    assert!(passfile.starts_with("*:*:*:*:"), "{passfile}");
    assert!(
        passfile.contains("X-Amz-Signature=") && passfile.contains("X-Amz-Security-Token="),
        "a token signed with the assumed role"
    );
    assert!(
        passfile.contains("\\:"),
        "the port's colon is escaped: {passfile}"
    );
    assert_eq!(read("mode").trim(), "600");
    assert_eq!(read("after").trim(), "gone", "removed once read");
    for (what, text) in [
        ("args", read("args")),
        ("env", read("env")),
        ("child-env", read("child-env")),
    ] {
        assert!(!text.contains("X-Amz"), "token in psql's {what}: {text}");
        assert!(!text.contains("PGPASSWORD="), "PGPASSWORD in psql's {what}");
    }
    let ep = ro(&stack);
    let conninfo = read("args")
        .lines()
        .next()
        .expect("conninfo first")
        .to_owned();
    assert!(
        conninfo.contains(&format!("host='{}' ", ep.hostname)),
        "{conninfo}"
    );
    assert!(
        conninfo.contains(&format!("hostaddr='{}' ", ep.listen.ip())),
        "{conninfo}"
    );
    assert!(
        conninfo.contains(&format!("port='{}' ", ep.listen.port())),
        "{conninfo}"
    );
    assert!(conninfo.contains("sslmode='verify-full'"), "{conninfo}");
    assert_eq!(
        read("args").lines().skip(1).collect::<Vec<_>>(),
        ["-c", "select 1"]
    );
    // Nothing is left behind in the temporary directory.
    let passfile_path = read("env")
        .lines()
        .find_map(|l| l.strip_prefix("PGPASSFILE=").map(str::to_owned))
        .expect("PGPASSFILE set");
    let dir = std::path::Path::new(&passfile_path)
        .parent()
        .expect("dir")
        .to_owned();
    assert!(!dir.exists(), "{} removed", dir.display());
}

#[tokio::test]
async fn a_program_psql_starts_does_not_get_the_token() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = cli_for(&stack, home.path(), &[]);
    cmd.args(["psql", "--", "-X", "-A", "-t", "-c", "\\! env"]);
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PGPASSFILE="), "the shell ran: {stdout}");
    assert!(!stdout.contains("X-Amz"), "{stdout}");
    assert!(!stdout.contains("PGPASSWORD="), "{stdout}");
}

#[tokio::test]
async fn a_tab_in_a_database_name_or_ca_path_cannot_turn_off_tls() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    // A database name that, unquoted, would add `sslmode=disable` after verify-full. Quoted,
    // it is one (non-existent) database name, asked for over verified TLS.
    let mut cmd = cli_for(
        &stack,
        home.path(),
        &[("DBNAME", "example_db\tsslmode=disable")],
    );
    cmd.args(["psql", "--", "-X", "-c", "select 1"]);
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("requires TLS"),
        "TLS was turned off: {stderr}"
    );
    assert!(stderr.contains("does not exist"), "{stderr}");

    // A CA path ending in `<TAB>sslmode=disable`: quoted, it is the file's name.
    let ca = home.path().join("ca.pem\tsslmode=disable");
    std::fs::copy(stack.ca_path(), &ca).expect("copy CA");
    let ca = ca.to_str().expect("utf-8");
    let mut cmd = cli_for(&stack, home.path(), &[("DB_CA_BUNDLE", ca)]);
    cmd.args(["psql", "--", "-X", "-A", "-t", "-c", "select 1"]);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

/// A targets file for the stack's read-only endpoint with one target per (name, variable
/// holding its external ID), each with `timeout` as its connect timeout.
fn targets_file_with(
    stack: &LocalStack,
    dir: &std::path::Path,
    targets: &[(&str, &str)],
    timeout: &str,
) -> std::path::PathBuf {
    let ep = ro(stack);
    let target = |(name, variable): &(&str, &str)| {
        format!(
            "[[target]]\n\
             name = \"{name}\"\n\
             endpoint = \"{}\"\n\
             port = {}\n\
             database = \"{}\"\n\
             user = \"{}\"\n\
             role_arn = \"{}\"\n\
             external_id_env = \"{variable}\"\n\
             connect_address = \"{}\"\n\
             connect_timeout = \"{timeout}\"\n\n",
            ep.hostname,
            ep.port,
            stack.db_name(),
            stack.db_user(),
            stack.role_arn(),
            ep.listen,
        )
    };
    let text = format!(
        "[defaults]\nca_bundle = \"{}\"\n\n{}",
        stack.ca_path().display(),
        targets.iter().map(target).collect::<String>(),
    );
    let path = dir.join("targets.toml");
    std::fs::write(&path, text).expect("targets file");
    path
}

/// `good` reads the right external ID from GOOD_EXTERNAL_ID, `broken` a wrong one from
/// WRONG_EXTERNAL_ID.
fn targets_file(stack: &LocalStack, dir: &std::path::Path) -> std::path::PathBuf {
    let targets = [
        ("good", "GOOD_EXTERNAL_ID"),
        ("broken", "WRONG_EXTERNAL_ID"),
    ];
    targets_file_with(stack, dir, &targets, "20s")
}

/// The CLI with the application's credentials and the STS stand-in, the two external IDs,
/// and nothing else of this process's environment but PATH.
fn cli_for_targets(stack: &LocalStack, home: &std::path::Path) -> Command {
    let (akid, secret) = stack.app_credentials();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rds-iam-auth"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", akid)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", stack.region())
        .env("AWS_ENDPOINT_URL_STS", stack.sts_endpoint_url())
        .env("GOOD_EXTERNAL_ID", stack.external_id())
        .env("WRONG_EXTERNAL_ID", "not-the-external-id");
    cmd
}

/// The targets file's password keys reach the check: the password user's secret (read
/// with the role) and its SecureString copy (read with the application's own keys).
#[tokio::test]
async fn check_config_checks_password_targets() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let ep = ro(&stack);
    let user = stack
        .password_user()
        .expect("the stack seeds a password user");
    let common = format!(
        "endpoint = \"{}\"\nport = {}\ndatabase = \"{}\"\nuser = \"{user}\"\nconnect_address = \"{}\"\nca_bundle = \"{}\"\n",
        ep.hostname,
        ep.port,
        stack.db_name(),
        ep.listen,
        stack.ca_path().display(),
    );
    let text = format!(
        "[[target]]\nname = \"secret\"\n{common}role_arn = \"{}\"\nexternal_id_env = \"GOOD_EXTERNAL_ID\"\nsecret_arn = \"{}\"\n\n\
         [[target]]\nname = \"parameter\"\n{common}password_parameter = \"{}/password\"\npassword_ttl = \"5m\"\n",
        stack.role_arn(),
        stack.secret_arn().expect("the stack seeds a secret"),
        stack.parameter_path().expect("the stack seeds parameters"),
    );
    let file = home.path().join("targets.toml");
    std::fs::write(&file, text).expect("targets file");

    let mut cmd = cli_for_targets(&stack, home.path());
    cmd.env(
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        stack.secrets_endpoint_url(),
    )
    .env("AWS_ENDPOINT_URL_SSM", stack.ssm_endpoint_url())
    .args(["check", "--json", "--config"])
    .arg(&file);
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let stages = |i: usize| -> Vec<String> {
        all[i]["report"]["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|s| s["name"].as_str().expect("a name").to_owned())
            .collect()
    };
    assert_eq!(all[0]["name"], "secret");
    assert_eq!(all[0]["ok"], true, "{stdout}");
    assert_eq!(
        stages(0),
        [
            "credentials",
            "assume-role",
            "secret",
            "dns",
            "tcp",
            "tls",
            "login",
            "query"
        ],
        "{stdout}"
    );
    assert_eq!(all[1]["name"], "parameter");
    assert_eq!(all[1]["ok"], true, "{stdout}");
    assert_eq!(
        stages(1),
        ["secret", "dns", "tcp", "tls", "login", "query"],
        "no role, no token: {stdout}"
    );
    let password = stack.current_password().expect("password");
    assert!(
        !stdout.contains(&password) && !stderr.contains(&password),
        "the password stays out of the report"
    );
}

#[tokio::test]
async fn check_config_reports_every_target_and_fails_when_one_does() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let file = targets_file(&stack, home.path());

    let mut cmd = cli_for_targets(&stack, home.path());
    cmd.arg("check").arg("--config").arg(&file);
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    println!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let account = stack
        .role_arn()
        .split(':')
        .nth(4)
        .expect("account in the ARN");
    let words = |line: &str| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let good = words(lines[0]);
    assert_eq!(good[0], "good", "{stdout}");
    assert_eq!(good[1], account, "{stdout}");
    assert_eq!(good[3], "query", "the last stage passed: {stdout}");
    assert_eq!(good.last().map(String::as_str), Some("ok"), "{stdout}");
    let broken = words(lines[1]);
    assert_eq!(broken[0], "broken", "{stdout}");
    assert_eq!(broken[1], account, "{stdout}");
    assert_eq!(broken[3], "assume-role", "the failing stage: {stdout}");
    assert!(
        lines[1].contains("FAILED: assume-role: ") && lines[1].contains("AccessDenied"),
        "{stdout}"
    );
    // Columns line up: the verdicts start at the same place.
    assert_eq!(lines[0].find(" ok"), lines[1].find(" FAILED"), "{stdout}");
    assert_eq!(lines[2], "2 targets: 1 ok, 1 failed");
    assert!(
        !stdout.contains(stack.external_id()) && !stderr.contains(stack.external_id()),
        "{stdout}{stderr}"
    );

    let mut cmd = cli_for_targets(&stack, home.path());
    cmd.arg("check").arg("--config").arg(&file).arg("--json");
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let all = all.as_array().expect("an array");
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["name"], "good");
    assert_eq!(all[0]["ok"], true);
    assert_eq!(all[0]["account"], account);
    assert_eq!(all[0]["role_arn"], stack.role_arn());
    assert_eq!(all[0]["report"]["verdict"], "ok");
    assert_eq!(all[1]["name"], "broken");
    assert_eq!(all[1]["ok"], false);
    assert_eq!(all[1]["report"]["verdict"], "failed");
    assert_eq!(all[1]["report"]["error"]["stage"], "assume-role");
    assert_eq!(all[1]["report"]["error"]["type"], "AssumeRoleFailed");
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(!raw.contains(stack.external_id()));
}

#[tokio::test]
async fn check_config_passes_when_every_target_does() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let file = targets_file(&stack, home.path());
    let mut cmd = cli_for_targets(&stack, home.path());
    cmd.env("WRONG_EXTERNAL_ID", stack.external_id())
        .arg("check")
        .arg("--config")
        .arg(&file);
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("2 targets: 2 ok, 0 failed\n"), "{stdout}");
}

#[tokio::test]
async fn check_config_checks_the_targets_concurrently() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    // The proxy accepts connections and never answers: each check runs until its 3 s
    // deadline. One after another, three would take 9 s.
    let targets = [
        ("one", "GOOD_EXTERNAL_ID"),
        ("two", "GOOD_EXTERNAL_ID"),
        ("three", "GOOD_EXTERNAL_ID"),
    ];
    let file = targets_file_with(&stack, home.path(), &targets, "3s");
    stack.set_proxy_stall(true);
    let mut cmd = cli_for_targets(&stack, home.path());
    cmd.arg("check").arg("--config").arg(&file);
    let started = std::time::Instant::now();
    let out = run(cmd).await;
    let elapsed = started.elapsed();
    stack.set_proxy_stall(false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("3 targets: 0 ok, 3 failed\n"), "{stdout}");
    for line in stdout.lines().take(3) {
        assert!(line.contains("timed out after 3.0 s"), "{stdout}");
    }
    assert!(
        elapsed < std::time::Duration::from_secs(6),
        "took {elapsed:?}: not concurrent\n{stdout}"
    );
}

/// `rds-iam-auth proxy` is the local auth proxy: psql through it with no password.
#[tokio::test]
async fn the_proxy_subcommand_serves_clients_with_no_password() {
    use std::io::{BufRead, BufReader};
    let stack = stack().await;
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_rds-iam-auth"))
        .args(["proxy", "--port", "0"])
        .envs(stack.env())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rds-iam-auth proxy starts");
    let mut lines = BufReader::new(proxy.stderr.take().unwrap()).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            port = rest.split(' ').next().and_then(|p| p.parse::<u16>().ok());
        }
        if line.contains("ready for new connections") {
            break;
        }
    }
    let port = port.expect("a listening line");
    std::thread::spawn(move || lines.for_each(drop));
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user={} dbname={}",
            stack.db_user(),
            stack.db_name()
        ))
        .args(["-X", "-A", "-t", "-c", "SELECT current_user"])
        .env("PGPASSFILE", "/nonexistent")
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), stack.db_user());
}

/// The first word of each line of `check`'s report: the stages, then `verdict:`.
fn stage_names(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[tokio::test]
async fn check_and_psql_on_a_password_database() {
    let stack = stack().await;
    let home = tempfile::tempdir().expect("tempdir");
    let arn = stack.secret_arn().expect("secret");
    let mut secret_env: Vec<(String, String)> = stack.secret_env();
    secret_env.retain(|(k, _)| k == "DB_USERNAME");
    let changes: Vec<(&str, &str)> = secret_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    // The secret, read with the role of stack.env.
    let mut cmd = cli_for(&stack, home.path(), &changes);
    cmd.args(["check", "--secret-arn", &arn]);
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stage_names(&stdout),
        [
            "credentials",
            "assume-role",
            "secret",
            "dns",
            "tcp",
            "tls",
            "login",
            "query",
            "verdict:"
        ]
    );

    // The SecureString parameter, through psql: the password reaches it by its password
    // file, never its arguments.
    let parameter = format!("{}/password", stack.parameter_path().expect("path"));
    let mut cmd = cli_for(&stack, home.path(), &changes);
    cmd.args([
        "psql",
        "--password-parameter",
        &parameter,
        "--",
        "-X",
        "-A",
        "-t",
        "-c",
        "select current_user",
    ]);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "app_password_user"
    );

    // Every setting from Parameter Store: only the AWS variables and the stack's CA given.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rds-iam-auth"));
    cmd.env_clear()
        .env("HOME", home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (key, value) in stack.env() {
        if key.starts_with("AWS_") || key == "DB_CA_BUNDLE" {
            cmd.env(key, value);
        }
    }
    cmd.args([
        "check",
        "--json",
        "--parameters",
        stack.parameter_path().expect("path"),
    ]);
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let names: Vec<&str> = report["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.contains(&"secret") && !names.contains(&"token"),
        "{stdout}"
    );
}
