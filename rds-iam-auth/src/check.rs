//! The staged check: the whole path stage by stage, then a trivial query, reported as
//! one line per stage with its outcome and duration ([`CheckReport`]).
//!
//! [`Recorder`] is where every stage's outcome goes, for `connect` too: at DEBUG and
//! dropped there, at INFO and kept for the check. Failures are logged at WARN with their
//! hint. Nothing secret is ever recorded.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::connector::Connector;
use crate::error::Error;
use crate::stage::{Deadline, Stage};

impl Connector {
    /// Runs the whole path stage by stage (credentials, assume role, token, DNS, TCP,
    /// TLS, login, query) within the connect timeout and reports each stage's outcome and
    /// time. Never fails: the report holds the error. The connection is closed before it
    /// returns.
    pub async fn check(&self) -> CheckReport {
        self.check_within(self.inner.connect_timeout).await
    }

    /// [`check`](Self::check) within `limit` or the connect timeout, whichever is shorter:
    /// a caller with a deadline of its own (a Lambda invocation) gets a stage error before
    /// that deadline, not a hang.
    pub async fn check_within(&self, limit: Duration) -> CheckReport {
        let started = Instant::now();
        let mut rec = Recorder::keeping();
        let deadline = Deadline::after(limit.min(self.inner.connect_timeout));
        // The same path as `connect`, including its one retry with refreshed credentials
        // when the proxy refuses the token with its IAM message (a revoked role session):
        // a warm Lambda must not keep reporting a refusal that fresh credentials cure.
        let error = match Box::pin(self.establish(&mut rec, deadline)).await {
            Err(error) => Some(error),
            Ok((client, connection)) => {
                let task = tokio::spawn(connection);
                let query = async {
                    self.after_connect(&client, deadline).await?;
                    client
                        .simple_query("SELECT 1")
                        .await
                        .map_err(Error::from_query)
                };
                let result = crate::stage::run(&mut rec, Stage::Query, deadline, query, |_| {
                    "SELECT 1".to_owned()
                })
                .await;
                drop(client);
                // The connection ends once the client is gone; do not wait on a broken one.
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
                result.err()
            }
        };
        CheckReport {
            stages: rec.stages,
            error,
            total: started.elapsed(),
        }
    }
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The stage ran and succeeded.
    Ok,
    /// The stage was answered from a cache (credentials kept across calls).
    Cached,
    /// The stage did not apply (no role to assume, an IP address needs no DNS).
    Skipped,
    /// The stage failed; the check stopped here.
    Failed,
    /// The stage failed in a way fresh credentials may cure (the proxy refused the token
    /// with its IAM message), and the path was tried once more from the credentials: the
    /// stages that follow are that second attempt's.
    Retried,
}

impl Outcome {
    /// Lowercase name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Cached => "cached",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "FAILED",
            Outcome::Retried => "retried",
        }
    }
}

/// One stage of a [`CheckReport`].
#[derive(Debug, Clone)]
pub struct StageReport {
    /// Which stage.
    pub stage: Stage,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
    /// What it did or found (never a secret), or the error.
    pub detail: String,
}

/// The result of [`Connector::check`](crate::Connector::check): every stage that ran, in
/// order, and the error that stopped the path if one did.
#[derive(Debug)]
pub struct CheckReport {
    /// The stages that ran.
    pub stages: Vec<StageReport>,
    /// The failure, if any.
    pub error: Option<Error>,
    /// Wall time of the whole check.
    pub total: Duration,
}

impl CheckReport {
    /// Whether every stage succeeded.
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
}

impl fmt::Display for CheckReport {
    /// One line per stage (`stage  outcome  time  detail`), then the verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.stages {
            writeln!(
                f,
                "{:<12} {:<8} {:>9}  {}",
                s.stage.name(),
                s.outcome.name(),
                format_duration(s.duration),
                s.detail
            )?;
        }
        match &self.error {
            None => write!(
                f,
                "verdict: connection works ({} in all)",
                format_duration(self.total)
            ),
            Some(err) => {
                // The cause starts with the stage name (`tcp: cannot connect ...`).
                write!(f, "verdict: FAILED at {}", err.cause())?;
                if let Some(hint) = err.hint() {
                    write!(f, "\nhint: {hint}")?;
                }
                Ok(())
            }
        }
    }
}

/// `12.3 ms` / `1.52 s`.
pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Collects stage outcomes and emits one tracing event per stage.
///
/// `connect` uses a quiet recorder (events at DEBUG, nothing kept); `check` keeps the
/// stages and logs at INFO.
pub(crate) struct Recorder {
    keep: bool,
    pub(crate) stages: Vec<StageReport>,
}

impl Recorder {
    pub(crate) fn quiet() -> Self {
        Self {
            keep: false,
            stages: Vec::new(),
        }
    }

    pub(crate) fn keeping() -> Self {
        Self {
            keep: true,
            stages: Vec::new(),
        }
    }

    /// A recorder for one of two stage sequences that run at once; `append` it back.
    pub(crate) fn branch(&self) -> Self {
        Self {
            keep: self.keep,
            stages: Vec::new(),
        }
    }

    /// Whether `stage` was recorded (only a recorder that keeps its stages knows).
    pub(crate) fn has(&self, stage: Stage) -> bool {
        self.stages.iter().any(|s| s.stage == stage)
    }

    /// Whether stages are kept (for a report), not only logged.
    pub(crate) fn keeps(&self) -> bool {
        self.keep
    }

    /// Adds the stages of a branch after the ones recorded so far.
    pub(crate) fn append(&mut self, branch: Recorder) {
        self.stages.extend(branch.stages);
    }

    pub(crate) fn record(
        &mut self,
        stage: Stage,
        outcome: Outcome,
        duration: Duration,
        detail: &str,
    ) {
        let ms = duration.as_secs_f64() * 1000.0;
        if self.keep {
            tracing::info!(
                stage = stage.name(),
                outcome = outcome.name(),
                duration_ms = ms,
                detail,
                "stage"
            );
            self.stages.push(StageReport {
                stage,
                outcome,
                duration,
                detail: detail.to_owned(),
            });
        } else {
            tracing::debug!(
                stage = stage.name(),
                outcome = outcome.name(),
                duration_ms = ms,
                detail,
                "stage"
            );
        }
    }

    /// Turns the last failure of `stage` into [`Outcome::Retried`]: the path is tried again.
    pub(crate) fn retrying(&mut self, stage: Stage) {
        if let Some(s) = self
            .stages
            .iter_mut()
            .rev()
            .find(|s| s.stage == stage && s.outcome == Outcome::Failed)
        {
            s.outcome = Outcome::Retried;
            s.detail
                .push_str("; retrying once with refreshed credentials");
        }
    }

    pub(crate) fn fail(&mut self, stage: Stage, duration: Duration, err: &Error) {
        let detail = err.cause();
        let ms = duration.as_secs_f64() * 1000.0;
        tracing::warn!(stage = stage.name(), outcome = "failed", duration_ms = ms, error = %detail, hint = err.hint(), "stage");
        if self.keep {
            self.stages.push(StageReport {
                stage,
                outcome: Outcome::Failed,
                duration,
                detail,
            });
        }
    }
}
