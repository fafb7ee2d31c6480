//! One error type for the whole connection path.
//!
//! Every [`Error`] names the [`Stage`] that failed, keeps the underlying cause as its
//! [`source`](std::error::Error::source), and, where the cause is a known misconfiguration,
//! carries a one-line [`hint`](Error::hint) that says what to check. `Display` prints the
//! stage, the cause and the hint on one line, so `eprintln!("{err}")` is already a
//! diagnosis. No variant holds a token, a secret key or a session token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::diagnosis::{timeout_hint, HINT_DNS, HINT_TCP};
use crate::stage::Stage;
use crate::token::TokenError;

/// Boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Invalid settings, found before any I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required setting was not given.
    #[error("missing setting `{0}`")]
    Missing(&'static str),
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
}

/// An error on the path to a working connection.
///
/// It names the [`Stage`] that failed, keeps the underlying cause as its
/// [`source`](std::error::Error::source), and, where the cause is a known misconfiguration,
/// carries a one-line [`hint`](Error::hint). `Display` prints `stage: cause | hint: ...`
/// on one line. No variant holds a token, a secret key or a session token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings cannot work.
    #[error("config: {0}")]
    Config(#[from] ConfigError),

    /// No base credentials.
    #[error("credentials: {message}{}", hint_suffix(*hint))]
    Credentials {
        /// What the provider said.
        message: String,
        /// What to check.
        hint: Option<&'static str>,
        /// The provider's error.
        #[source]
        source: Option<BoxError>,
    },

    /// STS refused or failed the AssumeRole call.
    #[error("assume-role: {role_arn}: {message}{}", hint_suffix(*hint))]
    AssumeRole {
        /// The role that was to be assumed.
        role_arn: String,
        /// STS error code and message, or the transport failure.
        message: String,
        /// STS error code (`AccessDenied`, ...) when STS answered.
        code: Option<String>,
        /// What to check.
        hint: Option<&'static str>,
        /// The SDK error.
        #[source]
        source: Option<BoxError>,
    },

    /// The name did not resolve.
    #[error("dns: cannot resolve {host}: {source}{}", hint_suffix(Some(HINT_DNS)))]
    Dns {
        /// The name that was looked up.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },

    /// No TCP connection could be opened.
    #[error(
        "tcp: cannot connect to {address}: {reason}{}",
        hint_suffix(Some(HINT_TCP))
    )]
    Tcp {
        /// Where the connection was attempted (`host:port` and the addresses tried).
        address: String,
        /// `timed out after ...` or the socket error.
        reason: String,
        /// The socket error, when there was one.
        #[source]
        source: Option<std::io::Error>,
    },

    /// The TLS handshake failed, or the certificate did not verify.
    #[error("tls: handshake with {host} failed: {message}{}", hint_suffix(*hint))]
    Tls {
        /// The name the certificate was verified against.
        host: String,
        /// The TLS failure.
        message: String,
        /// What to check.
        hint: Option<&'static str>,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },

    /// The server refused the startup or the token.
    #[error("login: {login}: {message}{}", hint_suffix(*hint))]
    Login {
        /// Who logged in where: `user@host`.
        login: String,
        /// The server's message (with SQLSTATE) or the protocol failure.
        message: String,
        /// SQLSTATE, when the server sent an error.
        code: Option<String>,
        /// What to check.
        hint: Option<&'static str>,
        /// The tokio-postgres error.
        #[source]
        source: Option<BoxError>,
    },

    /// The test query failed on an open session.
    #[error("query: {message}")]
    Query {
        /// The failure.
        message: String,
        /// The tokio-postgres error.
        #[source]
        source: Option<BoxError>,
    },

    /// A stage did not finish within the connect timeout.
    #[error("{stage}: timed out after {}{}", humantime(*after), hint_suffix(timeout_hint(*stage)))]
    Timeout {
        /// The stage that was running.
        stage: Stage,
        /// The limit that was reached.
        after: Duration,
    },
}

impl Error {
    /// The stage that failed.
    pub fn stage(&self) -> Stage {
        match self {
            Error::Config(_) => Stage::Config,
            Error::Credentials { .. } => Stage::Credentials,
            Error::AssumeRole { .. } => Stage::AssumeRole,
            Error::Dns { .. } => Stage::Dns,
            Error::Tcp { .. } => Stage::Tcp,
            Error::Tls { .. } => Stage::Tls,
            Error::Login { .. } => Stage::Login,
            Error::Query { .. } => Stage::Query,
            Error::Timeout { stage, .. } => *stage,
        }
    }

    /// What to check, when the cause is a known misconfiguration.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Error::Config(_) | Error::Query { .. } => None,
            Error::Credentials { hint, .. }
            | Error::AssumeRole { hint, .. }
            | Error::Tls { hint, .. }
            | Error::Login { hint, .. } => *hint,
            Error::Dns { .. } => Some(HINT_DNS),
            Error::Tcp { .. } => Some(HINT_TCP),
            Error::Timeout { stage, .. } => timeout_hint(*stage),
        }
    }

    /// The error without its hint: what happened, for a message that places the hint
    /// elsewhere.
    pub fn cause(&self) -> String {
        let full = self.to_string();
        match full.split_once(HINT_SEPARATOR) {
            Some((cause, _)) => cause.to_owned(),
            None => full,
        }
    }
}

impl Error {
    /// Wraps a query failure on an open connection (for `?` in user code).
    pub fn from_query(e: tokio_postgres::Error) -> Error {
        crate::diagnosis::query_error(e)
    }
}

/// One failure handed to many callers (everyone who waited on a shared credential
/// refresh): each gets its own [`Error`] with the same fields, and a source chain that reads
/// like the original's (the original cause is shared, not copied).
pub(crate) struct SharedError {
    template: Error,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl SharedError {
    pub(crate) fn new(mut error: Error) -> Self {
        let source = error.take_source().map(Arc::from);
        Self {
            template: error,
            source,
        }
    }

    /// A copy for one caller.
    pub(crate) fn get(&self) -> Error {
        let mut error = self.template.copy_without_source();
        if let Some(source) = &self.source {
            error.set_source(Box::new(SharedSource(source.clone())));
        }
        error
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.template.fmt(f)
    }
}

/// A shared cause in an error chain: displays and chains like the cause itself.
#[derive(Debug)]
struct SharedSource(Arc<dyn std::error::Error + Send + Sync>);

impl fmt::Display for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl Error {
    fn take_source(&mut self) -> Option<BoxError> {
        match self {
            Error::Credentials { source, .. }
            | Error::AssumeRole { source, .. }
            | Error::Tls { source, .. }
            | Error::Login { source, .. }
            | Error::Query { source, .. } => source.take(),
            Error::Tcp { source, .. } => source.take().map(|e| Box::new(e) as BoxError),
            Error::Config(_) | Error::Dns { .. } | Error::Timeout { .. } => None,
        }
    }

    fn set_source(&mut self, new: BoxError) {
        match self {
            Error::Credentials { source, .. }
            | Error::AssumeRole { source, .. }
            | Error::Tls { source, .. }
            | Error::Login { source, .. }
            | Error::Query { source, .. } => *source = Some(new),
            Error::Config(_) | Error::Dns { .. } | Error::Tcp { .. } | Error::Timeout { .. } => {}
        }
    }

    /// A copy with the same fields, its cause kept as text (for reports kept after the
    /// error was handed to the caller).
    pub(crate) fn snapshot(&self) -> Error {
        let mut copy = self.copy_without_source();
        if let Some(source) = std::error::Error::source(self) {
            copy.set_source(source.to_string().into());
        }
        copy
    }

    fn copy_without_source(&self) -> Error {
        match self {
            Error::Config(c) => Error::Config(ConfigError::Invalid {
                name: "config",
                reason: c.to_string(),
            }),
            Error::Credentials { message, hint, .. } => Error::Credentials {
                message: message.clone(),
                hint: *hint,
                source: None,
            },
            Error::AssumeRole {
                role_arn,
                message,
                code,
                hint,
                ..
            } => Error::AssumeRole {
                role_arn: role_arn.clone(),
                message: message.clone(),
                code: code.clone(),
                hint: *hint,
                source: None,
            },
            Error::Dns { host, source } => Error::Dns {
                host: host.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Tcp {
                address, reason, ..
            } => Error::Tcp {
                address: address.clone(),
                reason: reason.clone(),
                source: None,
            },
            Error::Tls {
                host,
                message,
                hint,
                ..
            } => Error::Tls {
                host: host.clone(),
                message: message.clone(),
                hint: *hint,
                source: None,
            },
            Error::Login {
                login,
                message,
                code,
                hint,
                ..
            } => Error::Login {
                login: login.clone(),
                message: message.clone(),
                code: code.clone(),
                hint: *hint,
                source: None,
            },
            Error::Query { message, .. } => Error::Query {
                message: message.clone(),
                source: None,
            },
            Error::Timeout { stage, after } => Error::Timeout {
                stage: *stage,
                after: *after,
            },
        }
    }
}

const HINT_SEPARATOR: &str = " | hint: ";

fn hint_suffix(hint: Option<&'static str>) -> String {
    hint.map(|h| format!("{HINT_SEPARATOR}{h}"))
        .unwrap_or_default()
}

fn humantime(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_stage_cause_and_hint() {
        let err = Error::Tls {
            host: "db.example".into(),
            message: "invalid peer certificate: UnknownIssuer".into(),
            hint: Some(crate::diagnosis::HINT_TLS_ISSUER),
            source: None,
        };
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
        let err = Error::Timeout {
            stage: Stage::Tcp,
            after: Duration::from_secs(5),
        };
        assert!(err
            .to_string()
            .starts_with("tcp: timed out after 5.0 s | hint: check security groups"));
        assert_eq!(err.stage(), Stage::Tcp);
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
