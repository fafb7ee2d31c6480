//! The function's log output: what `lambda_runtime`'s default subscriber
//! (`lambda_runtime::tracing::init_default_subscriber`) does, filtered with
//! `tracing_subscriber`'s `Targets` instead of its `EnvFilter`, which brings a regex engine
//! (a tenth of the binary) for span and field filters this function never needs.
//!
//! - Text lines on stdout, or JSON objects when `AWS_LAMBDA_LOG_FORMAT` is `JSON` (Lambda's
//!   advanced logging controls); no timestamp (Lambda adds one) and no target.
//! - What is logged: the directives in `RUST_LOG` (`debug`, `rds_iam_auth=debug,info`,
//!   ...), as with `EnvFilter`; an invalid one is ignored with a message on stderr. Without
//!   any, everything at the level named by `AWS_LAMBDA_LOG_LEVEL`, else by `RUST_LOG`, else
//!   `INFO`. The one difference: span and field directives (`[span{field=value}]=debug`)
//!   are ignored like invalid ones.

use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter for these variables' values (`None`: unset).
pub fn filter(aws_lambda_log_level: Option<&str>, rust_log: Option<&str>) -> Targets {
    let mut targets = Targets::new();
    let mut any = false;
    for directive in rust_log.unwrap_or_default().split(',') {
        if directive.is_empty() {
            continue;
        }
        if directive.contains(['[', ']', '{', '}']) {
            // `Targets` would take `[span]` for a target name.
            eprintln!("ignoring `{directive}`: span and field filters are not supported");
            continue;
        }
        match Targets::from_str(directive) {
            Ok(parsed) => {
                any = true;
                if let Some(level) = parsed.default_level() {
                    targets = targets.with_default(level);
                }
                targets = targets.with_targets(parsed);
            }
            Err(err) => eprintln!("ignoring `{directive}`: {err}"),
        }
    }
    if any {
        return targets;
    }
    let level = aws_lambda_log_level
        .or(rust_log)
        .and_then(|l| LevelFilter::from_str(l).ok())
        .unwrap_or(LevelFilter::INFO);
    Targets::new().with_default(level)
}

/// Installs the subscriber for the process, from the environment.
pub fn init() {
    let var = |name| std::env::var(name).ok();
    let filter = filter(
        var("AWS_LAMBDA_LOG_LEVEL").as_deref(),
        var("RUST_LOG").as_deref(),
    );
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .without_time()
        .with_writer(std::io::stdout);
    let json = var("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(layer.json()).init();
    } else {
        registry.with(layer).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn enabled(t: &Targets, target: &str, level: Level) -> bool {
        t.would_enable(target, &level)
    }

    #[test]
    fn info_when_nothing_is_set() {
        let t = filter(None, None);
        assert!(enabled(&t, "connection_test", Level::INFO));
        assert!(!enabled(&t, "connection_test", Level::DEBUG));
    }

    #[test]
    fn aws_lambda_log_level_sets_the_level() {
        let t = filter(Some("DEBUG"), None);
        assert!(enabled(&t, "rds_iam_auth", Level::DEBUG));
        assert!(!enabled(&t, "rds_iam_auth", Level::TRACE));
        let t = filter(Some("error"), None);
        assert!(!enabled(&t, "rds_iam_auth", Level::WARN));
        // An unknown level is INFO, as in lambda_runtime.
        let t = filter(Some("loud"), None);
        assert!(enabled(&t, "x", Level::INFO) && !enabled(&t, "x", Level::DEBUG));
    }

    #[test]
    fn rust_log_directives_win_as_with_env_filter() {
        let t = filter(Some("ERROR"), Some("rds_iam_auth=debug,warn"));
        assert!(enabled(&t, "rds_iam_auth::connector", Level::DEBUG));
        assert!(enabled(&t, "aws_config", Level::WARN));
        assert!(!enabled(&t, "aws_config", Level::INFO));
        // Only target directives: other targets are off, as with EnvFilter.
        let t = filter(None, Some("rds_iam_auth=trace"));
        assert!(enabled(&t, "rds_iam_auth", Level::TRACE));
        assert!(!enabled(&t, "hyper", Level::ERROR));
        // A bare level.
        let t = filter(None, Some("debug"));
        assert!(enabled(&t, "anything", Level::DEBUG));
    }

    #[test]
    fn span_directives_are_ignored_and_the_rest_kept() {
        let t = filter(
            None,
            Some("[invocation]=trace,info,rds_iam_auth[check]=trace"),
        );
        assert!(enabled(&t, "x", Level::INFO));
        assert!(!enabled(&t, "x", Level::DEBUG));
        assert!(!enabled(&t, "rds_iam_auth", Level::DEBUG));
        // Nothing valid at all: the level variables apply.
        let t = filter(Some("WARN"), Some("[invocation]=trace"));
        assert!(enabled(&t, "x", Level::WARN) && !enabled(&t, "x", Level::INFO));
    }
}
