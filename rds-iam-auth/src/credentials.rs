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
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::diagnosis::{credentials_error, stale_credentials, sts_answer_error, sts_error};
use crate::error::{ConfigError, Error};
use crate::stage::Stage;
use crate::token::MAX_EXPIRES_IN;

/// How long before expiry cached credentials are replaced: a token's full life plus a
/// minute of clock skew, so every token is signed by credentials that outlive it.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(MAX_EXPIRES_IN.as_secs() + 60);

/// Credentials closer than this to expiry are never used, whatever their lifetime.
const MIN_REMAINING: Duration = Duration::from_secs(5);

/// Validated settings of `sts:AssumeRole` into the database account.
///
/// ```
/// use std::time::Duration;
/// use rds_iam_auth::AssumeRole;
///
/// let role = AssumeRole::new("arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role")?
///     .with_external_id("5e0d8c1a-example")?
///     .with_duration(Duration::from_secs(900))?;
/// assert_eq!(role.session_name(), "rds-iam-auth");
/// assert!(AssumeRole::new("proxy-role").is_err()); // not an ARN
/// # Ok::<(), rds_iam_auth::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct AssumeRole {
    role_arn: String,
    external_id: Option<String>,
    session_name: String,
    duration: Duration,
}

impl AssumeRole {
    /// The role to assume, with the defaults: session `rds-iam-auth`, one hour, no
    /// external ID. The ARN must be a role ARN (`arn:aws:iam::ACCOUNT:role/NAME`).
    pub fn new(role_arn: impl Into<String>) -> Result<Self, ConfigError> {
        let role_arn = role_arn.into();
        if !role_arn.starts_with("arn:aws") || !role_arn.contains(":role/") {
            return Err(ConfigError::Invalid {
                name: "assume_role",
                reason: format!("{role_arn:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
            });
        }
        Ok(Self {
            role_arn,
            external_id: None,
            session_name: "rds-iam-auth".to_owned(),
            duration: Duration::from_secs(3600),
        })
    }

    /// The external ID the role's trust policy requires (`sts:ExternalId`); not empty.
    pub fn with_external_id(mut self, external_id: impl Into<String>) -> Result<Self, ConfigError> {
        let external_id = external_id.into();
        if external_id.trim().is_empty() {
            return Err(ConfigError::Invalid {
                name: "external_id",
                reason: "is empty".to_owned(),
            });
        }
        self.external_id = Some(external_id);
        Ok(self)
    }

    /// The session name shown in the database account's CloudTrail: 2 to 64 characters
    /// of `A-Z a-z 0-9 = , . @ - _` (what STS accepts).
    pub fn with_session_name(mut self, name: impl Into<String>) -> Result<Self, ConfigError> {
        let name = name.into();
        let valid = (2..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "=,.@-_".contains(c));
        if !valid {
            return Err(ConfigError::Invalid {
                name: "role_session_name",
                reason: "2 to 64 characters of A-Z a-z 0-9 = , . @ - _".to_owned(),
            });
        }
        self.session_name = name;
        Ok(self)
    }

    /// The session length: 900 s to 43200 s (STS's range; the role's maximum may be lower).
    pub fn with_duration(mut self, duration: Duration) -> Result<Self, ConfigError> {
        if duration < Duration::from_secs(900) || duration > Duration::from_secs(43_200) {
            return Err(ConfigError::Invalid {
                name: "role_duration",
                reason: "STS accepts 900 s to 43200 s".to_owned(),
            });
        }
        self.duration = duration;
        Ok(self)
    }

    /// ARN of the role in the database account.
    pub fn role_arn(&self) -> &str {
        &self.role_arn
    }
    /// The external ID, if one is set.
    pub fn external_id(&self) -> Option<&str> {
        self.external_id.as_deref()
    }
    /// The role session name.
    pub fn session_name(&self) -> &str {
        &self.session_name
    }
    /// The requested session length.
    pub fn duration(&self) -> Duration {
        self.duration
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

    /// The role settings, when a role is assumed.
    pub fn assumed_role(&self) -> Option<&AssumeRole> {
        self.assume.as_ref().map(|(_, settings)| settings)
    }

    /// How many times credentials were fetched (from the chain or STS) so far.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Current credentials: cached while they have more than the refresh margin left,
    /// otherwise fetched anew (one fetch however many callers wait).
    pub async fn credentials(&self) -> Result<Credentials, Error> {
        self.get().await.map(|o| o.credentials).map_err(|f| f.error)
    }

    /// Current credentials and how they were obtained; on failure, the error and what the
    /// base chain gave before it (so a report can show where the path stopped).
    pub(crate) async fn get(&self) -> Result<Obtained, FetchFailure> {
        // Holding the lock across the fetch is what makes refreshing single-flight: callers
        // that arrive meanwhile wait here and then find fresh credentials.
        let mut current = self.current.lock().await;
        if let Some(cached) = current.as_ref() {
            if is_fresh(&cached.credentials, cached.fetched_at, SystemTime::now()) {
                return Ok(Obtained {
                    credentials: cached.credentials.clone(),
                    fetch: None,
                });
            }
        }
        let fetched_at = SystemTime::now();
        let obtained = self.fetch().await?;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        *current = Some(Cached {
            credentials: obtained.credentials.clone(),
            fetched_at,
        });
        Ok(obtained)
    }

    async fn fetch(&self) -> Result<Obtained, FetchFailure> {
        let started = Instant::now();
        let base = self
            .base
            .provide_credentials()
            .await
            .map_err(credentials_error)
            .and_then(|c| usable(c, Stage::Credentials, ""))
            .map_err(|error| FetchFailure { error, base: None })?;
        let base_took = started.elapsed();

        let Some((sts, settings)) = &self.assume else {
            return Ok(Obtained {
                credentials: base.clone(),
                fetch: Some(Fetch {
                    base,
                    base_took,
                    assume_role_took: None,
                }),
            });
        };
        let started = Instant::now();
        match assume_role(sts, settings)
            .await
            .and_then(|c| usable(c, Stage::AssumeRole, &settings.role_arn))
        {
            Ok(credentials) => Ok(Obtained {
                credentials,
                fetch: Some(Fetch {
                    base,
                    base_took,
                    assume_role_took: Some(started.elapsed()),
                }),
            }),
            Err(error) => Err(FetchFailure {
                error,
                base: Some((base, base_took)),
            }),
        }
    }
}

/// Credentials from [`CredentialCache::get`], and whether they were fetched for this call.
pub(crate) struct Obtained {
    pub(crate) credentials: Credentials,
    /// `None` when they came from the cache.
    pub(crate) fetch: Option<Fetch>,
}

/// What one fetch did.
pub(crate) struct Fetch {
    /// The base credentials (the same as the result when no role is assumed).
    pub(crate) base: Credentials,
    pub(crate) base_took: Duration,
    /// How long `AssumeRole` took, when a role is assumed.
    pub(crate) assume_role_took: Option<Duration>,
}

/// A failed fetch: the error, and the base credentials when only the role step failed.
pub(crate) struct FetchFailure {
    pub(crate) error: Error,
    pub(crate) base: Option<(Credentials, Duration)>,
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
    let c = output.credentials.ok_or_else(|| {
        sts_answer_error(
            &settings.role_arn,
            "STS answered without credentials".to_owned(),
        )
    })?;
    let expiry = SystemTime::try_from(c.expiration).map_err(|e| {
        sts_answer_error(
            &settings.role_arn,
            format!("STS answered an unusable expiration: {e}"),
        )
    })?;
    Ok(Credentials::new(
        c.access_key_id,
        c.secret_access_key,
        Some(c.session_token),
        Some(expiry),
        "AssumeRole",
    ))
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
    Err(stale_credentials(stage, role_arn, remaining.as_secs()))
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

/// `what (ASIA..., expires in 59m58s)`: enough to tell credentials apart, nothing secret.
pub(crate) fn describe(credentials: &Credentials, what: &str) -> String {
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
        let a = AssumeRole::new("arn:aws:iam::222222222222:role/r")
            .and_then(|a| a.with_external_id("very-shared-value"))
            .expect("valid");
        let text = format!("{a:?}");
        assert!(!text.contains("very-shared-value"), "{text}");
        assert!(text.contains("arn:aws:iam::222222222222:role/r"));
    }
}
