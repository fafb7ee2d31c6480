//! The stages of one connection: their names as reports and logs print them, and how
//! those print a stage's time.

use std::fmt;
use std::time::Duration;

/// A step of the path of one connection, in order (`ARCHITECTURE.md` maps each to its
/// module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Stage {
    /// Settings read from Parameter Store (`Config::from_parameters`).
    Parameters,
    /// Settings given by the caller (before any I/O).
    Config,
    /// Base credentials from the default provider chain (or the ones supplied).
    Credentials,
    /// `sts:AssumeRole` into the database account.
    AssumeRole,
    /// Reading the database password from its Secrets Manager secret or Parameter Store
    /// parameter (instead of `Token`, for databases not on IAM authentication).
    Secret,
    /// Signing the IAM auth token.
    Token,
    /// Resolving the endpoint (or the override address).
    Dns,
    /// Opening the TCP connection.
    Tcp,
    /// TLS handshake and certificate verification.
    Tls,
    /// PostgreSQL startup with the token (or the stored password) as the password.
    Login,
    /// The trivial read that proves the session works.
    Query,
}

impl Stage {
    /// All stages in path order.
    pub const ALL: [Stage; 11] = [
        Stage::Parameters,
        Stage::Config,
        Stage::Credentials,
        Stage::AssumeRole,
        Stage::Secret,
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
            Stage::Parameters => "parameters",
            Stage::Config => "config",
            Stage::Credentials => "credentials",
            Stage::AssumeRole => "assume-role",
            Stage::Secret => "secret",
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
            Stage::Parameters => "ParameterFailed",
            Stage::Config => "ConfigurationError",
            Stage::Credentials => "CredentialsFailed",
            Stage::AssumeRole => "AssumeRoleFailed",
            Stage::Secret => "SecretFailed",
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

/// A duration as reports and errors print it: `12.3 ms` below a second, `1.5 s` above.
pub(crate) fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
