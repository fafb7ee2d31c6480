//! The `rds-iam-auth` binary as a user runs it: output bytes, exit codes, one-line errors.

use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use rds_iam_auth::token::{sign, TokenParams};

const HOST: &str = "app.endpoint.proxy-abc123.us-west-2.rds.amazonaws.com";

/// The binary with a clean AWS environment: only what the test sets, and no instance
/// metadata lookups (they would leave loopback).
fn cli(home: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rds-iam-auth"));
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_")
            || key == "RUST_LOG"
            || rds_iam_auth::env::VARIABLES.iter().any(|v| v.name == key)
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"));
    cmd
}

fn with_keys(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret-key-value")
        .env("AWS_SESSION_TOKEN", "session/token+value==")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn token_matches_the_library_byte_for_byte() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = with_keys(&mut cli(home.path()))
        .args([
            "generate-db-auth-token",
            "--hostname",
            HOST,
            "--port",
            "5432",
            "--username",
            "app user+1",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let token = stdout
        .strip_suffix('\n')
        .expect("one line, newline-terminated");
    assert!(!token.contains('\n'));
    assert!(
        token.starts_with(&format!(
            "{HOST}:5432/?Action=connect&DBUser=app%20user%2B1&"
        )),
        "{token}"
    );
    assert!(
        token.contains("%2Fus-west-2%2Frds-db%2Faws4_request"),
        "region from the host: {token}"
    );
    assert!(token.contains("&X-Amz-Security-Token=session%2Ftoken%2Bvalue%3D%3D&X-Amz-Signature="));

    // Re-sign with the library at the time the CLI used: the same bytes.
    let date = token
        .split("X-Amz-Date=")
        .nth(1)
        .expect("date")
        .get(..16)
        .expect("16 chars");
    let at = parse_amz_date(date);
    let params = TokenParams::new(HOST, 5432, "app user+1", Some("us-west-2")).expect("params");
    let creds = Credentials::from_keys(
        "AKIDEXAMPLE",
        "secret-key-value",
        Some("session/token+value==".into()),
    );
    assert_eq!(sign(&params, &creds, at).as_str(), token);
}

fn parse_amz_date(s: &str) -> SystemTime {
    // YYYYMMDDTHHMMSSZ -> seconds since the epoch (days from civil, Hinnant).
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().expect("digits");
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(9..11) * 3600 + n(11..13) * 60 + n(13..15);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
}

#[test]
fn explicit_region_wins_and_is_validated() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = with_keys(&mut cli(home.path()))
        .args([
            "generate-db-auth-token",
            "--hostname",
            "localhost",
            "--port",
            "5432",
            "--username",
            "u",
            "--region",
            "eu-central-1",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("%2Feu-central-1%2Frds-db%2F"));
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let home = tempfile::tempdir().expect("tempdir");
    let cases: &[(&[&str], &str)] = &[
        (&["--port", "5432", "--username", "u"], "--hostname <HOSTNAME>"),
        (&["--hostname", "", "--port", "5432", "--username", "u"], "a value is required for '--hostname"),
        (&["--hostname", HOST, "--port", "5432", "--username", ""], "a value is required for '--username"),
        (&["--hostname", &format!("https://{HOST}"), "--port", "5432", "--username", "u"], "without a scheme such as https://"),
        (&["--hostname", HOST, "--port", "0", "--username", "u"], "0 is not in 1..=65535"),
        (&["--hostname", HOST, "--port", "70000", "--username", "u"], "70000 is not in 1..=65535"),
        (&["--hostname", HOST, "--port", "x", "--username", "u"], "invalid value 'x' for '--port"),
        (&["--hostname", HOST, "--port", "5432", "--username", "u", "--region", "US_EAST"], "invalid region \"US_EAST\""),
        (&["--hostname", "db.internal", "--port", "5432", "--username", "u"], "no region for \"db.internal\": pass a region explicitly (--region / AWS_REGION), or use an endpoint name"),
        (&["--hostname", HOST, "--port", "5432", "--username", "u", "--external-id", "x"], "--role-arn"),
        (&["--hostname", HOST, "--port", "5432", "--username", "u", "--role-arn", "not-an-arn"], "is not a role ARN"),
    ];
    for (args, needle) in cases {
        let out = with_keys(&mut cli(home.path()))
            .arg("generate-db-auth-token")
            .args(*args)
            .output()
            .expect("run");
        assert_one_line_error(&out, 2, needle);
        let lines = text(&out.stderr)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        // clap adds a usage line and "try --help" to its own errors; ours are one line.
        assert!(lines <= 4, "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn no_credentials_is_a_runtime_failure_with_a_hint() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = cli(home.path())
        .args([
            "generate-db-auth-token",
            "--hostname",
            HOST,
            "--port",
            "5432",
            "--username",
            "u",
        ])
        .output()
        .expect("run");
    assert_one_line_error(&out, 1, "rds-iam-auth: error: credentials:");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("hint: no AWS credentials found"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn unknown_profile_is_reported() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = cli(home.path())
        .args([
            "generate-db-auth-token",
            "--hostname",
            HOST,
            "--port",
            "5432",
            "--username",
            "u",
            "--profile",
            "nope",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("credentials:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unreadable_ca_bundle_is_bad_input() {
    let home = tempfile::tempdir().expect("tempdir");
    let missing = home.path().join("missing.pem");
    let out = with_keys(&mut cli(home.path()))
        .args([
            "check",
            "--hostname",
            HOST,
            "--username",
            "u",
            "--ca-bundle",
        ])
        .arg(&missing)
        .output()
        .expect("run");
    assert_one_line_error(&out, 2, "CA bundle");
    assert!(text(&out.stderr).contains("cannot read"));

    let junk = home.path().join("junk.pem");
    std::fs::write(&junk, "hello").expect("write");
    let out = with_keys(&mut cli(home.path()))
        .args([
            "check",
            "--hostname",
            HOST,
            "--username",
            "u",
            "--ca-bundle",
        ])
        .arg(&junk)
        .output()
        .expect("run");
    assert_one_line_error(&out, 2, "no certificate found");
}

#[test]
fn check_reports_each_stage_and_the_failing_one() {
    let home = tempfile::tempdir().expect("tempdir");
    // Nothing listens on loopback port 9: the path fails at TCP. The token is signed right
    // before the login, so it is never signed here.
    let out = with_keys(&mut cli(home.path()))
        .args([
            "check",
            "--hostname",
            HOST,
            "--username",
            "u",
            "--connect-address",
            "127.0.0.1:9",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("credentials  ok"), "{stdout}");
    assert!(
        lines[1].starts_with("token        skipped") && lines[1].contains("tcp failed first"),
        "{stdout}"
    );
    assert!(lines[2].starts_with("dns          skipped"), "{stdout}");
    assert!(lines[3].starts_with("tcp          FAILED"), "{stdout}");
    assert!(
        lines[4].starts_with(
            "verdict: FAILED at tcp: cannot connect to 127.0.0.1:9: Connection refused"
        ),
        "{stdout}"
    );
    assert!(
        lines[5].starts_with("hint: check security groups"),
        "{stdout}"
    );
    assert!(!stdout.contains("secret-key-value") && !stdout.contains("session%2Ftoken"));
}

#[test]
fn check_json_matches_the_text_report() {
    let home = tempfile::tempdir().expect("tempdir");
    let run = |json: bool| {
        let mut cmd = cli(home.path());
        with_keys(&mut cmd).args([
            "check",
            "--hostname",
            HOST,
            "--username",
            "u",
            "--connect-address",
            "127.0.0.1:9",
        ]);
        if json {
            cmd.arg("--json");
        }
        cmd.output().expect("run")
    };
    let (text_out, json_out) = (run(false), run(true));
    assert_eq!(
        json_out.status.code(),
        text_out.status.code(),
        "same exit code"
    );
    assert_eq!(json_out.status.code(), Some(1));
    let report: serde_json::Value =
        serde_json::from_slice(&json_out.stdout).expect("one JSON document");
    assert_eq!(report["verdict"], "failed");
    let stages = report["stages"].as_array().expect("stages");
    let text_stages: Vec<(String, String)> = text(&text_out.stdout)
        .lines()
        .take_while(|l| !l.starts_with("verdict:"))
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            let outcome = words.next().unwrap_or_default().to_ascii_lowercase();
            (name, outcome)
        })
        .collect();
    let json_stages: Vec<(String, String)> = stages
        .iter()
        .map(|s| {
            assert!(s["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{s}");
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(json_stages, text_stages);
    assert_eq!(report["error"]["stage"], "tcp");
    assert_eq!(report["error"]["type"], "TcpConnectFailed");
    assert!(report["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("tcp: cannot connect to 127.0.0.1:9")));
    assert!(report["error"]["hint"]
        .as_str()
        .is_some_and(|h| h.starts_with("check security groups")));
    let raw = text(&json_out.stdout);
    assert!(!raw.contains("secret-key-value") && !raw.contains("session%2Ftoken"));
}

#[test]
fn settings_come_from_the_environment_and_flags_win() {
    let home = tempfile::tempdir().expect("tempdir");
    // A malformed variable is bad input that names it...
    let out = with_keys(&mut cli(home.path()))
        .env("RDS_PROXY_APPLICATION_ENDPOINT", HOST)
        .env("DB_USERNAME", "u")
        .env("DB_PORT", "70000")
        .args(["check"])
        .output()
        .expect("run");
    assert_one_line_error(
        &out,
        2,
        "environment variable DB_PORT is \"70000\": expected a whole number from 1 to 65535",
    );
    // ...unless its flag is given: then the variable is not read.
    let out = with_keys(&mut cli(home.path()))
        .env("RDS_PROXY_APPLICATION_ENDPOINT", "https://not-a-bare-name")
        .env("DB_USERNAME", "u")
        .env("DB_PORT", "70000")
        .env("DB_CONNECT_TIMEOUT_SECONDS", "1")
        .args([
            "check",
            "--port",
            "5432",
            "--hostname",
            HOST,
            "--connect-address",
            "127.0.0.1:9",
        ])
        .output()
        .expect("run");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("tcp          FAILED"),
        "dialed the flag's address: {stdout}"
    );
    // Neither flag nor variable: says both.
    let out = with_keys(&mut cli(home.path()))
        .args(["check", "--username", "u"])
        .output()
        .expect("run");
    assert_one_line_error(
        &out,
        2,
        "pass --hostname or set RDS_PROXY_APPLICATION_ENDPOINT",
    );
}

/// A targets file in `home` holding `text`.
fn targets_file(home: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = home.join("targets.toml");
    std::fs::write(&path, text).expect("targets file");
    path
}

#[test]
fn check_config_refuses_a_bad_targets_file_in_one_line_before_checking_anything() {
    let home = tempfile::tempdir().expect("tempdir");
    let good = format!(
        "[[target]]\nname = \"orders\"\nendpoint = \"{HOST}\"\ndatabase = \"d\"\nuser = \"u\"\nconnect_address = \"127.0.0.1:9\"\n\n"
    );
    let cases = [
        // An unknown key, in the second target: named with its target and line.
        (
            format!("{good}[[target]]\nname = \"billing\"\nendpoint = \"{HOST}\"\ndatabase = \"d\"\nuser = \"u\"\nconect_timeout = \"5s\"\n"),
            ":13:1: target `billing`: unknown key `conect_timeout`".to_owned(),
        ),
        // The external ID itself: refused, pointing at the two keys, without repeating it.
        (
            format!("{good}external_id = \"xid-in-the-file\"\n"),
            "unknown key `external_id`: the external ID is a secret shared between accounts".to_owned(),
        ),
        (
            format!("{good}external_id_env = \"NOT_SET_ANYWHERE\"\nrole_arn = \"arn:aws:iam::222222222222:role/r\"\n"),
            "target `orders`: `external_id_env` names environment variable NOT_SET_ANYWHERE, which is not set".to_owned(),
        ),
        // Two password sources for one target.
        (
            format!("{good}secret_arn = \"arn:aws:secretsmanager:us-east-1:222222222222:secret:s-AbCdEf\"\npassword_parameter = \"/orders/db/password\"\n"),
            "target `orders`: `password_parameter` cannot be used with `secret_arn`".to_owned(),
        ),
        // What only the library checks, when the connector is built: still bad input.
        (
            format!("{good}password_parameter = \"/orders/db/password\"\npassword_ttl = \"100ms\"\n"),
            "targets.toml: target `orders`: config: invalid `password_ttl`".to_owned(),
        ),
        (
            good.replace("127.0.0.1:9", "127.0.0.1:x"),
            "targets.toml: target `orders`: config: invalid `connect_address`".to_owned(),
        ),
        ("[[target]\n".to_owned(), "targets.toml:1:9: not valid TOML: ".to_owned()),
        (String::new(), "targets.toml: no targets".to_owned()),
    ];
    for (contents, needle) in cases {
        let file = targets_file(home.path(), &contents);
        for json in [false, true] {
            let mut cmd = cli(home.path());
            with_keys(&mut cmd).arg("check").arg("--config").arg(&file);
            if json {
                cmd.arg("--json");
            }
            let out = cmd.output().expect("run");
            assert_one_line_error(&out, 2, &needle);
            let stderr = text(&out.stderr);
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with("rds-iam-auth: error: "), "{stderr}");
            assert!(!stderr.contains("xid-in-the-file"), "{stderr}");
        }
    }

    let out = with_keys(&mut cli(home.path()))
        .args(["check", "--config"])
        .arg(home.path().join("missing.toml"))
        .output()
        .expect("run");
    assert_one_line_error(&out, 2, "missing.toml: cannot read the targets file");

    // The file says where: the single-target flags are refused with it.
    let file = targets_file(home.path(), &good);
    let out = with_keys(&mut cli(home.path()))
        .args(["check", "--hostname", HOST, "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_one_line_error(&out, 2, "cannot be used with");
}

#[test]
fn check_config_prints_one_aligned_line_per_target_and_a_summary() {
    let home = tempfile::tempdir().expect("tempdir");
    // Nothing listens on loopback port 9: both fail at tcp, with no STS in the way (no
    // role: the application's own credentials sign).
    let target = |name: &str| {
        format!("[[target]]\nname = \"{name}\"\nendpoint = \"{HOST}\"\ndatabase = \"d\"\nuser = \"u\"\nconnect_address = \"127.0.0.1:9\"\n\n")
    };
    let file = targets_file(
        home.path(),
        &format!("{}{}", target("a"), target("long-name")),
    );
    let out = with_keys(&mut cli(home.path()))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("a          own credentials  -  tcp  "),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("long-name  own credentials  -  tcp  "),
        "{stdout}"
    );
    for line in &lines[..2] {
        assert!(
            line.contains("  FAILED: tcp: cannot connect to 127.0.0.1:9: Connection refused"),
            "{stdout}"
        );
        assert!(line.contains(" | hint: check security groups"), "{stdout}");
    }
    assert_eq!(lines[0].find("FAILED"), lines[1].find("FAILED"), "{stdout}");
    assert_eq!(lines[2], "2 targets: 0 ok, 2 failed");
    assert!(!stdout.contains("secret-key-value") && !stdout.contains("session%2Ftoken"));

    let out = with_keys(&mut cli(home.path()))
        .args(["check", "--json", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let all = all.as_array().expect("array");
    assert_eq!(all.len(), 2);
    for (entry, name) in all.iter().zip(["a", "long-name"]) {
        assert_eq!(entry["name"], name);
        assert_eq!(entry["ok"], false);
        assert!(
            entry["account"].is_null() && entry["role_arn"].is_null(),
            "{entry}"
        );
        assert_eq!(entry["report"]["error"]["stage"], "tcp");
        assert_eq!(entry["report"]["verdict"], "failed");
    }
}
