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
//! lacks, for services that run for months:
//! - **never failing early**: a token only has to be valid at login, which follows signing
//!   within milliseconds, so cached credentials are used until 30 s before they
//!   expire. Refreshing *starts* 16 minutes (a token's life plus a minute) before expiry,
//!   in the background:
//!   callers keep getting the cached credentials meanwhile, however slow STS is.
//! - **one refresh, shared**: a refresh runs in a task of its own; every caller that needs
//!   its result waits for the same task and gets the same outcome, success or failure. A
//!   caller that gives up (its deadline passed) does not cancel it.
//! - **bounded retries**: after a failure the next attempt waits (1 s, doubling up to
//!   5 s, with jitter), so an STS outage costs a few calls, not one per connect.
//!   While credentials are still valid, connects keep working and the failure is logged at
//!   WARN and shown by the staged check.
//! - expired credentials are never handed out: a provider that returns them is an error.
//!
//! For credentials that live shorter than the margins (short STS sessions, tests), the
//! margins scale down: refreshing starts at half their life, and they are used until a sixth
//! of their life is left.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::classify::{
    credentials_error, fetch_stage, refresh_lost, stale_credentials, sts_answer_error, sts_error,
};
use crate::error::{ConfigError, Error};
use crate::token::MAX_EXPIRES_IN;

/// How long before expiry a refresh starts (in the background): a token's full life plus a
/// minute, which leaves a long-running service many minutes to ride out an STS hiccup.
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(MAX_EXPIRES_IN.as_secs() + 60);

/// How long before expiry cached credentials stop being used: enough for a login (the
/// default connect timeout) plus clock skew between this host and AWS.
pub(crate) const HARD_MARGIN: Duration = Duration::from_secs(30);

/// The longest wait between two refresh attempts after failures.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The longest one refresh (base chain plus STS) may take before it counts as failed.
pub(crate) const REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Whether `arn` is an IAM role's ARN (`arn:aws[-partition]:iam::ACCOUNT:role/NAME`): the one
/// check, for the builder and the environment mapping alike.
pub(crate) fn is_role_arn(arn: &str) -> bool {
    arn.starts_with("arn:aws") && arn.contains(":role/")
}

impl AssumeRole {
    /// The role to assume, with the defaults: session `rds-iam-auth`, one hour, no
    /// external ID. The ARN must be a role ARN (`arn:aws:iam::ACCOUNT:role/NAME`).
    pub fn new(role_arn: impl Into<String>) -> Result<Self, ConfigError> {
        let role_arn = role_arn.into();
        if !is_role_arn(&role_arn) {
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
    shared: Arc<Shared>,
}

struct Shared {
    base: SharedCredentialsProvider,
    assume: Option<(aws_sdk_sts::Client, AssumeRole)>,
    state: Mutex<State>,
    /// Woken when a refresh ends (either way).
    refreshed: Notify,
    refreshes: AtomicU64,
    failures: AtomicU64,
    clock: WallClock,
}

/// The wall clock, as the cache reads it.
type WallClock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The wall clock the cache compares expiry times with (replaceable in tests, with the
/// `test-util` feature).
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

#[derive(Default)]
struct State {
    current: Option<Cached>,
    refreshing: bool,
    /// Counts finished refreshes: a waiter knows the one it waited for has ended.
    generation: u64,
    /// What the last successful refresh did, and its generation.
    last_fetch: Option<(u64, Fetch)>,
    failure: Option<Failure>,
    /// When cached credentials were last dropped because a login refused them.
    last_invalidation: Option<Instant>,
}

struct Cached {
    credentials: Credentials,
    /// Start refreshing at this time; stop using them at `hard`.
    soft: SystemTime,
    hard: Option<SystemTime>,
    /// A login signed with them was refused with the proxy's IAM message: callers wait for
    /// a refresh to replace them, but while refreshing fails they are still served (until
    /// they expire), since the refusal may have been a blip rather than a revocation.
    suspect: bool,
}

/// The last refresh failed: with what, since when, how often in a row, and when the next
/// attempt may start.
struct Failure {
    error: Error,
    base: Option<(Credentials, Duration)>,
    generation: u64,
    since: SystemTime,
    in_a_row: u32,
    retry_at: Instant,
}

impl Cached {
    fn new(credentials: Credentials, now: SystemTime) -> Self {
        let Some(expiry) = credentials.expiry() else {
            // Long-term keys: never refreshed, never unusable.
            return Self {
                credentials,
                soft: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 64),
                hard: None,
                suspect: false,
            };
        };
        let lifetime = expiry.duration_since(now).unwrap_or(Duration::ZERO);
        let soft = expiry - REFRESH_MARGIN.min(lifetime / 2);
        let hard = expiry - HARD_MARGIN.min(lifetime / 6);
        Self {
            credentials,
            soft,
            hard: Some(hard),
            suspect: false,
        }
    }

    fn usable(&self, now: SystemTime) -> bool {
        match self.hard {
            None => true,
            Some(hard) => now < hard,
        }
    }
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("assume_role", &self.assumed_role())
            .field("refreshes", &self.refresh_count())
            .field("failed_refreshes", &self.failed_refresh_count())
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
            shared: Arc::new(Shared {
                base,
                assume,
                state: Mutex::default(),
                refreshed: Notify::new(),
                refreshes: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                clock: Arc::new(SystemTime::now),
            }),
        }
    }

    /// Compares expiry times with `clock` instead of the system clock: for tests that
    /// need credentials to age by minutes in an instant. Call it before first use.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn with_clock(self, clock: Clock) -> Self {
        let mut shared = match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared,
            Err(shared) => return Self { shared },
        };
        shared.clock = clock;
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Whether a role is assumed (the base credentials only sign the STS call).
    pub fn assumes_role(&self) -> bool {
        self.shared.assume.is_some()
    }

    /// The role settings, when a role is assumed.
    pub fn assumed_role(&self) -> Option<&AssumeRole> {
        self.shared.assume.as_ref().map(|(_, settings)| settings)
    }

    /// How many times credentials were fetched (from the chain or STS) so far.
    pub fn refresh_count(&self) -> u64 {
        self.shared.refreshes.load(Ordering::Relaxed)
    }

    /// How many refreshes failed so far.
    pub fn failed_refresh_count(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// The error of the last refresh, while refreshing is failing (cleared by a success).
    pub fn refresh_error(&self) -> Option<String> {
        self.shared
            .lock()
            .failure
            .as_ref()
            .map(|f| f.error.to_string())
    }

    /// Marks the cached credentials as suspect if they are still `used` (the ones a refused
    /// login was signed with), so the next caller waits for a refresh instead of getting
    /// them again. They are not dropped: while refreshing fails (STS unreachable) they are
    /// still served until they expire, so a one-off refusal does not become an outage. At
    /// most once a minute: a refusal that refreshed credentials do not cure (a missing
    /// permission) must not cost an STS call per connect. Returns whether they were marked.
    pub(crate) fn invalidate(&self, used: &Credentials) -> bool {
        const AT_MOST_EVERY: Duration = Duration::from_secs(60);
        let mut state = self.shared.lock();
        let recently = state
            .last_invalidation
            .is_some_and(|at| at.elapsed() < AT_MOST_EVERY);
        let Some(current) = state
            .current
            .as_mut()
            .filter(|c| c.credentials.access_key_id() == used.access_key_id())
        else {
            return false;
        };
        if recently {
            return false;
        }
        current.suspect = true;
        state.last_invalidation = Some(Instant::now());
        true
    }

    /// The cached credentials if they are usable now (they may be newer than the ones a
    /// caller obtained a moment ago, if a refresh finished meanwhile).
    pub(crate) fn usable_now(&self) -> Option<Credentials> {
        let state = self.shared.lock();
        let now = (self.shared.clock)();
        state
            .current
            .as_ref()
            .filter(|c| c.usable(now))
            .map(|c| c.credentials.clone())
    }

    /// Current credentials: the cached ones while they are usable (refreshed in the
    /// background once they near expiry), otherwise the outcome of a refresh shared with
    /// every other caller.
    pub async fn credentials(&self) -> Result<Credentials, Error> {
        self.get().await.map(|o| o.credentials).map_err(|f| f.error)
    }

    /// This cache as an SDK credentials provider, for the clients that act as the role (the
    /// Secrets Manager client reading a secret in the database account). Every call is a
    /// [`CredentialCache::credentials`] call: the same cached, single-flight credentials.
    pub(crate) fn provider(&self) -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(CacheProvider(self.shared.clone()))
    }

    /// Fetches credentials into the cache now, unless usable ones are cached already, and
    /// waits for the outcome: for work done ahead of the first connect (a Lambda function's
    /// init; see [`Connector::warm_up`](crate::Connector::warm_up)).
    ///
    /// The fetch is the cache's usual single-flight refresh: a caller that needs credentials
    /// meanwhile waits for it instead of starting another. Unlike other failed refreshes, a
    /// failure here is not held against the next caller: it fetches again at once instead
    /// of waiting out the backoff, so the first real connect makes its own attempt and
    /// reports its own error.
    pub async fn prefetch(&self) -> Result<(), Error> {
        match self.get().await {
            Ok(_) => Ok(()),
            Err(FetchFailure { error, .. }) => {
                let mut state = self.shared.lock();
                if let Some(failure) = state.failure.as_mut() {
                    failure.retry_at = Instant::now();
                }
                Err(error)
            }
        }
    }

    /// Current credentials and how they were obtained; on failure, the error and what the
    /// base chain gave before it (so a report can show where the path stopped).
    pub(crate) async fn get(&self) -> Result<Obtained, FetchFailure> {
        let shared = &self.shared;
        loop {
            let waited_for;
            let refreshed;
            {
                let mut state = shared.lock();
                let now = (shared.clock)();
                let usable = state.current.as_ref().filter(|c| c.usable(now));
                if let Some(soft) = usable.filter(|c| !c.suspect).map(|c| c.soft) {
                    if let Some(obtained) = state.cached(now) {
                        if now >= soft {
                            shared.start_refresh(&mut state, false);
                        }
                        return Ok(obtained);
                    }
                }
                if let Some(failure) = &state.failure {
                    if !state.refreshing && Instant::now() < failure.retry_at {
                        // Backing off: STS gets nothing; callers get the suspect
                        // credentials while they last, or else the last failure.
                        return state.cached(now).ok_or_else(|| failure.for_caller());
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
                let now = (shared.clock)();
                return state.cached(now).ok_or_else(|| failure.for_caller());
            }
            if let Some(cached) = &state.current {
                return Ok(Obtained {
                    credentials: cached.credentials.clone(),
                    fetch: state
                        .last_fetch
                        .as_ref()
                        .filter(|(generation, _)| *generation == state.generation)
                        .map(|(_, fetch)| fetch.clone()),
                    refresh_failing: None,
                });
            }
        }
    }
}

impl State {
    /// The cached credentials as served while they are usable, with a failing refresh
    /// noted: the normal case, and the fallback for suspect ones while refreshing fails.
    fn cached(&self, now: SystemTime) -> Option<Obtained> {
        let cached = self.current.as_ref().filter(|c| c.usable(now))?;
        Some(Obtained {
            credentials: cached.credentials.clone(),
            fetch: None,
            refresh_failing: self.failure.as_ref().map(|f| f.describe(now)),
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
        if state.refreshing {
            return;
        }
        if !needed
            && state
                .failure
                .as_ref()
                .is_some_and(|f| Instant::now() < f.retry_at)
        {
            return;
        }
        state.refreshing = true;
        let shared = self.clone();
        let work = {
            let shared = self.clone();
            async move { shared.fetch().await }
        };
        spawn_refresh(REFRESH_TIMEOUT, work, move |ended| {
            let lost = |message: &str| FetchFailure {
                error: shared.refresh_lost(message),
                base: None,
            };
            let (outcome, retry_at_once) = match ended {
                Ended::Finished(outcome) => (outcome, false),
                Ended::TimedOut => {
                    let error = Error::timeout(shared.fetch_stage(), REFRESH_TIMEOUT);
                    (Err(FetchFailure { error, base: None }), false)
                }
                Ended::Panicked => (
                    Err(lost("the credentials provider panicked while refreshing credentials")),
                    false,
                ),
                // Says nothing about STS: the next caller may start another at once.
                Ended::Dropped => (
                    Err(lost("the credential refresh was cancelled before it finished (the Tokio runtime it ran on shut down)")),
                    true,
                ),
            };
            shared.finish_refresh(outcome, retry_at_once);
        });
    }

    fn role_arn(&self) -> Option<&str> {
        self.assume.as_ref().map(|(_, r)| r.role_arn.as_str())
    }

    /// The stage a fetch that did not finish is reported at: assume-role when a role is
    /// assumed (the base chain is rarely what hangs), else credentials.
    fn fetch_stage(&self) -> crate::stage::Stage {
        fetch_stage(self.role_arn())
    }

    fn refresh_lost(&self, message: &str) -> Error {
        refresh_lost(self.role_arn(), message)
    }

    /// Records a refresh's outcome and wakes every caller waiting for it.
    fn finish_refresh(
        &self,
        outcome: Result<(Credentials, Fetch), FetchFailure>,
        retry_at_once: bool,
    ) {
        self.record_outcome(outcome, retry_at_once);
        self.refreshed.notify_waiters();
    }

    fn record_outcome(
        &self,
        outcome: Result<(Credentials, Fetch), FetchFailure>,
        retry_at_once: bool,
    ) {
        let now = (self.clock)();
        let mut state = self.lock();
        state.refreshing = false;
        state.generation += 1;
        let generation = state.generation;
        match outcome {
            Ok((credentials, fetch)) => {
                self.refreshes.fetch_add(1, Ordering::Relaxed);
                if let Some(failure) = state.failure.take() {
                    tracing::info!(
                        failed_attempts = failure.in_a_row,
                        "credentials refreshed again after failures"
                    );
                }
                state.current = Some(Cached::new(credentials, now));
                state.last_fetch = Some((generation, fetch));
            }
            Err(FetchFailure { error, base }) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let previous = state.failure.take();
                let in_a_row = previous.as_ref().map_or(1, |f| f.in_a_row + 1);
                let since = previous.map_or(now, |f| f.since);
                let still_valid = state.current.as_ref().is_some_and(|c| c.usable(now));
                tracing::warn!(
                    error = %error,
                    failed_attempts = in_a_row,
                    cached_credentials_still_valid = still_valid,
                    "credential refresh failed"
                );
                state.failure = Some(Failure {
                    error,
                    base,
                    generation,
                    since,
                    in_a_row,
                    retry_at: if retry_at_once {
                        Instant::now()
                    } else {
                        Instant::now() + backoff(in_a_row, MAX_BACKOFF)
                    },
                });
            }
        }
    }

    async fn fetch(&self) -> Result<(Credentials, Fetch), FetchFailure> {
        let started = Instant::now();
        let base = self
            .base
            .provide_credentials()
            .await
            .map_err(credentials_error)
            .and_then(|c| usable(c, None, (self.clock)()))
            .map_err(|error| FetchFailure { error, base: None })?;
        let base_took = started.elapsed();

        let Some((sts, settings)) = &self.assume else {
            let fetch = Fetch {
                base: base.clone(),
                base_took,
                assume_role_took: None,
            };
            return Ok((base, fetch));
        };
        let started = Instant::now();
        match assume_role(sts, settings)
            .await
            .and_then(|c| usable(c, Some(&settings.role_arn), (self.clock)()))
        {
            Ok(credentials) => Ok((
                credentials,
                Fetch {
                    base,
                    base_took,
                    assume_role_took: Some(started.elapsed()),
                },
            )),
            Err(error) => Err(FetchFailure {
                error,
                base: Some((base, base_took)),
            }),
        }
    }
}

/// A [`CredentialCache`] seen by the SDK as a credentials provider.
struct CacheProvider(Arc<Shared>);

impl fmt::Debug for CacheProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheProvider")
    }
}

impl ProvideCredentials for CacheProvider {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let cache = CredentialCache {
            shared: self.0.clone(),
        };
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            cache
                .credentials()
                .await
                .map_err(aws_credential_types::provider::error::CredentialsError::provider_error)
        })
    }
}

/// How a refresh task ended.
pub(crate) enum Ended<T> {
    /// `work` finished with this output.
    Finished(T),
    /// `work` did not finish within its limit.
    TimedOut,
    /// Polling `work` panicked.
    Panicked,
    /// The task was dropped unfinished: the runtime it was spawned on shut down (as when a
    /// `Connector` kept in a static outlives a `#[tokio::test]` runtime).
    Dropped,
}

/// Runs `work` (within `limit`) in a task of its own, the one refresh of a cache, and hands
/// how it ended to `finish`: exactly once, whatever ends it. A cache's waiters must hear of
/// every refresh, or its `refreshing` flag stays set and no refresh ever starts again; so a
/// panicking `work` is caught, and a task dropped unfinished reports that when dropped.
pub(crate) fn spawn_refresh<T, W, F>(limit: Duration, work: W, finish: F)
where
    T: Send + 'static,
    W: std::future::Future<Output = T> + Send + 'static,
    F: FnOnce(Ended<T>) + Send + 'static,
{
    /// Calls `finish` with `Dropped` unless it was called already.
    struct Guard<T, F: FnOnce(Ended<T>)>(Option<F>, std::marker::PhantomData<fn(T)>);
    impl<T, F: FnOnce(Ended<T>)> Drop for Guard<T, F> {
        fn drop(&mut self) {
            if let Some(finish) = self.0.take() {
                finish(Ended::Dropped);
            }
        }
    }
    let mut guard = Guard(Some(finish), std::marker::PhantomData);
    tokio::spawn(async move {
        let ended = match catch_panic(tokio::time::timeout(limit, work)).await {
            Some(Ok(output)) => Ended::Finished(output),
            Some(Err(_)) => Ended::TimedOut,
            None => Ended::Panicked,
        };
        if let Some(finish) = guard.0.take() {
            finish(ended);
        }
    });
}

/// `fut`'s output, or `None` if polling it panicked.
async fn catch_panic<F: std::future::Future>(fut: F) -> Option<F::Output> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::task::Poll;
    let mut fut = Box::pin(fut);
    std::future::poll_fn(
        move |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Some(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        },
    )
    .await
}

impl Failure {
    fn for_caller(&self) -> FetchFailure {
        FetchFailure {
            error: self.error.clone(),
            base: self.base.clone(),
        }
    }

    /// `refresh failing for 12 s (3 attempts): assume-role: ...`, for reports.
    fn describe(&self, now: SystemTime) -> String {
        let for_secs = now.duration_since(self.since).unwrap_or_default().as_secs();
        format!(
            "refresh failing for {for_secs} s ({} attempts): {}",
            self.in_a_row,
            self.error.cause()
        )
    }
}

/// The wait after `failures` failed attempts in a row: 1 s doubling up to `cap`, less up
/// to a fifth at random, so many processes do not retry in step. The one backoff of the
/// crate: credential refreshes (capped at `MAX_BACKOFF`) and sqlx's token refreshes.
pub(crate) fn backoff(failures: u32, cap: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let full = Duration::from_secs(1)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(cap);
    // A random fraction from the std hasher's per-process random keys: no RNG crate needed.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(failures);
    let fraction = (hasher.finish() % 1000) as u32;
    full - full / 5 * fraction / 1000
}

/// Credentials from [`CredentialCache::get`], and whether they were fetched for this call.
pub(crate) struct Obtained {
    pub(crate) credentials: Credentials,
    /// `None` when they came from the cache.
    pub(crate) fetch: Option<Fetch>,
    /// Set when cached credentials are served while refreshing them is failing.
    pub(crate) refresh_failing: Option<String>,
}

/// What one fetch did.
#[derive(Clone)]
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
    let c = output
        .credentials
        .ok_or_else(|| sts_answer_error(&settings.role_arn, "STS answered without credentials"))?;
    let expiry = SystemTime::try_from(c.expiration).map_err(|e| {
        sts_answer_error(
            &settings.role_arn,
            &format!("STS answered an unusable expiration: {e}"),
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
fn usable(
    credentials: Credentials,
    role_arn: Option<&str>,
    now: SystemTime,
) -> Result<Credentials, Error> {
    let Some(expiry) = credentials.expiry() else {
        return Ok(credentials);
    };
    let remaining = expiry.duration_since(now).unwrap_or(Duration::ZERO);
    if remaining > MIN_REMAINING {
        return Ok(credentials);
    }
    Err(stale_credentials(role_arn, remaining.as_secs()))
}

/// Credentials closer than this to expiry are refused from a provider, whatever their
/// lifetime.
const MIN_REMAINING: Duration = Duration::from_secs(5);

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
    fn hour_long_credentials_refresh_sixteen_minutes_early_and_serve_until_30_s_left() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let expiry = t0 + Duration::from_secs(3600);
        let c = Cached::new(creds_expiring(expiry), t0);
        assert_eq!(c.soft, expiry - REFRESH_MARGIN);
        assert_eq!(c.soft, expiry - Duration::from_secs(960));
        assert!(c.usable(expiry - Duration::from_secs(31)));
        assert!(!c.usable(expiry - HARD_MARGIN));
        assert!(!c.usable(expiry + Duration::from_secs(1)));
    }

    #[test]
    fn margins_scale_down_for_short_sessions() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = Cached::new(creds_expiring(t0 + Duration::from_secs(30)), t0);
        assert_eq!(c.soft, t0 + Duration::from_secs(15)); // refresh from half their life
        assert!(c.usable(t0 + Duration::from_secs(24)));
        assert!(!c.usable(t0 + Duration::from_secs(25))); // a sixth (5 s) before expiry
    }

    #[test]
    fn long_term_keys_are_never_refreshed_nor_unusable() {
        let c = Cached::new(
            Credentials::from_keys("AKID", "SECRET", None),
            SystemTime::now(),
        );
        assert!(c.usable(SystemTime::now() + Duration::from_secs(10 * 365 * 86_400)));
        assert!(c.soft > SystemTime::now() + Duration::from_secs(100 * 365 * 86_400));
    }

    #[test]
    fn expired_credentials_are_refused() {
        let now = SystemTime::now();
        let c = creds_expiring(now - Duration::from_secs(1));
        let err = usable(c, None, now).unwrap_err();
        assert_eq!(err.stage(), crate::Stage::Credentials);
        assert!(err.to_string().contains("expire in 0 s"), "{err}");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_at_most_a_fifth_of_jitter() {
        for (failures, full) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (40, 5.0)] {
            let wait = backoff(failures, MAX_BACKOFF).as_secs_f64();
            assert!(wait <= full && wait >= full * 0.8, "{failures}: {wait}");
        }
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
