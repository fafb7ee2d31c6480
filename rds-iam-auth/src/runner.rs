//! Runs each stage of a connect under the connect's one deadline and records how it ended
//! ([`Recorder`]): at DEBUG for `connect`, kept as [`StageReport`]s for the staged check.
//! Failures are logged at WARN with their hint. Nothing secret is ever recorded.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::stage::Stage;

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

/// One stage of a [`CheckReport`](crate::CheckReport).
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

/// The time a stage may take: until `at`, reported as `budget` when it runs out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    /// A deadline `budget` from now. A budget too large for the clock (`Duration::MAX`, a
    /// conninfo `connect_timeout` of 2^63 - 1 seconds) means no limit in practice: it
    /// ends at [`instant_after`]'s far future instead of overflowing.
    pub(crate) fn after(budget: Duration) -> Self {
        Self {
            at: instant_after(budget),
            budget,
        }
    }

    /// What is left of the time (zero once it has passed).
    pub(crate) fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The error of a stage that ran out of time.
    pub(crate) fn expired(&self, stage: Stage) -> Error {
        Error::timeout(stage, self.budget)
    }

    /// Runs `work` until the deadline: `None` when it did not finish in time.
    pub(crate) async fn within<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::time::timeout_at(self.at, work).await.ok()
    }

    /// Runs `work` until the deadline; a late result is the stage's timeout error.
    pub(crate) async fn limit<T>(
        &self,
        stage: Stage,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.within(work)
            .await
            .unwrap_or_else(|| Err(self.expired(stage)))
    }
}

/// `Instant::now() + d`, or about thirty years from now when that does not fit the clock
/// (as Tokio does for `sleep`): duration settings take any value without a panic.
pub(crate) fn instant_after(d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    let now = Instant::now();
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// Runs one stage under `deadline` and records it: `Ok` with the detail `describe` gives
/// of the result, or the failure with the error's own stage (work for one stage can fail
/// at an earlier one, as a credentials fetch fails at assume-role).
pub(crate) async fn run<T>(
    rec: &mut Recorder,
    stage: Stage,
    deadline: Deadline,
    work: impl Future<Output = Result<T, Error>>,
    describe: impl FnOnce(&T) -> String,
) -> Result<T, Error> {
    let started = Instant::now();
    match deadline.limit(stage, work).await {
        Ok(value) => {
            rec.record(stage, Outcome::Ok, started.elapsed(), &describe(&value));
            Ok(value)
        }
        Err(err) => {
            rec.fail(err.stage(), started.elapsed(), &err);
            Err(err)
        }
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
