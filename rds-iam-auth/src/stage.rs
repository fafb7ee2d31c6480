//! The stages of one connection, and the one helper that runs a stage under the
//! connection's deadline and records how it ended.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::check::{Outcome, Recorder};
use crate::error::Error;

/// A step of the path of one connection, in order (`ARCHITECTURE.md` maps each to its
/// module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Stage {
    /// Settings given by the caller (before any I/O).
    Config,
    /// Base credentials from the default provider chain (or the ones supplied).
    Credentials,
    /// `sts:AssumeRole` into the database account.
    AssumeRole,
    /// Signing the IAM auth token.
    Token,
    /// Resolving the endpoint (or the override address).
    Dns,
    /// Opening the TCP connection.
    Tcp,
    /// TLS handshake and certificate verification.
    Tls,
    /// PostgreSQL startup and the token as password.
    Login,
    /// The trivial read that proves the session works.
    Query,
}

impl Stage {
    /// All stages in path order.
    pub const ALL: [Stage; 9] = [
        Stage::Config,
        Stage::Credentials,
        Stage::AssumeRole,
        Stage::Token,
        Stage::Dns,
        Stage::Tcp,
        Stage::Tls,
        Stage::Login,
        Stage::Query,
    ];

    /// Short lowercase name, as printed in reports and logs (`assume-role`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Config => "config",
            Stage::Credentials => "credentials",
            Stage::AssumeRole => "assume-role",
            Stage::Token => "token",
            Stage::Dns => "dns",
            Stage::Tcp => "tcp",
            Stage::Tls => "tls",
            Stage::Login => "login",
            Stage::Query => "query",
        }
    }

    /// A CamelCase failure name for machine consumers, e.g. a Lambda `errorType`
    /// (`AssumeRoleFailed`, `TlsFailed`, `AuthenticationFailed`).
    pub fn failure_type(self) -> &'static str {
        match self {
            Stage::Config => "ConfigurationError",
            Stage::Credentials => "CredentialsFailed",
            Stage::AssumeRole => "AssumeRoleFailed",
            Stage::Token => "TokenFailed",
            Stage::Dns => "DnsFailed",
            Stage::Tcp => "TcpConnectFailed",
            Stage::Tls => "TlsFailed",
            Stage::Login => "AuthenticationFailed",
            Stage::Query => "QueryFailed",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
        Error::Timeout {
            stage,
            after: self.budget,
        }
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
