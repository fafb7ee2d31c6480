//! `check --config FILE`: every database of a targets file, checked at once.
//!
//! The file is the local proxy's (`rds_iam_auth_proxy::targets`), so what the proxy
//! would serve is exactly what is checked. Every connector is built before anything is
//! checked: a target the library refuses makes the file bad input (exit 2) and no check
//! runs. The checks then run concurrently, each within its own connect timeout, so one
//! hanging database costs its timeout once rather than delaying every check after it.

use std::path::Path;
use std::process::ExitCode;

use rds_iam_auth::{CheckReport, Connector, Error, Outcome, Stage};
use rds_iam_auth_proxy::targets::{self, Target};

use crate::report::{format_duration, report_json};

/// Checks every target of the file at `path`; `profile` names the AWS profile of the base
/// credentials for all of them. Prints one line per target and a summary (or a JSON
/// array), and returns 0 when all pass, 1 when any fails, 2 for a bad file.
pub(crate) async fn check_all(path: &Path, profile: Option<String>, json: bool) -> ExitCode {
    let targets = match targets::load(path) {
        Ok(targets) => targets,
        Err(err) => {
            eprintln!("rds-iam-auth: error: {err}");
            return ExitCode::from(2);
        }
    };
    let connectors = match connectors(path, &targets, profile).await {
        Ok(connectors) => connectors,
        Err(code) => return code,
    };
    let checks: Vec<_> = connectors
        .into_iter()
        .map(|built| {
            tokio::spawn(async move {
                match built {
                    Ok(connector) => connector.check().await,
                    // Refused for a reason other than its settings (no credentials
                    // provider): a failed target like any other.
                    Err(error) => CheckReport {
                        stages: Vec::new(),
                        error: Some(error),
                        total: Default::default(),
                    },
                }
            })
        })
        .collect();
    let mut reports = Vec::with_capacity(checks.len());
    for check in checks {
        reports.push(joined(check.await));
    }

    let failed = reports.iter().filter(|r| !r.is_success()).count();
    if json {
        println!("{}", json_array(&targets, &reports));
    } else {
        print!("{}", table(&targets, &reports));
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Builds every target's connector, concurrently (each loads the AWS configuration, which
/// may wait on instance metadata). A settings error ends it with exit code 2, naming the
/// file and the target.
async fn connectors(
    path: &Path,
    targets: &[Target],
    profile: Option<String>,
) -> Result<Vec<Result<Connector, Error>>, ExitCode> {
    let builds: Vec<_> = targets
        .iter()
        .map(|target| {
            let mut config = target.config.clone().set_profile(profile.clone());
            if config.get_application_name().is_none() {
                config = config.application_name("rds-iam-auth check");
            }
            tokio::spawn(config.connector())
        })
        .collect();
    let mut connectors = Vec::with_capacity(builds.len());
    for (target, build) in targets.iter().zip(builds) {
        let built = joined(build.await);
        if let Err(err) = &built {
            if err.stage() == Stage::Config {
                eprintln!(
                    "rds-iam-auth: error: {}: target `{}`: {err}",
                    path.display(),
                    target.name
                );
                return Err(ExitCode::from(2));
            }
        }
        connectors.push(built);
    }
    Ok(connectors)
}

/// A task's result; a panic in it is re-raised here, as if it had run inline.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// The account column: the database account, or the base credentials' own.
fn account(target: &Target) -> &str {
    target.account().unwrap_or("own credentials")
}

/// The last stage that passed, or the one that failed.
fn stage_reached(report: &CheckReport) -> &'static str {
    match &report.error {
        Some(err) => err.stage().name(),
        None => report
            .stages
            .iter()
            .rev()
            .find(|s| matches!(s.outcome, Outcome::Ok | Outcome::Cached))
            .map_or("-", |s| s.stage.name()),
    }
}

/// One aligned line per target (name, account, role, stage reached, time, verdict), then
/// the summary.
fn table(targets: &[Target], reports: &[CheckReport]) -> String {
    let rows: Vec<[String; 6]> = targets
        .iter()
        .zip(reports)
        .map(|(target, report)| {
            let verdict = match &report.error {
                None => "ok".to_owned(),
                Some(err) => format!("FAILED: {err}"),
            };
            [
                target.name.clone(),
                account(target).to_owned(),
                target.role_name().unwrap_or("-").to_owned(),
                stage_reached(report).to_owned(),
                format_duration(report.total),
                verdict,
            ]
        })
        .collect();
    let mut widths = [0; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for [name, account, role, stage, time, verdict] in &rows {
        out.push_str(&format!(
            "{name:<w0$}  {account:<w1$}  {role:<w2$}  {stage:<w3$}  {time:>w4$}  {verdict}\n",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        ));
    }
    let failed = reports.iter().filter(|r| !r.is_success()).count();
    let count = reports.len();
    out.push_str(&format!(
        "{count} target{}: {} ok, {failed} failed\n",
        if count == 1 { "" } else { "s" },
        count - failed
    ));
    out
}

/// One object per target, each with the single-target check's JSON report.
fn json_array(targets: &[Target], reports: &[CheckReport]) -> serde_json::Value {
    targets
        .iter()
        .zip(reports)
        .map(|(target, report)| {
            serde_json::json!({
                "name": target.name,
                "account": target.account(),
                "role_arn": target.role_arn(),
                "ok": report.is_success(),
                "report": report_json(report),
            })
        })
        .collect()
}
