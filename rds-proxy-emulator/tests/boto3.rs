//! The Secrets Manager and Parameter Store stand-ins against boto3, a third-party client
//! with its own signer and parsers: `tests/boto3/stand_ins.py`, run with the stack's
//! `stack.env` and `secret.env` variables (the endpoints reach boto3 through the standard
//! `AWS_ENDPOINT_URL_*` variables, as they reach the AWS SDK for Rust).
//!
//! Needs `python3` with boto3 (`pip install boto3`); set `RDS_PROXY_EMULATOR_SKIP_BOTO3=1`
//! to skip it explicitly where boto3 cannot be installed.

mod common;

use common::{demo, TestResult};

#[tokio::test]
async fn boto3_reads_the_secret_and_the_parameters() -> TestResult {
    let has_boto3 = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_boto3 {
        if std::env::var_os("RDS_PROXY_EMULATOR_SKIP_BOTO3").is_some() {
            eprintln!("SKIPPED: boto3 is not installed (RDS_PROXY_EMULATOR_SKIP_BOTO3 is set)");
            return Ok(());
        }
        panic!("python3 with boto3 is needed (pip install boto3), or set RDS_PROXY_EMULATOR_SKIP_BOTO3=1");
    }
    let stack = demo().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boto3/stand_ins.py");
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        // No profile or config of the machine's user may leak into the run.
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .envs(stack.env())
        .envs(stack.secret_env())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "boto3 checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("boto3: all checks passed"), "{stdout}");
    Ok(())
}
