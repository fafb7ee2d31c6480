//! The Secrets Manager and Parameter Store stand-ins against boto3, a third-party client
//! with its own signer and parsers: `tests/boto3/stand_ins.py`, run with the stack's
//! `stack.env` and `secret.env` variables (the endpoints reach boto3 through the standard
//! `AWS_ENDPOINT_URL_*` variables, as they reach the AWS SDK for Rust).
//!
//! Runs the project's `.venv/bin/python` (where `make test` installs boto3), else `python3`
//! from PATH; set `RDS_PROXY_EMULATOR_SKIP_BOTO3=1` to skip it explicitly where boto3
//! cannot be installed.

mod common;

use common::{demo, TestResult};

/// The project's virtualenv's python (the Makefile's VENV) if there is one, else `python3`.
fn python3() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = manifest
        .parent()
        .unwrap_or(manifest)
        .join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        "python3".into()
    }
}

/// Whether boto3 can run; without it the test fails unless skipping was asked for.
fn boto3_available() -> bool {
    let has_boto3 = std::process::Command::new(python3())
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_boto3 {
        assert!(
            std::env::var_os("RDS_PROXY_EMULATOR_SKIP_BOTO3").is_some(),
            "boto3 is needed in the project's .venv or python3 (make test installs it), or set RDS_PROXY_EMULATOR_SKIP_BOTO3=1"
        );
        eprintln!("SKIPPED: boto3 is not installed (RDS_PROXY_EMULATOR_SKIP_BOTO3 is set)");
    }
    has_boto3
}

/// Runs python3 with `args` in the stack's environment only (stack.env and secret.env).
async fn python(
    stack: &rds_proxy_emulator::LocalStack,
    args: &[&std::ffi::OsStr],
) -> std::io::Result<std::process::Output> {
    tokio::process::Command::new(python3())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        // No profile or config of the machine's user may leak into the run.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .envs(stack.env())
        .envs(stack.secret_env())
        .output()
        .await
}

#[tokio::test]
async fn boto3_reads_the_secret_and_the_parameters() -> TestResult {
    if !boto3_available() {
        return Ok(());
    }
    let stack = demo().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boto3/stand_ins.py");
    let output = python(&stack, &[script.as_os_str()]).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "boto3 checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("boto3: all checks passed"), "{stdout}");
    Ok(())
}

/// The refusing fault answers what the SDKs treat as transient: boto3's standard retry
/// mode sends the request again, up to its attempt limit.
#[tokio::test]
async fn boto3_retries_a_refusing_secrets_manager() -> TestResult {
    if !boto3_available() {
        return Ok(());
    }
    let stack = demo().await;
    stack.set_secrets_fault(rds_proxy_emulator::ServiceFault::Refuse);
    let code = r#"
import os, boto3
from botocore.config import Config
from botocore.exceptions import ClientError
region = os.environ["AWS_REGION"]
sts = boto3.client("sts", region_name=region)
c = sts.assume_role(RoleArn=os.environ["DATABASE_ACCOUNT_IAM_ROLE"], RoleSessionName="retry",
                    ExternalId=os.environ["EXTERNAL_ID"])["Credentials"]
sm = boto3.client("secretsmanager", region_name=region, aws_access_key_id=c["AccessKeyId"],
                  aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"],
                  config=Config(retries={"mode": "standard", "total_max_attempts": 3}))
try:
    sm.get_secret_value(SecretId=os.environ["DB_SECRET_ARN"])
    print("answered")
except ClientError as e:
    print(e.response["Error"]["Code"], e.response["ResponseMetadata"]["RetryAttempts"])
"#;
    let output = python(&stack, &["-c".as_ref(), code.as_ref()]).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "InternalServiceError 2");
    let c = stack.counters();
    assert_eq!(
        (c.get_secret_value_calls, c.get_secret_value_succeeded),
        (3, 0)
    );
    Ok(())
}
