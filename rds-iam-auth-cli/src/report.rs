//! How `check` reports: the staged report as JSON, and times as the text report prints
//! them.

use std::time::Duration;

use rds_iam_auth::CheckReport;

/// The staged report as JSON: what monitoring and scripts read instead of the text.
pub(crate) fn report_json(report: &CheckReport) -> serde_json::Value {
    let ms = |d: Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let stages: Vec<serde_json::Value> = report
        .stages
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.stage.name(),
                "outcome": s.outcome.name().to_ascii_lowercase(),
                "duration_ms": ms(s.duration),
                "detail": s.detail,
            })
        })
        .collect();
    let error = report.error.as_ref().map(|e| {
        serde_json::json!({
            "stage": e.stage().name(),
            "type": e.stage().failure_type(),
            "message": e.cause(),
            "hint": e.hint(),
        })
    });
    serde_json::json!({
        "verdict": if report.is_success() { "ok" } else { "failed" },
        "total_ms": ms(report.total),
        "stages": stages,
        "error": error,
    })
}

/// A duration as the library's text report prints one: `12.3 ms` below a second, `1.5 s`
/// above (the library's formatter is not public).
pub(crate) fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
