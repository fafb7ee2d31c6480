//! What each failure means: the one place that turns a cause (an SDK error, a rustls
//! error, a PostgreSQL error) into a stage [`Error`] with a one-line hint.
//!
//! The hints say what to check, most likely cause first. The messages they key on are
//! the ones RDS Proxy, STS and rustls really send; `ARCHITECTURE.md` lists them with their
//! sources.

use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};

use crate::error::Error;
use crate::stage::Stage;

pub(crate) const HINT_NO_CREDENTIALS: &str = "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where a role is attached (Lambda, ECS, EC2)";
pub(crate) const HINT_STALE_CREDENTIALS: &str =
    "refresh the credentials of this host (aws sso login, a new session)";
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
pub(crate) const HINT_PROXY_OPTION: &str = "RDS Proxy accepts only user, database, application_name, client_encoding, DateStyle, TimeZone, extra_float_digits and search_path at startup: drop `options` and set such defaults on the role (ALTER ROLE ... SET), or in after_connect (which pins the session)";
pub(crate) const HINT_READ_ONLY: &str = "target_session_attrs=read-write reached a read-only session: is this the READ_ONLY endpoint, or a writer demoted by a failover?";
pub(crate) const HINT_READ_WRITE: &str = "target_session_attrs=read-only reached a session that allows writes: is this the READ_WRITE endpoint?";
pub(crate) const HINT_NO_DATABASE: &str = "check the database name (DBNAME / --database)";

/// The hint of a stage that ran out of time.
pub(crate) fn timeout_hint(stage: Stage) -> Option<&'static str> {
    match stage {
        Stage::Tcp | Stage::Tls | Stage::Login => Some(HINT_TCP),
        Stage::AssumeRole => Some(HINT_STS_UNREACHABLE),
        Stage::Credentials => Some(HINT_NO_CREDENTIALS),
        _ => None,
    }
}

/// The base credential provider failed.
pub(crate) fn credentials_error(e: CredentialsError) -> Error {
    Error::Credentials {
        message: error_chain(&e),
        hint: Some(HINT_NO_CREDENTIALS),
        source: Some(Box::new(e)),
    }
}

/// A provider handed out credentials that expire in `remaining_secs` (too soon to use).
pub(crate) fn stale_credentials(stage: Stage, role_arn: &str, remaining_secs: u64) -> Error {
    let message = format!("the provider returned credentials that expire in {remaining_secs} s");
    match stage {
        Stage::AssumeRole => Error::AssumeRole {
            role_arn: role_arn.to_owned(),
            message,
            code: None,
            hint: Some(HINT_STS_BAD_CALLER),
            source: None,
        },
        _ => Error::Credentials {
            message,
            hint: Some(HINT_STALE_CREDENTIALS),
            source: None,
        },
    }
}

/// A credential refresh that ended without an outcome (see `credentials::Refresh`): at
/// assume-role when a role is assumed, else at credentials.
pub(crate) fn refresh_lost(role_arn: Option<&str>, message: &str) -> Error {
    match role_arn {
        Some(role_arn) => Error::AssumeRole {
            role_arn: role_arn.to_owned(),
            message: message.to_owned(),
            code: None,
            hint: None,
            source: None,
        },
        None => Error::Credentials {
            message: message.to_owned(),
            hint: None,
            source: None,
        },
    }
}

/// STS answered AssumeRole with no usable credentials.
pub(crate) fn sts_answer_error(role_arn: &str, message: String) -> Error {
    Error::AssumeRole {
        role_arn: role_arn.to_owned(),
        message,
        code: None,
        hint: None,
        source: None,
    }
}

/// STS refused or could not be reached.
pub(crate) fn sts_error<E, R>(role_arn: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let (message, code, hint) = match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = e.code().map(str::to_owned);
            let hint = match code.as_deref() {
                Some("AccessDenied") => Some(HINT_ASSUME_ROLE_DENIED),
                Some(
                    "InvalidClientTokenId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "ExpiredTokenException",
                ) => Some(HINT_STS_BAD_CALLER),
                _ => None,
            };
            let message = format!(
                "{}: {}",
                code.as_deref().unwrap_or("error"),
                e.message().unwrap_or("(no message)")
            );
            (message, code, hint)
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (
            format!("STS unreachable: {}", error_chain(&err)),
            None,
            Some(HINT_STS_UNREACHABLE),
        ),
        _ => (error_chain(&err), None, None),
    };
    Error::AssumeRole {
        role_arn: role_arn.to_owned(),
        message,
        code,
        hint,
        source: Some(Box::new(err)),
    }
}

/// The server declined TLS (or is no PostgreSQL server).
pub(crate) fn tls_refused(host: &str, message: &str) -> Error {
    Error::Tls {
        host: host.to_owned(),
        message: message.to_owned(),
        hint: Some(HINT_TLS_REFUSED),
        source: None,
    }
}

/// The TLS handshake with `host` failed (before the server saw a password).
pub(crate) fn tls_error(host: &str, e: std::io::Error) -> Error {
    let mut hint = find_cause::<rustls::Error>(&e).and_then(|rustls_error| {
        use rustls::CertificateError as C;
        match rustls_error {
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => Some(HINT_TLS_NAME),
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => Some(HINT_TLS_ISSUER),
            rustls::Error::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => Some(HINT_TLS_EXPIRED),
            _ => None,
        }
    });
    let message = error_chain(&e);
    if hint.is_none() && e.kind() == std::io::ErrorKind::UnexpectedEof {
        hint = Some(HINT_TLS_REFUSED);
    }
    Error::Tls {
        host: host.to_owned(),
        message,
        hint,
        source: Some(Box::new(e)),
    }
}

/// The server refused the startup or the token (after TLS).
/// A session whose `transaction_read_only` is not what `target_session_attrs` asks for.
pub(crate) fn session_attrs_error(user: &str, host: &str, read_only: bool) -> Error {
    let (message, hint) = if read_only {
        (
            "the session is read-only, target_session_attrs wants read-write",
            HINT_READ_ONLY,
        )
    } else {
        (
            "the session allows writes, target_session_attrs wants read-only",
            HINT_READ_WRITE,
        )
    };
    Error::Login {
        login: format!("{user}@{host}"),
        message: message.to_owned(),
        code: None,
        hint: Some(hint),
        source: None,
    }
}

/// The hint for a login the server refused: RDS Proxy's own messages first (its SQLSTATEs
/// are generic), then the SQLSTATE. Shared by every path that logs in (tokio-postgres, sqlx).
pub(crate) fn login_hint(text: &str, sqlstate: Option<&str>) -> Option<&'static str> {
    if text.contains("IAM authentication failed") {
        Some(HINT_IAM_FAILED)
    } else if text.contains("has no credentials for the role") {
        Some(HINT_NO_SECRET)
    } else if text.contains("maximum number of client connections") {
        Some(HINT_TOO_MANY)
    } else if text.contains("doesn't support the option") {
        Some(HINT_PROXY_OPTION)
    } else if text.contains("requires TLS") || text.contains("only with SSL") {
        Some(HINT_TLS_REFUSED)
    } else {
        match sqlstate {
            Some("28P01") => Some(HINT_IAM_FAILED),
            Some("3D000") => Some(HINT_NO_DATABASE),
            _ => None,
        }
    }
}

pub(crate) fn login_error(user: &str, host: &str, e: tokio_postgres::Error) -> Error {
    let (message, code, hint) = match e.as_db_error() {
        Some(db) => {
            let text = db.message();
            let sqlstate = db.code().code();
            let hint = login_hint(text, Some(sqlstate));
            (
                format!("{} {sqlstate}: {text}", db.severity()),
                Some(sqlstate.to_owned()),
                hint,
            )
        }
        None => (error_chain(&e), None, None),
    };
    Error::Login {
        login: format!("{user}@{host}"),
        message,
        code,
        hint,
        source: Some(Box::new(e)),
    }
}

/// Whether the proxy refused the token itself (not the user, the database or TLS): the
/// credentials that signed it may no longer be valid.
pub(crate) fn is_iam_refusal(error: &Error) -> bool {
    matches!(error, Error::Login { hint: Some(hint), .. } if *hint == HINT_IAM_FAILED)
}

/// The after-connect hook failed on a new session.
pub(crate) fn after_connect_error(e: tokio_postgres::Error) -> Error {
    match query_error(e) {
        Error::Query { message, source } => Error::Query {
            message: format!("after-connect hook: {message}"),
            source,
        },
        other => other,
    }
}

/// A query failed on an open session.
pub(crate) fn query_error(e: tokio_postgres::Error) -> Error {
    let message = match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => error_chain(&e),
    };
    Error::Query {
        message,
        source: Some(Box::new(e)),
    }
}

/// The first cause of type `T` in `e`'s chain, also inside `io::Error`s (whose `source()`
/// skips the error they wrap).
pub(crate) fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source = Some(e);
    while let Some(s) = source {
        let wrapped = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<T>());
        if let Some(found) = s.downcast_ref::<T>().or(wrapped) {
            return Some(found);
        }
        source = s.source();
    }
    None
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
