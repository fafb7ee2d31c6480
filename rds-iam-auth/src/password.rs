//! Passwords for databases that do not use IAM database authentication: read from a
//! Secrets Manager secret or a Parameter Store SecureString, and cached.
//!
//! The secret lives in the database account and is read with the assumed role's
//! credentials (its resource policy and its KMS key's policy allow that role); a parameter
//! lives in the application account and is read with the caller's own credentials.
//!
//! [`PasswordCache`] keeps the value as the AWS caching clients do (one hour by default),
//! with the credential cache's rules for everything else:
//! - **served while cached**: a password has no expiry of its own, so the cached value is
//!   handed out however old it is; a refresh starts in the background once it is older
//!   than nine tenths of its time to live, and callers never wait for it. While refreshing
//!   fails (Secrets Manager unreachable), the stored value keeps serving: a database whose
//!   password did not change keeps working through the outage.
//! - **one refresh, shared**: a refresh runs in a task of its own; every caller that needs
//!   its result waits for that one task and gets the same outcome.
//! - **bounded retries**: a failure is handed to callers without calling the service again
//!   until its backoff (1 s doubling to 5 s, with jitter) has passed.
//! - **rotation**: a login refused with SQLSTATE 28P01 marks the value it used as suspect
//!   ([`PasswordCache::invalidate`], at most once a minute); the next caller waits for a
//!   fresh read instead of getting it again. Only the current version (`AWSCURRENT`) is
//!   ever read: the previous one is what rotation retired.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::credentials::{backoff, spawn_refresh, Ended, MAX_BACKOFF, REFRESH_TIMEOUT};
use crate::error::classify::{parameter_error, secret_error, secret_invalid, secret_lost};
use crate::error::{ConfigError, Error};
use crate::stage::Stage;

/// How long a password is cached by default: the AWS caching clients' default.
pub const DEFAULT_PASSWORD_TTL: Duration = Duration::from_secs(3600);

/// Where a password comes from, when the database is not on IAM authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PasswordSource {
    /// A Secrets Manager secret in the RDS shape (JSON with `password`, and optionally
    /// `username`, `host`, `port`, `dbname`), by ARN. Read with the assumed role's
    /// credentials when a role is set, in the ARN's region.
    SecretsManager {
        /// The secret's full ARN.
        secret_arn: String,
    },
    /// A Parameter Store parameter holding the password itself (a SecureString), read with
    /// the caller's own credentials.
    Parameter {
        /// The parameter's name (or ARN).
        name: String,
    },
}

impl PasswordSource {
    /// `secret arn:...` or `parameter /app/db/password`, for reports.
    pub(crate) fn describe(&self) -> String {
        match self {
            PasswordSource::SecretsManager { secret_arn } => format!("secret {secret_arn}"),
            PasswordSource::Parameter { name } => format!("parameter {name}"),
        }
    }
}

/// The region of a Secrets Manager secret ARN
/// (`arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME`), or why it is not one.
pub(crate) fn secret_arn_region(arn: &str) -> Result<&str, ConfigError> {
    let parts: Vec<&str> = arn.splitn(7, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "secretsmanager", region, account, "secret", name]
            if partition.starts_with("aws")
                && !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && !name.is_empty() =>
        {
            Ok(region)
        }
        _ => Err(ConfigError::invalid(
            "secret_arn",
            format!(
                "{arn:?} is not a secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)"
            ),
        )),
    }
}

/// A database password. It has no `Display`, and its `Debug` prints nothing of it.
#[derive(Clone)]
pub(crate) struct Password(Arc<str>);

impl Password {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(** redacted **)")
    }
}

/// What one read of the source gave: the password, and for an RDS-shaped secret the
/// connection settings it holds (filling settings the caller left unset).
#[derive(Clone, Debug)]
pub(crate) struct SecretValue {
    pub(crate) password: Password,
    pub(crate) username: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) dbname: Option<String>,
}

impl SecretValue {
    /// A secret string in the RDS shape. Errors name the field, never its value.
    fn from_secret_string(arn: &str, text: &str) -> Result<Self, Error> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            // serde_json's message gives a line and column, not the text.
            secret_invalid(
                arn,
                &format!("the secret is not JSON ({e}); an RDS secret holds {{\"username\": ..., \"password\": ...}}"),
            )
        })?;
        let Some(fields) = json.as_object() else {
            return Err(secret_invalid(arn, "the secret is JSON but not an object"));
        };
        let text_field = |name: &str| -> Result<Option<String>, Error> {
            match fields.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(secret_invalid(
                    arn,
                    &format!("the field `{name}` is not a string"),
                )),
            }
        };
        let password = match fields.get("password") {
            Some(serde_json::Value::String(p)) if !p.is_empty() => Password(Arc::from(p.as_str())),
            Some(serde_json::Value::String(_)) => {
                return Err(secret_invalid(arn, "the field `password` is empty"))
            }
            Some(_) => return Err(secret_invalid(arn, "the field `password` is not a string")),
            None => return Err(secret_invalid(arn, "the secret has no `password` field")),
        };
        // RDS writes the port as a number; people write it as a string too.
        let port = match fields.get("port") {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => {
                let parsed = match value {
                    serde_json::Value::Number(n) => n.as_u64(),
                    serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
                    _ => None,
                };
                match parsed
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0)
                {
                    Some(p) => Some(p),
                    None => {
                        return Err(secret_invalid(
                            arn,
                            "the field `port` is not a port number (1 to 65535)",
                        ))
                    }
                }
            }
        };
        Ok(SecretValue {
            password,
            username: text_field("username")?,
            host: text_field("host")?,
            port,
            dbname: text_field("dbname")?,
        })
    }

    fn password_only(password: Password) -> Self {
        SecretValue {
            password,
            username: None,
            host: None,
            port: None,
            dbname: None,
        }
    }
}

/// Reads the password from its source: the one place that calls Secrets Manager or
/// Parameter Store for it.
pub(crate) enum Fetcher {
    Secret {
        client: aws_sdk_secretsmanager::Client,
        secret_arn: String,
    },
    Parameter {
        client: aws_sdk_ssm::Client,
        name: String,
    },
}

impl Fetcher {
    /// A fetcher for `source`. The Secrets Manager client signs with `role_credentials`
    /// (the connector's credential cache: the assumed role's, or the base ones) in the
    /// secret's region; the Parameter Store client with `base` in the SDK's region.
    /// Endpoints follow the SDK's conventions (`AWS_ENDPOINT_URL_SECRETS_MANAGER`,
    /// `AWS_ENDPOINT_URL_SSM`).
    pub(crate) fn new(
        source: &PasswordSource,
        sdk_config: &aws_config::SdkConfig,
        role_credentials: SharedCredentialsProvider,
        base: SharedCredentialsProvider,
    ) -> Result<Self, ConfigError> {
        match source {
            PasswordSource::SecretsManager { secret_arn } => {
                let region = secret_arn_region(secret_arn)?.to_owned();
                let conf = aws_sdk_secretsmanager::config::Builder::from(sdk_config)
                    .region(aws_config::Region::new(region))
                    .credentials_provider(role_credentials)
                    // The credential cache is the cache: an SDK-side copy would keep
                    // credentials the cache has already replaced.
                    .identity_cache(aws_config::identity::IdentityCache::no_cache())
                    .build();
                Ok(Fetcher::Secret {
                    client: aws_sdk_secretsmanager::Client::from_conf(conf),
                    secret_arn: secret_arn.clone(),
                })
            }
            PasswordSource::Parameter { name } => Ok(Fetcher::Parameter {
                client: parameter_client(sdk_config, Some(base)),
                name: name.clone(),
            }),
        }
    }

    /// One read of the current value (`AWSCURRENT` for a secret).
    pub(crate) async fn fetch(&self) -> Result<SecretValue, Error> {
        match self {
            Fetcher::Secret { client, secret_arn } => {
                let output = client
                    .get_secret_value()
                    .secret_id(secret_arn)
                    .version_stage("AWSCURRENT")
                    .send()
                    .await
                    .map_err(|e| secret_error(secret_arn, e))?;
                match (output.secret_string(), output.secret_binary()) {
                    (Some(text), _) => SecretValue::from_secret_string(secret_arn, text),
                    (None, Some(_)) => Err(secret_invalid(
                        secret_arn,
                        "the secret is binary (SecretBinary); an RDS secret is a JSON SecretString",
                    )),
                    (None, None) => Err(secret_invalid(secret_arn, "the secret has no value")),
                }
            }
            Fetcher::Parameter { client, name } => {
                let output = client
                    .get_parameter()
                    .name(name)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|e| parameter_error(Stage::Secret, name, e))?;
                match output.parameter().and_then(|p| p.value()) {
                    Some(value) if !value.is_empty() => {
                        Ok(SecretValue::password_only(Password(Arc::from(value))))
                    }
                    _ => Err(secret_invalid(name, "the parameter's value is empty")),
                }
            }
        }
    }
}

/// A Parameter Store client from `sdk_config`, signing with `credentials` when given.
pub(crate) fn parameter_client(
    sdk_config: &aws_config::SdkConfig,
    credentials: Option<SharedCredentialsProvider>,
) -> aws_sdk_ssm::Client {
    let mut conf = aws_sdk_ssm::config::Builder::from(sdk_config);
    if let Some(credentials) = credentials {
        conf = conf.credentials_provider(credentials);
    }
    aws_sdk_ssm::Client::from_conf(conf.build())
}

/// A refreshing, single-flight cache of one password (see the module's documentation).
#[derive(Clone)]
pub(crate) struct PasswordCache {
    shared: Arc<Shared>,
}

struct Shared {
    source: PasswordSource,
    fetcher: Fetcher,
    ttl: Duration,
    state: Mutex<State>,
    /// Woken when a refresh ends (either way).
    refreshed: Notify,
    fetches: AtomicU64,
    /// The version of the cached value, for integrations that install the password
    /// somewhere else (sqlx's connect options) and must follow a new one at once.
    versions: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    refreshing: bool,
    /// Counts finished refreshes: a waiter knows the one it waited for has ended.
    generation: u64,
    /// How long the last successful read took, and its generation.
    last_fetch: Option<(u64, Duration)>,
    failure: Option<Failure>,
    /// When a cached value was last marked suspect because a login refused it.
    last_invalidation: Option<Instant>,
}

struct Cached {
    value: SecretValue,
    fetched_at: Instant,
    /// The generation that read it: which value a refused login used.
    version: u64,
    /// A login with it was refused (28P01): callers wait for a fresh read instead.
    suspect: bool,
}

struct Failure {
    error: Error,
    generation: u64,
    in_a_row: u32,
    since: Instant,
    retry_at: Instant,
}

/// A password from the cache, and how it was obtained.
pub(crate) struct Obtained {
    pub(crate) value: SecretValue,
    /// Which read it came from (for [`PasswordCache::invalidate`]).
    pub(crate) version: u64,
    /// How long the read took, when this call waited for one; `None` when cached.
    pub(crate) fetched_in: Option<Duration>,
    /// Set when the cached value is served while refreshing it fails.
    pub(crate) refresh_failing: Option<String>,
}

impl fmt::Debug for PasswordCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordCache")
            .field("source", &self.shared.source)
            .field("ttl", &self.shared.ttl)
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

impl PasswordCache {
    pub(crate) fn new(source: PasswordSource, fetcher: Fetcher, ttl: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                source,
                fetcher,
                ttl,
                state: Mutex::default(),
                refreshed: Notify::new(),
                fetches: AtomicU64::new(0),
                versions: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    pub(crate) fn source(&self) -> &PasswordSource {
        &self.shared.source
    }

    /// Tells when a new value is read (its version changes).
    #[cfg(feature = "sqlx")]
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.versions.subscribe()
    }

    /// How many reads of the source succeeded so far.
    pub(crate) fn fetch_count(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }

    /// The cached value while it is not suspect (refreshed in the background once it nears
    /// its time to live), otherwise the outcome of a read shared with every other caller.
    pub(crate) async fn get(&self) -> Result<Obtained, Error> {
        let shared = &self.shared;
        loop {
            let waited_for;
            let refreshed;
            {
                let mut state = shared.lock();
                if let Some(cached) = state.current.as_ref().filter(|c| !c.suspect) {
                    let due = cached.fetched_at.elapsed() >= shared.ttl - shared.ttl / 10;
                    let obtained = state.cached();
                    if due {
                        shared.start_refresh(&mut state, false);
                    }
                    if let Some(obtained) = obtained {
                        return Ok(obtained);
                    }
                }
                if let Some(failure) = &state.failure {
                    if !state.refreshing && Instant::now() < failure.retry_at {
                        return Err(failure.error.clone());
                    }
                }
                shared.start_refresh(&mut state, true);
                // Created under the lock: the end of this refresh cannot be missed.
                refreshed = shared.refreshed.notified();
                waited_for = state.generation;
            }
            refreshed.await;
            let state = shared.lock();
            if state.generation == waited_for {
                continue;
            }
            if let Some(failure) = state
                .failure
                .as_ref()
                .filter(|f| f.generation == state.generation)
            {
                // The stored value keeps serving unless a login refused it.
                let usable = state.current.as_ref().is_some_and(|c| !c.suspect);
                return match state.cached().filter(|_| usable) {
                    Some(obtained) => Ok(obtained),
                    None => Err(failure.error.clone()),
                };
            }
            if let Some(cached) = &state.current {
                return Ok(Obtained {
                    value: cached.value.clone(),
                    version: cached.version,
                    fetched_in: state
                        .last_fetch
                        .filter(|(generation, _)| *generation == state.generation)
                        .map(|(_, took)| took),
                    refresh_failing: None,
                });
            }
        }
    }

    /// Reads the password into the cache now unless one is cached, and waits for the
    /// outcome (a Lambda function's init). As for credentials, a failure here leaves no
    /// backoff behind: the first connect reads again and reports its own error.
    pub(crate) async fn prefetch(&self) -> Result<(), Error> {
        let result = self.get().await.map(drop);
        if result.is_err() {
            if let Some(failure) = self.shared.lock().failure.as_mut() {
                failure.retry_at = Instant::now();
            }
        }
        result
    }

    /// A login with the value of read `version` was refused with 28P01 (the secret was
    /// probably rotated): returns whether one retry is worth it. It is when a newer value
    /// is already cached, or when another refused login has already marked this one
    /// suspect (the retry then waits for that one re-read: logins refused together cost
    /// one read). Otherwise the value is marked suspect, so the next caller waits for a
    /// fresh read, which starts at once whatever the backoff; at most once a minute while
    /// re-reads find the same password (the secret and the database disagree: that must
    /// not cost a read per connect), without limit while each finds a new one (rotations in
    /// quick succession).
    pub(crate) fn invalidate(&self, version: u64) -> bool {
        const AT_MOST_EVERY: Duration = Duration::from_secs(60);
        let mut state = self.shared.lock();
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.version > version || (c.version == version && c.suspect))
        {
            return true;
        }
        if state
            .last_invalidation
            .is_some_and(|at| at.elapsed() < AT_MOST_EVERY)
        {
            return false;
        }
        let Some(current) = state.current.as_mut().filter(|c| c.version == version) else {
            return false;
        };
        current.suspect = true;
        state.last_invalidation = Some(Instant::now());
        if let Some(failure) = state.failure.as_mut() {
            failure.retry_at = Instant::now();
        }
        true
    }
}

impl State {
    /// The cached value as served, with a failing refresh noted.
    fn cached(&self) -> Option<Obtained> {
        let cached = self.current.as_ref()?;
        Some(Obtained {
            value: cached.value.clone(),
            version: cached.version,
            fetched_in: None,
            refresh_failing: self.failure.as_ref().map(|f| {
                format!(
                    "refresh failing for {} s ({} attempts): {}",
                    f.since.elapsed().as_secs(),
                    f.in_a_row,
                    f.error.cause()
                )
            }),
        })
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind (plain fields).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a refresh task unless one runs or (for a background refresh) the last
    /// failure's backoff has not passed.
    fn start_refresh(self: &Arc<Self>, state: &mut State, needed: bool) {
        if state.refreshing
            || (!needed
                && state
                    .failure
                    .as_ref()
                    .is_some_and(|f| Instant::now() < f.retry_at))
        {
            return;
        }
        state.refreshing = true;
        let shared = self.clone();
        let work = {
            let shared = self.clone();
            async move {
                let started = Instant::now();
                let value = shared.fetcher.fetch().await?;
                Ok((value, started.elapsed()))
            }
        };
        spawn_refresh(REFRESH_TIMEOUT, work, move |ended| {
            let what = shared.source.describe();
            // A refresh dropped unfinished says nothing about the service: the next caller
            // may try again at once.
            let retry_at_once = matches!(ended, Ended::Dropped);
            let outcome = match ended {
                Ended::Finished(outcome) => outcome,
                Ended::TimedOut => Err(Error::timeout(Stage::Secret, REFRESH_TIMEOUT)),
                Ended::Panicked => Err(secret_lost(&what, "reading the password panicked")),
                Ended::Dropped => Err(secret_lost(
                    &what,
                    "the password refresh was cancelled before it finished (the Tokio runtime it ran on shut down)",
                )),
            };
            shared.finish_refresh(outcome, retry_at_once);
        });
    }

    /// Records a refresh's outcome and wakes every caller waiting for it.
    fn finish_refresh(&self, outcome: Result<(SecretValue, Duration), Error>, retry_at_once: bool) {
        {
            let mut state = self.lock();
            state.refreshing = false;
            state.generation += 1;
            let generation = state.generation;
            match outcome {
                Ok((value, took)) => {
                    self.fetches.fetch_add(1, Ordering::Relaxed);
                    // A re-read after a refused login that found a new password cured it:
                    // the next rotation may be answered at once, however soon it comes.
                    // One that found the same password keeps the once-a-minute limit.
                    if state.current.as_ref().is_some_and(|old| {
                        old.suspect && old.value.password.as_str() != value.password.as_str()
                    }) {
                        state.last_invalidation = None;
                    }
                    if let Some(failure) = state.failure.take() {
                        tracing::info!(
                            failed_attempts = failure.in_a_row,
                            "password read again after failures"
                        );
                    }
                    state.current = Some(Cached {
                        value,
                        fetched_at: Instant::now(),
                        version: generation,
                        suspect: false,
                    });
                    state.last_fetch = Some((generation, took));
                    self.versions.send_replace(generation);
                }
                Err(error) => {
                    let previous = state.failure.take();
                    let in_a_row = previous.as_ref().map_or(1, |f| f.in_a_row + 1);
                    let since = previous.map_or_else(Instant::now, |f| f.since);
                    tracing::warn!(
                        error = %error,
                        failed_attempts = in_a_row,
                        cached_password_kept = state.current.is_some(),
                        "password refresh failed"
                    );
                    state.failure = Some(Failure {
                        error,
                        generation,
                        in_a_row,
                        since,
                        retry_at: if retry_at_once {
                            Instant::now()
                        } else {
                            Instant::now() + backoff(in_a_row, MAX_BACKOFF)
                        },
                    });
                }
            }
        }
        self.refreshed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reason;

    const ARN: &str = "arn:aws:secretsmanager:eu-west-1:222222222222:secret:app-AbCdEf";

    #[test]
    fn the_region_comes_from_the_secret_arn() {
        assert_eq!(secret_arn_region(ARN).unwrap(), "eu-west-1");
        for bad in [
            "app-secret",
            "arn:aws:secretsmanager:eu-west-1:2222:secret:x",
            "arn:aws:ssm:eu-west-1:222222222222:parameter/x",
            "arn:aws:secretsmanager::222222222222:secret:x",
            "arn:aws:secretsmanager:eu-west-1:222222222222:secret:",
        ] {
            let err = secret_arn_region(bad).unwrap_err();
            assert!(err.to_string().contains("not a secret ARN"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_rds_secret_gives_the_password_and_the_settings_it_holds() {
        let v = SecretValue::from_secret_string(
            ARN,
            r#"{"engine":"postgres","host":"db.example","port":5432,"username":"app","password":"pw-1","dbname":"orders"}"#,
        )
        .unwrap();
        assert_eq!(v.password.as_str(), "pw-1");
        assert_eq!(v.username.as_deref(), Some("app"));
        assert_eq!(v.host.as_deref(), Some("db.example"));
        assert_eq!(v.port, Some(5432));
        assert_eq!(v.dbname.as_deref(), Some("orders"));
        let v = SecretValue::from_secret_string(ARN, r#"{"password":"pw","port":"6432"}"#).unwrap();
        assert_eq!((v.port, v.username), (Some(6432), None));
    }

    #[test]
    fn unusable_secrets_are_clear_errors_that_never_show_the_value() {
        for (text, expected) in [
            ("hunter2-plain", "not JSON"),
            (r#"["hunter2-array"]"#, "not an object"),
            (r#"{"username":"app"}"#, "no `password` field"),
            (r#"{"password":""}"#, "`password` is empty"),
            (r#"{"password":42}"#, "`password` is not a string"),
            (
                r#"{"password":"hunter2-port","port":"x"}"#,
                "`port` is not a port",
            ),
        ] {
            let err = SecretValue::from_secret_string(ARN, text).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert_eq!(err.stage(), Stage::Secret);
            assert_eq!(err.reason(), Reason::SecretInvalid);
            assert!(shown.contains(expected), "{text}: {shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn debug_never_shows_a_password() {
        let v = SecretValue::password_only(Password(Arc::from("hunter2")));
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
