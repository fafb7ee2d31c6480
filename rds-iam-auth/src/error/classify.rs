//! What each failure means: the one place that turns a cause (an SDK error, a rustls
//! error, a PostgreSQL error) into an [`Error`] with its [`Reason`], and each reason into
//! a one-line hint.
//!
//! The hints say what to check, most likely cause first. The messages they key on are
//! the ones RDS Proxy, STS and rustls really send; `ARCHITECTURE.md` lists them with their
//! sources.

use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};

use super::{Error, Reason};
use crate::stage::Stage;

pub(crate) const HINT_NO_CREDENTIALS: &str = "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where a role is attached (Lambda, ECS, EC2)";
pub(crate) const HINT_STALE_CREDENTIALS: &str =
    "refresh the credentials of this host (aws sso login, a new session)";
pub(crate) const HINT_ASSUME_ROLE_DENIED: &str = "the role's trust policy must name the caller's role ARN, the external ID must match its sts:ExternalId condition, and the caller needs sts:AssumeRole on that role";
pub(crate) const HINT_STS_UNREACHABLE: &str = "STS is unreachable: check the STS VPC endpoint (private DNS on), its security group (443 from this function), or AWS_ENDPOINT_URL_STS";
pub(crate) const HINT_STS_UNAVAILABLE: &str = "STS is unavailable or throttling this caller (the SDK retried): sessions go on with cached credentials while they last; check the AWS Health Dashboard for STS in this region and how often this caller assumes the role";
pub(crate) const HINT_STS_BAD_CALLER: &str = "the caller's own credentials were rejected by STS: check they are current, not expired, and for this partition";
pub(crate) const HINT_DNS: &str = "check the proxy endpoint name and that the VPC has DNS resolution and DNS host names enabled (proxy endpoints resolve only inside their VPC)";
pub(crate) const HINT_TCP: &str = "check security groups (5432 from this client to the proxy endpoint), subnet routes / RAM-shared subnets, and that the proxy endpoint is in this VPC";
pub(crate) const HINT_TLS_NAME: &str = "the certificate does not match the host name: connect to the proxy endpoint name (use connect_address / DB_CONNECT_HOST to dial another address)";
pub(crate) const HINT_TLS_ISSUER: &str = "unknown certificate issuer: RDS Proxy chains to Amazon Root CA (built in); a direct DB instance or a local stack needs its CA bundle (ca_bundle / DB_CA_BUNDLE)";
pub(crate) const HINT_TLS_EXPIRED: &str = "the server certificate is expired or not yet valid: check the clock of this host and the certificate rotation of the endpoint";
pub(crate) const HINT_TLS_REFUSED: &str = "the server does not accept TLS: check that this is an RDS Proxy or PostgreSQL endpoint with TLS enabled";
pub(crate) const HINT_IAM_FAILED: &str = "check rds-db:connect on arn:aws:rds-db:REGION:ACCOUNT:dbuser:prx-RESOURCEID/DBUSER for the assumed role, the token's region, the clock (skew), and that the credentials are not expired";
pub(crate) const HINT_NO_SECRET: &str = "the proxy has no secret for this database user: add a Secrets Manager secret with this user name to the proxy's auth, or use the user name the secret holds";
// One reason covers both limits (the SQLSTATE is the same); the message says which was hit.
pub(crate) const HINT_TOO_MANY: &str = "a connection limit is reached: the proxy's client limit (\"maximum number of client connections\") or, on a direct connection or behind a pool that logs in per client, the database's max_connections (\"too many clients\", \"remaining connection slots\"): close idle connections or raise the limit the message names";
pub(crate) const HINT_PROXY_OPTION: &str = "RDS Proxy accepts only user, database, application_name, client_encoding, DateStyle, TimeZone, extra_float_digits and search_path at startup: drop `options` and set such defaults on the role (ALTER ROLE ... SET), or in after_connect (which pins the session)";
pub(crate) const HINT_READ_ONLY: &str = "target_session_attrs=read-write reached a read-only session: is this the READ_ONLY endpoint, or a writer demoted by a failover?";
pub(crate) const HINT_READ_WRITE: &str = "target_session_attrs=read-only reached a session that allows writes: is this the READ_WRITE endpoint?";
pub(crate) const HINT_NO_DATABASE: &str = "check the database name (DBNAME / --database)";
pub(crate) const HINT_SECRET_DENIED: &str = "the secret's resource policy and the policy of its customer managed KMS key must both allow this role, and the role's identity policy must allow secretsmanager:GetSecretValue on the secret and kms:Decrypt on the key; the AWS managed key aws/secretsmanager cannot be used across accounts";
pub(crate) const HINT_SECRET_NOT_FOUND: &str = "no secret with this ARN: check the ARN (DB_SECRET_ARN / --secret-arn), including its region and random suffix, and that the secret is not deleted";
pub(crate) const HINT_DECRYPTION: &str = "the value could not be decrypted: the KMS key's policy must allow kms:Decrypt for the reader, and the key must be enabled";
pub(crate) const HINT_SECRET_INVALID: &str = "an RDS secret is a JSON SecretString with a non-empty `password` (and optionally username, host, port, dbname): check the secret's current value (AWSCURRENT)";
pub(crate) const HINT_PARAMETER_DENIED: &str = "the caller's identity policy must allow ssm:GetParameter (ssm:GetParametersByPath for a settings path) on the parameter, and kms:Decrypt on the key of a SecureString";
pub(crate) const HINT_PARAMETER_NOT_FOUND: &str = "no such parameter: check its name (DB_PASSWORD_PARAMETER / CONFIG_PARAMETER_PATH) and the region";
pub(crate) const HINT_SECRET_UNAVAILABLE: &str = "the service is unavailable or throttling this caller (the SDK retried): a cached password keeps serving; check the AWS Health Dashboard and how often passwords are read (cache TTL)";
pub(crate) const HINT_SECRET_UNREACHABLE: &str = "Secrets Manager / Parameter Store is unreachable: check the secretsmanager / ssm VPC endpoints (private DNS on) and their security groups (443 from this client), or AWS_ENDPOINT_URL_SECRETS_MANAGER / AWS_ENDPOINT_URL_SSM";
pub(crate) const HINT_PASSWORD_REFUSED: &str = "the database refused the stored password: if the secret was just rotated, the next read gets the new value (it was read again once); otherwise the secret's AWSCURRENT value and the database user's password disagree: check the rotation function's last run and the user name";

/// What to check for `reason` at `stage`: the one table of hints.
pub(crate) fn hint(reason: Reason, stage: Stage) -> Option<&'static str> {
    match reason {
        Reason::NoCredentials => Some(HINT_NO_CREDENTIALS),
        Reason::StaleCredentials if stage == Stage::AssumeRole => Some(HINT_STS_BAD_CALLER),
        Reason::StaleCredentials => Some(HINT_STALE_CREDENTIALS),
        Reason::AccessDenied => Some(HINT_ASSUME_ROLE_DENIED),
        Reason::CallerRejected => Some(HINT_STS_BAD_CALLER),
        Reason::StsUnreachable => Some(HINT_STS_UNREACHABLE),
        Reason::StsUnavailable => Some(HINT_STS_UNAVAILABLE),
        Reason::NameNotResolved => Some(HINT_DNS),
        Reason::ConnectFailed => Some(HINT_TCP),
        Reason::Timeout => timeout_hint(stage),
        Reason::TlsRequired => Some(HINT_TLS_REFUSED),
        Reason::CertificateNameMismatch => Some(HINT_TLS_NAME),
        Reason::UntrustedCertificate => Some(HINT_TLS_ISSUER),
        Reason::CertificateExpired => Some(HINT_TLS_EXPIRED),
        Reason::IamRefused => Some(HINT_IAM_FAILED),
        Reason::NoSecretForUser => Some(HINT_NO_SECRET),
        Reason::TooManyConnections => Some(HINT_TOO_MANY),
        Reason::StartupOptionRefused => Some(HINT_PROXY_OPTION),
        Reason::DatabaseNotFound => Some(HINT_NO_DATABASE),
        Reason::ReadOnlySession => Some(HINT_READ_ONLY),
        Reason::WritableSession => Some(HINT_READ_WRITE),
        Reason::SecretAccessDenied => Some(HINT_SECRET_DENIED),
        Reason::SecretNotFound => Some(HINT_SECRET_NOT_FOUND),
        Reason::SecretDecryptionFailed => Some(HINT_DECRYPTION),
        Reason::SecretInvalid if stage == Stage::Secret => Some(HINT_SECRET_INVALID),
        Reason::ParameterAccessDenied => Some(HINT_PARAMETER_DENIED),
        Reason::ParameterNotFound => Some(HINT_PARAMETER_NOT_FOUND),
        Reason::SecretServiceUnavailable => Some(HINT_SECRET_UNAVAILABLE),
        Reason::SecretServiceUnreachable => Some(HINT_SECRET_UNREACHABLE),
        Reason::PasswordRefused => Some(HINT_PASSWORD_REFUSED),
        Reason::InvalidConfig
        | Reason::SecretInvalid
        | Reason::SecretFailed
        | Reason::CredentialsFailed
        | Reason::TlsFailed
        | Reason::LoginFailed
        | Reason::QueryFailed => None,
    }
}

/// The hint of a stage that ran out of time.
fn timeout_hint(stage: Stage) -> Option<&'static str> {
    match stage {
        Stage::Tcp | Stage::Tls | Stage::Login => Some(HINT_TCP),
        Stage::AssumeRole => Some(HINT_STS_UNREACHABLE),
        Stage::Credentials => Some(HINT_NO_CREDENTIALS),
        Stage::Secret | Stage::Parameters => Some(HINT_SECRET_UNREACHABLE),
        _ => None,
    }
}

/// The base credential provider failed.
pub(crate) fn credentials_error(e: CredentialsError) -> Error {
    Error::new(Stage::Credentials, Reason::NoCredentials, error_chain(&e)).with_source(e)
}

/// No credentials provider at all (none given, none in the SDK configuration).
pub(crate) fn no_credentials_provider() -> Error {
    Error::new(
        Stage::Credentials,
        Reason::NoCredentials,
        "no credentials provider is configured",
    )
}

/// The stage of a credentials fetch: assume-role when a role is assumed, else credentials.
pub(crate) fn fetch_stage(role_arn: Option<&str>) -> Stage {
    match role_arn {
        Some(_) => Stage::AssumeRole,
        None => Stage::Credentials,
    }
}

/// A credentials fetch failed with `message` (no cause of its own): at assume-role (after
/// the role's ARN) when a role is assumed, else at credentials.
fn fetch_failed(role_arn: Option<&str>, reason: Reason, message: &str) -> Error {
    match role_arn {
        Some(role_arn) => Error::new(Stage::AssumeRole, reason, format!("{role_arn}: {message}")),
        None => Error::new(Stage::Credentials, reason, message),
    }
}

/// A provider handed out credentials that expire in `remaining_secs` (too soon to use).
pub(crate) fn stale_credentials(role_arn: Option<&str>, remaining_secs: u64) -> Error {
    let message = format!("the provider returned credentials that expire in {remaining_secs} s");
    fetch_failed(role_arn, Reason::StaleCredentials, &message)
}

/// A credential refresh that ended without an outcome (a provider that panicked, a runtime
/// that shut down under it).
pub(crate) fn refresh_lost(role_arn: Option<&str>, message: &str) -> Error {
    fetch_failed(role_arn, Reason::CredentialsFailed, message)
}

/// STS answered AssumeRole with no usable credentials.
pub(crate) fn sts_answer_error(role_arn: &str, message: &str) -> Error {
    fetch_failed(Some(role_arn), Reason::CredentialsFailed, message)
}

/// STS refused or could not be reached.
pub(crate) fn sts_error<E, R>(role_arn: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let reason_of = |code: &str| match code {
        "AccessDenied" => Reason::AccessDenied,
        "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "ExpiredTokenException" => Reason::CallerRejected,
        // STS's own word for "not now": retryable errors the SDK gave up on.
        "ServiceUnavailable"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "InternalFailure"
        | "InternalError" => Reason::StsUnavailable,
        _ => Reason::CredentialsFailed,
    };
    let service = Service {
        name: "STS",
        stage: Stage::AssumeRole,
        unreachable: Reason::StsUnreachable,
        failed: Reason::CredentialsFailed,
    };
    service.error(role_arn, err, reason_of)
}

/// Secrets Manager refused `GetSecretValue` on `secret_arn`, or could not be reached.
pub(crate) fn secret_error<E, R>(secret_arn: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let service = Service::password_store("Secrets Manager", Stage::Secret);
    service.error(secret_arn, err, |code| match code {
        "AccessDeniedException" => Reason::SecretAccessDenied,
        "ResourceNotFoundException" => Reason::SecretNotFound,
        "DecryptionFailure" => Reason::SecretDecryptionFailed,
        other => unavailable_or_failed(other),
    })
}

/// Parameter Store refused a read of `name` (at `stage`: the password, or the settings),
/// or could not be reached.
pub(crate) fn parameter_error<E, R>(stage: Stage, name: &str, err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let service = Service::password_store("Parameter Store", stage);
    service.error(name, err, |code| match code {
        "AccessDeniedException" => Reason::ParameterAccessDenied,
        "ParameterNotFound" | "ParameterVersionNotFound" => Reason::ParameterNotFound,
        "InvalidKeyId" => Reason::SecretDecryptionFailed,
        other => unavailable_or_failed(other),
    })
}

/// The codes Secrets Manager and Parameter Store share for "not now": retryable errors
/// the SDK gave up on.
fn unavailable_or_failed(code: &str) -> Reason {
    match code {
        "ThrottlingException"
        | "Throttling"
        | "TooManyUpdates"
        | "ServiceUnavailable"
        | "InternalServiceError"
        | "InternalServerError"
        | "InternalFailure" => Reason::SecretServiceUnavailable,
        _ => Reason::SecretFailed,
    }
}

/// An AWS service whose SDK errors become errors of one stage.
struct Service {
    name: &'static str,
    stage: Stage,
    /// The reason of a request that never got an answer (DNS, connect, timeout).
    unreachable: Reason,
    /// The reason of any other failure without an error code.
    failed: Reason,
}

impl Service {
    fn password_store(name: &'static str, stage: Stage) -> Self {
        Service {
            name,
            stage,
            unreachable: Reason::SecretServiceUnreachable,
            failed: Reason::SecretFailed,
        }
    }

    /// `err` about `what` (a role, a secret, a parameter): the service's error code read by
    /// `reason_of`, or where the request got no answer.
    fn error<E, R>(
        &self,
        what: &str,
        err: SdkError<E, R>,
        reason_of: impl Fn(&str) -> Reason,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        let (message, code, reason) = match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                let code = e.code().map(str::to_owned);
                let reason = code.as_deref().map_or(self.failed, &reason_of);
                let message = format!(
                    "{}: {}",
                    code.as_deref().unwrap_or("error"),
                    e.message().unwrap_or("(no message)")
                );
                (message, code, reason)
            }
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (
                format!("{} unreachable: {}", self.name, error_chain(&err)),
                None,
                self.unreachable,
            ),
            _ => (error_chain(&err), None, self.failed),
        };
        Error::new(self.stage, reason, format!("{what}: {message}"))
            .with_aws_code(code)
            .with_source(err)
    }
}

/// The secret or parameter `what` was read but its value cannot be used (`message` says
/// why and never quotes the value).
pub(crate) fn secret_invalid(what: &str, message: &str) -> Error {
    Error::new(
        Stage::Secret,
        Reason::SecretInvalid,
        format!("{what}: {message}"),
    )
}

/// A password read that ended without an outcome (a panic, a runtime shut down under it).
pub(crate) fn secret_lost(what: &str, message: &str) -> Error {
    Error::new(
        Stage::Secret,
        Reason::SecretFailed,
        format!("{what}: {message}"),
    )
}

/// A login refusal on the password path: 28P01 is the stored password refused, whatever
/// the message (RDS Proxy's IAM wording included), so the hint is about the secret.
pub(crate) fn password_login_error(e: Error) -> Error {
    if e.sqlstate() == Some("28P01") {
        e.with_reason(Reason::PasswordRefused)
    } else {
        e
    }
}

/// `host` did not resolve.
pub(crate) fn dns_error(host: &str, e: std::io::Error) -> Error {
    Error::new(
        Stage::Dns,
        Reason::NameNotResolved,
        format!("cannot resolve {host}: {e}"),
    )
    .with_source(e)
}

/// No TCP connection to `address` (`host:port` and the addresses tried): `reason` says why.
pub(crate) fn tcp_error(address: &str, reason: &str, source: Option<std::io::Error>) -> Error {
    let error = Error::new(
        Stage::Tcp,
        Reason::ConnectFailed,
        format!("cannot connect to {address}: {reason}"),
    );
    match source {
        Some(source) => error.with_source(source),
        None => error,
    }
}

/// The server declined TLS (or is no PostgreSQL server).
pub(crate) fn tls_refused(host: &str, message: &str) -> Error {
    Error::new(
        Stage::Tls,
        Reason::TlsRequired,
        format!("handshake with {host} failed: {message}"),
    )
}

/// The TLS handshake with `host` failed (before the server saw a password).
pub(crate) fn tls_error(host: &str, e: std::io::Error) -> Error {
    let certificate = find_cause::<rustls::Error>(&e).and_then(|rustls_error| {
        use rustls::CertificateError as C;
        match rustls_error {
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => Some(Reason::CertificateNameMismatch),
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
                Some(Reason::UntrustedCertificate)
            }
            rustls::Error::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => Some(Reason::CertificateExpired),
            _ => None,
        }
    });
    let reason = certificate.unwrap_or(if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Reason::TlsRequired
    } else {
        Reason::TlsFailed
    });
    let message = error_chain(&e);
    Error::new(
        Stage::Tls,
        reason,
        format!("handshake with {host} failed: {message}"),
    )
    .with_source(e)
}

/// A session whose `transaction_read_only` is not what `target_session_attrs` asks for.
pub(crate) fn session_attrs_error(user: &str, host: &str, read_only: bool) -> Error {
    let (message, reason) = if read_only {
        (
            "the session is read-only, target_session_attrs wants read-write",
            Reason::ReadOnlySession,
        )
    } else {
        (
            "the session allows writes, target_session_attrs wants read-only",
            Reason::WritableSession,
        )
    };
    Error::new(Stage::Login, reason, format!("{user}@{host}: {message}"))
}

/// What a refused login means: RDS Proxy's own messages first (its SQLSTATEs are generic),
/// then the SQLSTATE. Shared by every path that logs in (tokio-postgres, sqlx).
pub(crate) fn login_reason(text: &str, sqlstate: Option<&str>) -> Reason {
    if text.contains("IAM authentication failed") {
        Reason::IamRefused
    } else if text.contains("has no credentials for the role") {
        Reason::NoSecretForUser
    } else if text.contains("maximum number of client connections") {
        Reason::TooManyConnections
    } else if text.contains("doesn't support the option") {
        Reason::StartupOptionRefused
    } else if text.contains("requires TLS") || text.contains("only with SSL") {
        Reason::TlsRequired
    } else {
        match sqlstate {
            Some("28P01") => Reason::IamRefused,
            Some("3D000") => Reason::DatabaseNotFound,
            Some("53300") => Reason::TooManyConnections,
            _ => Reason::LoginFailed,
        }
    }
}

/// The server refused the startup or the token (after TLS), or the login broke off.
pub(crate) fn login_error(user: &str, host: &str, e: tokio_postgres::Error) -> Error {
    let (message, code, reason) = match e.as_db_error() {
        Some(db) => {
            let text = db.message();
            let sqlstate = db.code().code();
            (
                format!("{} {sqlstate}: {text}", db.severity()),
                Some(sqlstate.to_owned()),
                login_reason(text, Some(sqlstate)),
            )
        }
        None => (error_chain(&e), None, Reason::LoginFailed),
    };
    login_failure(user, host, reason, &message, code).with_source(e)
}

/// A refused login of `user` at `host`, from any client library.
pub(crate) fn login_failure(
    user: &str,
    host: &str,
    reason: Reason,
    message: &str,
    sqlstate: Option<String>,
) -> Error {
    Error::new(Stage::Login, reason, format!("{user}@{host}: {message}")).with_sqlstate(sqlstate)
}

/// The after-connect hook failed on a new session.
pub(crate) fn after_connect_error(e: tokio_postgres::Error) -> Error {
    let (message, code) = query_message(&e);
    Error::new(
        Stage::Query,
        Reason::QueryFailed,
        format!("after-connect hook: {message}"),
    )
    .with_sqlstate(code)
    .with_source(e)
}

/// A query failed on an open session.
pub(crate) fn query_error(e: tokio_postgres::Error) -> Error {
    let (message, code) = query_message(&e);
    Error::new(Stage::Query, Reason::QueryFailed, message)
        .with_sqlstate(code)
        .with_source(e)
}

fn query_message(e: &tokio_postgres::Error) -> (String, Option<String>) {
    match e.as_db_error() {
        Some(db) => (
            format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
            Some(db.code().code().to_owned()),
        ),
        None => (error_chain(e), None),
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
