//! Credentials that sign tokens: the caller's own, or a role assumed in the database account.
//!
//! The base credentials come from the default provider chain of `aws-config` (environment,
//! profile, web identity, ECS/Lambda) or from any provider the caller supplies. With
//! [`AssumeRole`] settings, they are exchanged for the database account's role through
//! `sts:AssumeRole`, with the external ID that role's trust policy requires. The STS client
//! follows the SDK's endpoint conventions (`AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`), which
//! is how the local stack is reached.
//!
//! [`CredentialCache`] holds the result. It is what the AWS SDK's own `AssumeRoleProvider`
//! lacks:
//! - credentials are refreshed *before* they expire, with a margin at least as long as a
//!   token lives ([`REFRESH_MARGIN`]), so a token signed now outlives no credentials;
//! - refreshing is single-flight: N concurrent connects cause one STS call;
//! - expired credentials are never handed out: a provider that returns them is an error.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::Mutex;

use crate::error::{
    error_chain, Error, HINT_ASSUME_ROLE_DENIED, HINT_NO_CREDENTIALS, HINT_STS_BAD_CALLER,
    HINT_STS_UNREACHABLE,
};
use crate::report::{Outcome, Recorder};
use crate::token::MAX_EXPIRES_IN;
use crate::Stage;

/// How long before expiry cached credentials are replaced: a token's full life plus a
/// minute of clock skew, so every token is signed by credentials that outlive it.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(MAX_EXPIRES_IN.as_secs() + 60);

/// Credentials closer than this to expiry are never used, whatever their lifetime.
const MIN_REMAINING: Duration = Duration::from_secs(5);

/// Settings of `sts:AssumeRole` into the database account.
#[derive(Clone, PartialEq, Eq)]
pub struct AssumeRole {
    /// ARN of the role in the database account.
    pub role_arn: String,
    /// The external ID its trust policy requires (`sts:ExternalId`), if any.
    pub external_id: Option<String>,
    /// Session name, visible in CloudTrail of the database account.
    pub session_name: String,
    /// Requested session length (STS accepts 900 s up to the role's maximum).
    pub duration: Duration,
}

impl AssumeRole {
    /// Settings with the defaults: session `rds-iam-auth`, one hour, no external ID.
    pub fn new(role_arn: impl Into<String>) -> Self {
        Self {
            role_arn: role_arn.into(),
            external_id: None,
            session_name: "rds-iam-auth".to_owned(),
            duration: Duration::from_secs(3600),
        }
    }
}

impl fmt::Debug for AssumeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The external ID is not a secret in AWS's model, but it is a shared value that
        // confused-deputy protection relies on: keep it out of logs.
        f.debug_struct("AssumeRole")
            .field("role_arn", &self.role_arn)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|_| "** redacted **"),
            )
            .field("session_name", &self.session_name)
            .field("duration", &self.duration)
            .finish()
    }
}

/// A refreshing, single-flight cache of the credentials that sign tokens.
///
/// Cloning is not offered on purpose: share one cache behind an `Arc` (a
/// [`Connector`](crate::Connector) does this for you).
pub struct CredentialCache {
    base: SharedCredentialsProvider,
    assume: Option<(aws_sdk_sts::Client, AssumeRole)>,
    current: Mutex<Option<Cached>>,
    refreshes: AtomicU64,
}

#[derive(Clone)]
struct Cached {
    credentials: Credentials,
    fetched_at: SystemTime,
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("assume_role", &self.assume.as_ref().map(|(_, a)| a))
            .field("refreshes", &self.refreshes.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl CredentialCache {
    /// A cache over the base provider, optionally assuming a role with `sdk_config`'s
    /// STS settings (region, endpoint URL, retry and timeouts).
    pub fn new(
        base: SharedCredentialsProvider,
        assume: Option<AssumeRole>,
        sdk_config: &aws_config::SdkConfig,
    ) -> Self {
        let assume = assume.map(|settings| {
            let conf = aws_sdk_sts::config::Builder::from(sdk_config)
                .credentials_provider(base.clone())
                .build();
            (aws_sdk_sts::Client::from_conf(conf), settings)
        });
        Self {
            base,
            assume,
            current: Mutex::new(None),
            refreshes: AtomicU64::new(0),
        }
    }

    /// Whether a role is assumed (the base credentials only sign the STS call).
    pub fn assumes_role(&self) -> bool {
        self.assume.is_some()
    }

    /// How many times credentials were fetched (from the chain or STS) so far.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Current credentials: cached while they have more than the refresh margin left,
    /// otherwise fetched anew (one fetch however many callers wait).
    pub async fn credentials(&self) -> Result<Credentials, Error> {
        self.get(&mut Recorder::quiet()).await
    }

    pub(crate) async fn get(&self, rec: &mut Recorder) -> Result<Credentials, Error> {
        // Holding the lock across the fetch is what makes refreshing single-flight: callers
        // that arrive meanwhile wait here and then find fresh credentials.
        let wait = Instant::now();
        let mut current = self.current.lock().await;
        if let Some(cached) = current.as_ref() {
            if is_fresh(&cached.credentials, cached.fetched_at, SystemTime::now()) {
                let detail = describe(&cached.credentials, "cached");
                rec.record(Stage::Credentials, Outcome::Cached, wait.elapsed(), &detail);
                if self.assume.is_some() {
                    rec.record(Stage::AssumeRole, Outcome::Cached, Duration::ZERO, &detail);
                }
                return Ok(cached.credentials.clone());
            }
        }
        let fetched_at = SystemTime::now();
        let credentials = self.fetch(rec).await?;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        *current = Some(Cached {
            credentials: credentials.clone(),
            fetched_at,
        });
        Ok(credentials)
    }

    async fn fetch(&self, rec: &mut Recorder) -> Result<Credentials, Error> {
        let started = Instant::now();
        let base = self.base.provide_credentials().await.map_err(|e| {
            let err = Error::Credentials {
                message: error_chain(&e),
                hint: Some(HINT_NO_CREDENTIALS),
                source: Some(Box::new(e)),
            };
            rec.fail(Stage::Credentials, started.elapsed(), &err);
            err
        })?;
        let base = usable(base, Stage::Credentials, "").inspect_err(|err| {
            rec.fail(Stage::Credentials, started.elapsed(), err);
        })?;
        rec.record(
            Stage::Credentials,
            Outcome::Ok,
            started.elapsed(),
            &describe(&base, "base"),
        );

        let Some((sts, settings)) = &self.assume else {
            return Ok(base);
        };
        let started = Instant::now();
        let assumed = assume_role(sts, settings)
            .await
            .and_then(|c| usable(c, Stage::AssumeRole, &settings.role_arn));
        match assumed {
            Ok(credentials) => {
                rec.record(
                    Stage::AssumeRole,
                    Outcome::Ok,
                    started.elapsed(),
                    &describe(&credentials, &settings.role_arn),
                );
                Ok(credentials)
            }
            Err(err) => {
                rec.fail(Stage::AssumeRole, started.elapsed(), &err);
                Err(err)
            }
        }
    }
}

async fn assume_role(
    sts: &aws_sdk_sts::Client,
    settings: &AssumeRole,
) -> Result<Credentials, Error> {
    let duration = i32::try_from(settings.duration.as_secs()).unwrap_or(i32::MAX);
    let output = sts
        .assume_role()
        .role_arn(&settings.role_arn)
        .role_session_name(&settings.session_name)
        .set_external_id(settings.external_id.clone())
        .duration_seconds(duration)
        .send()
        .await
        .map_err(|e| sts_error(&settings.role_arn, e))?;
    let c = output.credentials.ok_or_else(|| Error::AssumeRole {
        role_arn: settings.role_arn.clone(),
        message: "STS answered without credentials".to_owned(),
        code: None,
        hint: None,
        source: None,
    })?;
    let expiry = SystemTime::try_from(c.expiration).map_err(|e| Error::AssumeRole {
        role_arn: settings.role_arn.clone(),
        message: format!("STS answered an unusable expiration: {e}"),
        code: None,
        hint: None,
        source: None,
    })?;
    Ok(Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        Some(c.session_token),
        Some(expiry),
        "AssumeRole",
    ))
}

fn sts_error<E, R>(role_arn: &str, err: SdkError<E, R>) -> Error
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

/// Refuses credentials that are already (nearly) expired.
fn usable(credentials: Credentials, stage: Stage, role_arn: &str) -> Result<Credentials, Error> {
    let Some(expiry) = credentials.expiry() else {
        return Ok(credentials);
    };
    let remaining = expiry
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    if remaining > MIN_REMAINING {
        return Ok(credentials);
    }
    let message = format!(
        "the provider returned credentials that expire in {} s",
        remaining.as_secs()
    );
    Err(match stage {
        Stage::AssumeRole => Error::AssumeRole {
            role_arn: role_arn.to_owned(),
            message,
            code: None,
            hint: Some(HINT_STS_BAD_CALLER),
            source: None,
        },
        _ => Error::Credentials {
            message,
            hint: Some("refresh the credentials of this host (aws sso login, a new session)"),
            source: None,
        },
    })
}

/// Whether cached credentials may still be handed out at `now`.
///
/// They must have more than [`REFRESH_MARGIN`] left. Credentials whose whole life is
/// shorter than that margin (short STS sessions) are kept for the first half of it, so
/// they are not fetched anew for every token.
pub(crate) fn is_fresh(credentials: &Credentials, fetched_at: SystemTime, now: SystemTime) -> bool {
    let Some(expiry) = credentials.expiry() else {
        return true; // long-term keys do not expire
    };
    let Ok(remaining) = expiry.duration_since(now) else {
        return false;
    };
    let lifetime = expiry.duration_since(fetched_at).unwrap_or(Duration::ZERO);
    let margin = REFRESH_MARGIN.min(lifetime / 2).max(MIN_REMAINING);
    remaining > margin
}

fn describe(credentials: &Credentials, what: &str) -> String {
    let key = credentials.access_key_id();
    let key_prefix: String = key.chars().take(4).collect();
    match credentials.expiry() {
        Some(expiry) => {
            let left = expiry
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            format!(
                "{what} ({key_prefix}..., expires in {}m{:02}s)",
                left.as_secs() / 60,
                left.as_secs() % 60
            )
        }
        None => format!("{what} ({key_prefix}..., long-term)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds_expiring(at: SystemTime) -> Credentials {
        Credentials::new("AKID", "SECRET", Some("TOKEN".into()), Some(at), "test")
    }

    #[test]
    fn hour_long_credentials_refresh_sixteen_minutes_early() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = creds_expiring(t0 + Duration::from_secs(3600));
        assert!(is_fresh(&c, t0, t0));
        let edge = t0 + Duration::from_secs(3600) - REFRESH_MARGIN;
        assert!(is_fresh(&c, t0, edge - Duration::from_secs(1)));
        assert!(!is_fresh(&c, t0, edge));
        assert!(!is_fresh(&c, t0, t0 + Duration::from_secs(4000)));
    }

    #[test]
    fn short_sessions_are_kept_for_half_their_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = creds_expiring(t0 + Duration::from_secs(30));
        assert!(is_fresh(&c, t0, t0 + Duration::from_secs(14)));
        assert!(!is_fresh(&c, t0, t0 + Duration::from_secs(15)));
    }

    #[test]
    fn long_term_keys_are_always_fresh() {
        let c = Credentials::from_keys("AKID", "SECRET", None);
        assert!(is_fresh(&c, SystemTime::UNIX_EPOCH, SystemTime::now()));
    }

    #[test]
    fn expired_credentials_are_refused() {
        let c = creds_expiring(SystemTime::now() - Duration::from_secs(1));
        let err = usable(c, Stage::Credentials, "").unwrap_err();
        assert_eq!(err.stage(), Stage::Credentials);
        assert!(err.to_string().contains("expire in 0 s"), "{err}");
    }

    #[test]
    fn debug_hides_the_external_id() {
        let mut a = AssumeRole::new("arn:aws:iam::222222222222:role/r");
        a.external_id = Some("very-shared-value".into());
        let text = format!("{a:?}");
        assert!(!text.contains("very-shared-value"), "{text}");
        assert!(text.contains("arn:aws:iam::222222222222:role/r"));
    }
}
