//! The staged check: the whole path stage by stage, then a trivial query, reported as
//! one line per stage with its outcome and duration ([`CheckReport`]).

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::connector::Connector;
use crate::error::Error;
use crate::runner::{Deadline, Recorder, StageReport};
use crate::stage::{format_duration, Stage};

impl Connector {
    /// Runs the whole path stage by stage (credentials, assume role, token, DNS, TCP,
    /// TLS, login, query; `secret` instead of `token` with a stored password) within the connect timeout and reports each stage's outcome and
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
        // when the proxy refuses the token with its IAM message (a revoked role session), or
        // with the password read again when a stored one is refused (a rotation): a warm
        // Lambda must not keep reporting a refusal that a fresh read cures.
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
                let result = crate::runner::run(&mut rec, Stage::Query, deadline, query, |_| {
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
