//! One error type for the whole connection path, and what each failure means.
//!
//! An [`Error`] names the [`Stage`] that failed and the [`Reason`] (what went wrong, as a
//! value to match on), keeps the underlying cause as its
//! [`source`](std::error::Error::source), and, where the reason is a known
//! misconfiguration, carries a one-line [`hint`](Error::hint) that says what to check.
//! `Display` prints `stage: cause | hint: ...` on one line, so `eprintln!("{err}")` is
//! already a diagnosis. It holds no token, secret key or session token.
//!
//! The insides are private (as `tokio_postgres::Error`'s): new details can be added
//! without breaking callers. Causes are shared (`Arc`), so an error handed to every caller
//! of a shared credential refresh is a cheap clone, not a copy.
//!
//! [`classify`] turns causes (SDK, rustls, PostgreSQL errors) into errors: the one place
//! that knows which message means what.

pub(crate) mod classify;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::stage::Stage;
use crate::token::TokenError;

/// Boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

type SharedCause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Invalid settings, found before any I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting was not given.
    #[error("missing setting `{0}`")]
    Missing(&'static str),
    /// A required setting was given neither to the builder nor through its environment
    /// variable (for [`Config::from_env`](crate::Config::from_env)).
    #[error("missing setting `{setting}`: set it, or environment variable {variable} for Config::from_env")]
    MissingSetting {
        /// The setting.
        setting: &'static str,
        /// The variable of the environment mapping that fills it.
        variable: &'static str,
    },
    /// A setting has a value that cannot work.
    #[error("invalid `{name}`: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Token settings were refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// An environment variable read by [`Config::from_env`](crate::Config::from_env) is
    /// malformed, or a required one is not set.
    #[error("environment variable {variable} {problem}")]
    Env {
        /// The variable.
        variable: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The extra CA bundle could not be read or holds no certificate.
    #[error("CA bundle {path}: {reason}")]
    CaBundle {
        /// Where the bundle was read from (`<memory>` for bytes).
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl ConfigError {
    /// A problem with environment variable `variable` (for entry points that require more
    /// variables than [`Config::from_env`](crate::Config::from_env) does).
    pub fn env(variable: &'static str, problem: impl Into<String>) -> Self {
        ConfigError::Env {
            variable,
            problem: problem.into(),
        }
    }

    /// A setting with a value that cannot work: `invalid `name`: reason`.
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            name,
            reason: reason.into(),
        }
    }
}

/// What went wrong, for code that decides what to do about an [`Error`] (retry, alert,
/// report). New reasons may be added: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The settings cannot work ([`Error::config_error`] says which).
    InvalidConfig,
    /// No base credentials could be found.
    NoCredentials,
    /// A credentials provider handed out credentials that expire too soon to use.
    StaleCredentials,
    /// STS refused `AssumeRole` (`AccessDenied`): trust policy, external ID or permission.
    AccessDenied,
    /// STS rejected the caller's own credentials (`InvalidClientTokenId`, `ExpiredToken`, ...).
    CallerRejected,
    /// STS could not be reached.
    StsUnreachable,
    /// STS answered that it cannot serve the request now (`ServiceUnavailable`, throttling,
    /// an internal error), after the SDK's retries.
    StsUnavailable,
    /// Fetching credentials failed otherwise (an STS error or answer without a known meaning,
    /// a provider that failed).
    CredentialsFailed,
    /// The name did not resolve.
    NameNotResolved,
    /// No TCP connection could be opened.
    ConnectFailed,
    /// The stage did not finish in time.
    Timeout,
    /// The server does not accept TLS, or requires it where it was not used.
    TlsRequired,
    /// The certificate does not name the endpoint.
    CertificateNameMismatch,
    /// The certificate does not chain to a trusted root.
    UntrustedCertificate,
    /// The certificate is expired or not yet valid.
    CertificateExpired,
    /// The TLS handshake failed otherwise.
    TlsFailed,
    /// The proxy refused the IAM token (bad, expired or foreign token, or no
    /// `rds-db:connect` permission): fresh credentials may cure it.
    IamRefused,
    /// The proxy has no secret for this database user.
    NoSecretForUser,
    /// A connection limit was reached.
    TooManyConnections,
    /// RDS Proxy refused a startup parameter (`options`).
    StartupOptionRefused,
    /// The database does not exist.
    DatabaseNotFound,
    /// `target_session_attrs=read-write` reached a read-only session.
    ReadOnlySession,
    /// `target_session_attrs=read-only` reached a session that allows writes.
    WritableSession,
    /// The server refused the login otherwise.
    LoginFailed,
    /// A query (the check's, or the after-connect hook's) failed.
    QueryFailed,
    /// Secrets Manager refused to give the secret (`AccessDeniedException`): the secret's
    /// resource policy, its KMS key's policy or the reader's own policy.
    SecretAccessDenied,
    /// No such secret (`ResourceNotFoundException`): the ARN, or its region.
    SecretNotFound,
    /// The secret or parameter could not be decrypted (`DecryptionFailure`, a KMS error).
    SecretDecryptionFailed,
    /// The secret's value cannot be used: not JSON, binary, or without a password.
    SecretInvalid,
    /// Parameter Store refused to give the parameter (`AccessDeniedException`).
    ParameterAccessDenied,
    /// No such parameter (`ParameterNotFound`), or nothing under the settings' path.
    ParameterNotFound,
    /// Secrets Manager or Parameter Store answered that it cannot serve the request now
    /// (throttling, an internal error), after the SDK's retries.
    SecretServiceUnavailable,
    /// Secrets Manager or Parameter Store could not be reached.
    SecretServiceUnreachable,
    /// Reading the secret or parameter failed otherwise.
    SecretFailed,
    /// The database refused the password read from the secret or parameter (SQLSTATE
    /// 28P01): rotated since it was read, or the source and the database disagree.
    PasswordRefused,
}

/// An error on the path to a working connection.
///
/// It names the [`Stage`] that failed and the [`Reason`], keeps the underlying cause as
/// its [`source`](std::error::Error::source), and, where the cause is a known
/// misconfiguration, carries a one-line [`hint`](Error::hint). `Display` prints
/// `stage: cause | hint: ...` on one line. No error holds a token, a secret key or a
/// session token.
#[derive(Clone)]
pub struct Error(Box<Inner>);

#[derive(Clone)]
struct Inner {
    stage: Stage,
    reason: Reason,
    /// What happened, as printed after `stage: `.
    cause: String,
    sqlstate: Option<String>,
    aws_code: Option<String>,
    source: Option<SharedCause>,
}

impl Error {
    /// An error of `stage` for `reason`, with `cause` (what is printed after `stage: `).
    pub(crate) fn new(stage: Stage, reason: Reason, cause: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            stage,
            reason,
            cause: cause.into(),
            sqlstate: None,
            aws_code: None,
            source: None,
        }))
    }

    /// A stage that did not finish within `after`.
    pub(crate) fn timeout(stage: Stage, after: Duration) -> Self {
        Self::new(
            stage,
            Reason::Timeout,
            format!("timed out after {}", crate::stage::format_duration(after)),
        )
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.0.source = Some(Arc::new(source));
        self
    }

    pub(crate) fn with_sqlstate(mut self, code: Option<String>) -> Self {
        self.0.sqlstate = code;
        self
    }

    /// The same failure, meaning `reason` (the hint follows it): what a login refusal
    /// means depends on whether the password was a token or a stored password.
    pub(crate) fn with_reason(mut self, reason: Reason) -> Self {
        self.0.reason = reason;
        self
    }

    pub(crate) fn with_aws_code(mut self, code: Option<String>) -> Self {
        self.0.aws_code = code;
        self
    }

    /// The stage that failed.
    pub fn stage(&self) -> Stage {
        self.0.stage
    }

    /// What went wrong.
    pub fn reason(&self) -> Reason {
        self.0.reason
    }

    /// What to check, when the cause is a known misconfiguration.
    pub fn hint(&self) -> Option<&'static str> {
        classify::hint(self.0.reason, self.0.stage)
    }

    /// The SQLSTATE, when the server answered with an error (`28P01`, `3D000`, ...).
    pub fn sqlstate(&self) -> Option<&str> {
        self.0.sqlstate.as_deref()
    }

    /// The AWS error code, when STS answered with one (`AccessDenied`, `ExpiredToken`, ...).
    pub fn aws_error_code(&self) -> Option<&str> {
        self.0.aws_code.as_deref()
    }

    /// The settings that were refused, for an [`Reason::InvalidConfig`] error.
    pub fn config_error(&self) -> Option<&ConfigError> {
        self.0.source.as_deref()?.downcast_ref::<ConfigError>()
    }

    /// The error without its hint (`stage: cause`), for a message that places the hint
    /// elsewhere.
    pub fn cause(&self) -> String {
        format!("{}: {}", self.0.stage, self.0.cause)
    }

    /// Wraps a query failure on an open connection (for `?` in user code).
    pub fn from_query(e: tokio_postgres::Error) -> Error {
        classify::query_error(e)
    }
}

/// Failures of one kind of work (a connector's connects, a pool's token refreshes): how
/// many there were, and the last one with when it happened.
#[derive(Default)]
pub(crate) struct FailureLog {
    count: std::sync::atomic::AtomicU64,
    last: std::sync::Mutex<Option<(std::time::SystemTime, Error)>>,
}

impl FailureLog {
    pub(crate) fn record(&self, error: &Error) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.lock() = Some((std::time::SystemTime::now(), error.clone()));
    }

    /// Forgets the last failure (the work succeeded since); the count stays.
    #[cfg(feature = "sqlx")]
    pub(crate) fn clear_last(&self) {
        *self.lock() = None;
    }

    pub(crate) fn last(&self) -> Option<(std::time::SystemTime, Error)> {
        self.lock().clone()
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(std::time::SystemTime, Error)>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::new(Stage::Config, Reason::InvalidConfig, e.to_string()).with_source(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.stage, self.0.cause)?;
        if let Some(hint) = self.hint() {
            write!(f, " | hint: {hint}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        let mut d = f.debug_struct("Error");
        d.field("stage", &i.stage)
            .field("reason", &i.reason)
            .field("cause", &i.cause);
        if let Some(code) = &i.sqlstate {
            d.field("sqlstate", code);
        }
        if let Some(code) = &i.aws_code {
            d.field("aws_error_code", code);
        }
        if let Some(source) = &i.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::classify::{login_failure, tls_refused};

    #[test]
    fn display_names_stage_cause_and_hint() {
        let err = Error::new(
            Stage::Tls,
            Reason::UntrustedCertificate,
            "handshake with db.example failed: invalid peer certificate: UnknownIssuer",
        );
        let text = err.to_string();
        assert!(text.starts_with("tls: handshake with db.example failed: invalid peer certificate: UnknownIssuer | hint: unknown certificate issuer"), "{text}");
        assert_eq!(err.stage(), Stage::Tls);
        assert_eq!(err.stage().failure_type(), "TlsFailed");
        assert_eq!(
            err.cause(),
            "tls: handshake with db.example failed: invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn timeout_names_its_stage() {
        let err = Error::timeout(Stage::Tcp, Duration::from_secs(5));
        assert!(err
            .to_string()
            .starts_with("tcp: timed out after 5.0 s | hint: check security groups"));
        assert_eq!(err.stage(), Stage::Tcp);
        assert_eq!(err.reason(), Reason::Timeout);
    }

    #[test]
    fn a_clone_shares_the_cause_and_keeps_every_detail() {
        let err = login_failure(
            "app",
            "db.example",
            Reason::IamRefused,
            "FATAL 28P01: The IAM authentication failed for the role app.",
            Some("28P01".to_owned()),
        )
        .with_source(std::io::Error::other("the cause"));
        let copy = err.clone();
        assert_eq!(copy.to_string(), err.to_string());
        assert_eq!(copy.sqlstate(), Some("28P01"));
        assert_eq!(copy.reason(), Reason::IamRefused);
        let (a, b) = (
            std::error::Error::source(&err).expect("source"),
            std::error::Error::source(&copy).expect("source"),
        );
        assert!(std::ptr::eq(
            a as *const dyn std::error::Error as *const u8,
            b as *const dyn std::error::Error as *const u8
        ));
    }

    #[test]
    fn a_config_error_keeps_its_details() {
        let err = Error::from(ConfigError::invalid("port", "is 0"));
        assert_eq!(err.to_string(), "config: invalid `port`: is 0");
        assert_eq!(err.reason(), Reason::InvalidConfig);
        assert!(matches!(
            err.config_error(),
            Some(ConfigError::Invalid { name: "port", .. })
        ));
        assert!(tls_refused("h", "x").config_error().is_none());
    }

    #[test]
    fn stage_names_are_distinct() {
        let names: std::collections::HashSet<_> = Stage::ALL.iter().map(|s| s.name()).collect();
        let types: std::collections::HashSet<_> =
            Stage::ALL.iter().map(|s| s.failure_type()).collect();
        assert_eq!(names.len(), Stage::ALL.len());
        assert_eq!(types.len(), Stage::ALL.len());
    }
}
