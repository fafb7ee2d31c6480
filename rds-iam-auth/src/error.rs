//! One error type for the whole connection path.
//!
//! Every [`Error`] names the [`Stage`] that failed, keeps the underlying cause as its
//! [`source`](std::error::Error::source), and, where the cause is a known misconfiguration,
//! carries a one-line [`hint`](Error::hint) that says what to check. `Display` prints the
//! stage, the cause and the hint on one line, so `eprintln!("{err}")` is already a
//! diagnosis. No variant holds a token, a secret key or a session token.

use std::fmt;
use std::time::Duration;

use crate::token::TokenError;

/// Boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A step of the path of one connection (DESIGN.md 2), in order.
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
    /// The extra CA bundle could not be read or holds no certificate.
    #[error("CA bundle {path}: {reason}")]
    CaBundle {
        /// Where the bundle was read from (`<memory>` for bytes).
        path: String,
        /// What went wrong.
        reason: String,
    },
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
        let message = match e.as_db_error() {
            Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
            None => error_chain(&e),
        };
        Error::Query {
            message,
            source: Some(Box::new(e)),
        }
    }
}

/// The error's messages joined with ": " (SDK errors keep the real reason in sources),
/// on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    // One line: the credential chain lists its providers on lines of their own.
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .replace(":; ", ": ")
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

fn timeout_hint(stage: Stage) -> Option<&'static str> {
    match stage {
        Stage::Tcp | Stage::Tls | Stage::Login => Some(HINT_TCP),
        Stage::AssumeRole => Some(HINT_STS_UNREACHABLE),
        Stage::Credentials => Some(HINT_NO_CREDENTIALS),
        _ => None,
    }
}

// Hints (DESIGN.md 6). One line each: what to check, most likely first.
pub(crate) const HINT_NO_CREDENTIALS: &str = "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where a role is attached (Lambda, ECS, EC2)";
pub(crate) const HINT_ASSUME_ROLE_DENIED: &str = "the role's trust policy must name the caller's role ARN, the external ID must match its sts:ExternalId condition, and the caller needs sts:AssumeRole on that role";
pub(crate) const HINT_STS_UNREACHABLE: &str = "STS is unreachable: check the STS VPC endpoint (private DNS on), its security group (443 from this function), or AWS_ENDPOINT_URL_STS";
pub(crate) const HINT_STS_BAD_CALLER: &str = "the caller's own credentials were rejected by STS: check they are current, not expired, and for this partition";
pub(crate) const HINT_DNS: &str = "check the proxy endpoint name and that the VPC has DNS resolution and DNS host names enabled (proxy endpoints resolve only inside their VPC)";
pub(crate) const HINT_TCP: &str = "check security groups (5432 from this client to the proxy endpoint), subnet routes / RAM-shared subnets, and that the proxy endpoint is in this VPC";
pub(crate) const HINT_TLS_NAME: &str = "the certificate does not match the host name: connect to the proxy endpoint name (use connect_address / DB_CONNECT_HOST to dial another address)";
pub(crate) const HINT_TLS_ISSUER: &str = "unknown certificate issuer: RDS Proxy chains to Amazon Root CA (built in); a direct DB instance or a local stack needs its CA bundle (ca_bundle / DB_CA_BUNDLE)";
pub(crate) const HINT_TLS_EXPIRED: &str = "the server certificate is expired or not yet valid: check the clock of this host and the certificate rotation of the endpoint";
pub(crate) const HINT_TLS_REFUSED: &str = "the server does not accept TLS: check that this is an RDS Proxy or PostgreSQL endpoint with TLS enabled";
pub(crate) const HINT_IAM_FAILED: &str = "check rds-db:connect on arn:aws:rds-db:REGION:ACCOUNT:dbuser:prx-RESOURCEID/DBUSER for the assumed role, the token's region, the clock (skew), and that the credentials are not expired";
pub(crate) const HINT_NO_SECRET: &str = "the proxy has no secret for this database user: add a Secrets Manager secret with this user name to the proxy's auth, or use the user name the secret holds";
pub(crate) const HINT_TOO_MANY: &str =
    "the proxy's client connection limit is reached: close idle connections or raise the limit";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_stage_cause_and_hint() {
        let err = Error::Tls {
            host: "db.example".into(),
            message: "invalid peer certificate: UnknownIssuer".into(),
            hint: Some(HINT_TLS_ISSUER),
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
