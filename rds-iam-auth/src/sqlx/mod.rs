//! A sqlx [`PgPool`] whose every physical connection logs in with a valid IAM token
//! (feature `sqlx`, sqlx 0.9, Rust 1.94 or later).
//!
//! sqlx opens a pool's connections from one [`PgConnectOptions`] value, the password
//! included, and has no hook that runs before a connection is opened. A token lives
//! 15 minutes, so a pool built from one token stops opening connections after that. Here a
//! background task re-signs a token on a schedule and installs fresh options with
//! [`Pool::set_connect_options`](::sqlx::Pool::set_connect_options); the pool itself is a
//! plain [`PgPool`] that the rest of the code uses as it always did.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use rds_iam_auth::sqlx::{PgPoolOptions, PoolBuilder};
//! use rds_iam_auth::Config;
//!
//! let connector = Config::new()
//!     .hostname("app-ro.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com")
//!     .user("app_reader")
//!     .database("example_db")
//!     .assume_role("arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role")
//!     .external_id("5e0d8c1a-example")
//!     .connector()
//!     .await?;
//! let (pool, refresh) = PoolBuilder::new(connector)
//!     .pool_options(PgPoolOptions::new().max_connections(16))
//!     .connect()
//!     .await?;
//!
//! // A plain sqlx::PgPool: pass it around as before.
//! let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
//! assert_eq!(one, 1);
//!
//! // Whether refreshing works, for a health endpoint or a metric.
//! if let Some(err) = refresh.last_refresh_error() {
//!     eprintln!("token refresh failing ({} failures): {err}", refresh.failed_refresh_count());
//! }
//!
//! // Closing the pool also ends the refresh task.
//! pool.close().await;
//! # Ok(()) }
//! ```
//!
//! For a single connection, [`connect_options`] returns options with a fresh token for
//! `PgConnection::connect_with`.
//!
//! # The refresh schedule
//!
//! - A token is signed when the pool is built, from the [`Connector`]'s cached (assumed-role)
//!   credentials, and then every [`PoolBuilder::refresh_every`]: a third of the token's life
//!   by default (5 minutes for the 15-minute tokens of RDS). A connection the pool opens
//!   thus presents a token at most that old.
//! - A token dies with the session credentials that signed it. So the next refresh also
//!   comes no later than half of the time those credentials have left: the credential cache
//!   renews them ahead of expiry (see [`crate::credentials`]), and the refresh after that
//!   signs with the new ones, long before the old ones expire.
//! - Connections already open are not touched: a token is only checked at login.
//! - With a stored password (a secret or a parameter) instead of tokens, the options carry
//!   the cached password, installed again as soon as the connector reads a new one; at each
//!   tick the task also logs in once through the connector, so that a rotation (which
//!   sqlx's own refused logins cannot report) is noticed and the password read again.
//!
//! # When a refresh fails
//!
//! Refreshing fails when no usable credentials can be had (STS refusing or unreachable
//! once the cached credentials are too close to expiry). Then:
//! - the pool keeps the options it has, so new connections keep working for as long as
//!   the last token and its credentials are valid;
//! - a WARN event is logged with the stage, the cause and the hint (never a token or a
//!   key), and [`RefreshHandle::last_refresh_error`] and
//!   [`RefreshHandle::failed_refresh_count`] say so until a refresh succeeds;
//! - it is retried after 1 s, doubling up to 30 s (never longer than the refresh interval).
//!
//! While the cached credentials are still valid but renewing them fails, refreshes still
//! succeed (with the cached credentials) and the credential cache logs the failures:
//! [`CredentialCache::refresh_error`](crate::CredentialCache::refresh_error) (through
//! [`Connector::credentials`]) says so.
//!
//! # TLS: what sqlx verifies
//!
//! sqlx verifies the server certificate with rustls (on aws-lc-rs, as the rest of this
//! crate) against the Mozilla roots of `webpki-roots` (which hold Amazon Root CA 1 to 4, the
//! roots of RDS Proxy's certificates) plus the connector's [`CaBundle`](crate::CaBundle),
//! if any, always in [`PgSslMode::VerifyFull`]: **the chain and the endpoint name**, as
//! [`Connector::connect`] does, with or without a `connect_address` override.
//!
//! sqlx verifies the name against the options' host and has no separate TLS name, so:
//! - **dialing the endpoint name itself** (no `connect_address`): the host is the endpoint
//!   name and sqlx dials it;
//! - **dialing another address** (`connect_address`: a tunnel, a port forward, the local
//!   stack), on Unix: the host is still the endpoint name, and the options also carry
//!   [`PgConnectOptions::socket`]: the directory of a local forwarder of this crate. sqlx
//!   connects to its Unix socket, then sends the SSLRequest and verifies the certificate
//!   against the endpoint name as over TCP; the forwarder connects each such stream to the
//!   override address (DNS, every address in turn, `TCP_NODELAY`, the connector's keepalive)
//!   and only copies the encrypted bytes. A server there with a certificate for any other
//!   name, even from a trusted issuer, is refused before the password is sent.
//!
//! The forwarder is one per dial target per process, on a thread of its own (not on the
//! caller's runtime); its socket is in a directory only this user can open
//! (`rds-iam-auth-sqlx-<pid>-<random>` under `$XDG_RUNTIME_DIR` or the temporary
//! directory), removed when the forwarder stops (one a process left when it ended is
//! removed by the next forwarder, once nothing listens on it). It runs while a pool's
//! refresh task does, and for as long as options signed for it hold a live token (so also
//! for options from [`connect_options`]); open connections are copied until they close.
//! When its TCP connect fails it logs the stage and cause at WARN and closes the stream, so
//! sqlx fails at once (sqlx itself reports a closed stream or an unexpected answer to its
//! SSLRequest; [`PoolBuilder::connect`] returns the forwarder's DNS or TCP error instead).
//!
//! Where no Unix sockets exist (Windows), no forwarder can run: a pool or options over an
//! override are refused with an error naming `connect_address`, unless the pool is built
//! with [`PoolBuilder::accept_unverified_name_over_connect_address`], which dials the
//! override with [`PgSslMode::VerifyCa`] (the chain only: any certificate from a trusted
//! issuer, for any name, then receives the token) and says so at WARN.
//!
//! There is no plaintext fallback.
//!
//! # What else differs from [`Connector::connect`]
//!
//! - A login refused with the proxy's IAM message is not retried with refreshed
//!   credentials; the next scheduled refresh installs a token from the credentials then
//!   cached.
//! - Dialing the endpoint name, TCP keepalive is sqlx's (over an override, the forwarder's
//!   connection uses the connector's). Connector settings sqlx cannot carry are refused
//!   when the pool is built, each with what to use instead: an `after_connect` hook (use
//!   [`PgPoolOptions::after_connect`]), `options` (use [`PoolBuilder::customize`]) and
//!   `target_session_attrs`. A connect is bounded by the pool's `acquire_timeout`, not the
//!   connector's connect timeout.
//! - sqlx reads `PGOPTIONS`, `PGSSLCERT`, `PGSSLKEY` and `PGAPPNAME` from the environment
//!   when it creates options, and offers no way to unset them; every other setting that
//!   matters (host, port, user, password, database, TLS mode and trust) is set here.
//! - `PgConnectOptions`'s `Debug` prints the password (the token): do not log
//!   [`PgPool::connect_options`].
//! - The refresh task holds a clone of the pool (sqlx has no weak pool handle): it ends when
//!   the pool is closed ([`Pool::close`](::sqlx::Pool::close), which sqlx recommends at
//!   shutdown anyway) or on [`RefreshHandle::stop`]. A pool whose every clone is dropped
//!   without closing it stays alive with its task.

#[cfg(unix)]
mod forward;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::CertificateDer;
use tokio::sync::Notify;

pub use ::sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use crate::credentials::backoff;
use crate::error::classify::{
    error_chain, find_cause, login_failure, login_reason, password_login_error, tcp_error,
    tls_error,
};
use crate::error::{ConfigError, Error, FailureLog, Reason};
use crate::stage::Stage;
use crate::Connector;
use tokio_postgres::config::TargetSessionAttrs;

/// The shortest interval between two refreshes, whatever the schedule says.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait before retrying a failed refresh.
pub(crate) const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30);

/// Options for one connection, with a token signed now: for
/// `PgConnection::connect_with(&options)`.
///
/// The settings are the connector's: the endpoint name and port (over a `connect_address`
/// override, with the socket directory of the local forwarder to that address), user,
/// database (the user name when none is set, as PostgreSQL does), application name, the
/// token as password, and [`PgSslMode::VerifyFull`] for the endpoint name (see the
/// [module documentation](self)). The token is valid for one login within its lifetime;
/// the forwarder stays up at least that long.
pub async fn connect_options(connector: &Connector) -> Result<PgConnectOptions, Error> {
    let settings = Settings::new(connector, None, false)?;
    Ok(settings.sign().await?.options)
}

/// Builds a [`PgPool`] whose connections log in with fresh IAM tokens, and the task that
/// keeps its options fresh.
pub struct PoolBuilder {
    connector: Connector,
    pool_options: PgPoolOptions,
    refresh_every: Option<Duration>,
    customize: Option<Customize>,
    accept_unverified_name: bool,
}

type Customize = Arc<dyn Fn(PgConnectOptions) -> PgConnectOptions + Send + Sync>;

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("connector", &self.connector)
            .field("pool_options", &self.pool_options)
            .field("refresh_every", &self.refresh_every)
            .field("customize", &self.customize.is_some())
            .field("accept_unverified_name", &self.accept_unverified_name)
            .finish()
    }
}

impl PoolBuilder {
    /// A builder with sqlx's default pool options and the default schedule.
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            pool_options: PgPoolOptions::new(),
            refresh_every: None,
            customize: None,
            accept_unverified_name: false,
        }
    }

    /// The pool settings (size, lifetimes, timeouts, hooks).
    pub fn pool_options(mut self, options: PgPoolOptions) -> Self {
        self.pool_options = options;
        self
    }

    /// How often a fresh token is installed: by default a third of the token's life
    /// (5 minutes). At least [`MIN_REFRESH_INTERVAL`] and shorter than the token's life.
    /// Shorten it when the server accepts tokens for less than their `X-Amz-Expires` (the
    /// local stack's `[proxy] token_lifetime_seconds`).
    pub fn refresh_every(mut self, every: Duration) -> Self {
        self.refresh_every = Some(every);
        self
    }

    /// Changes the options of every connection (statement cache, statement logging,
    /// startup `options`, ...). It runs on each fresh set of options before this crate's own
    /// settings (host, port, user, password, database, application name when one is set,
    /// TLS), which therefore always win.
    pub fn customize<F>(mut self, f: F) -> Self
    where
        F: Fn(PgConnectOptions) -> PgConnectOptions + Send + Sync + 'static,
    {
        self.customize = Some(Arc::new(f));
        self
    }

    /// Where sqlx cannot verify the endpoint name over a `connect_address` override (a
    /// platform without Unix sockets, where the local forwarder cannot run), accepts
    /// verifying the certificate's chain only ([`PgSslMode::VerifyCa`]): any certificate
    /// from a trusted issuer, for any name, then receives the token. Logged at WARN once per
    /// endpoint and address. Without it, building such a pool fails with an error that names
    /// `connect_address`.
    ///
    /// On Unix this changes nothing: the name is verified there through the forwarder (see
    /// the [module documentation](self)).
    pub fn accept_unverified_name_over_connect_address(mut self) -> Self {
        self.accept_unverified_name = true;
        self
    }

    /// Signs a token, opens the pool with one connection (as
    /// [`PgPoolOptions::connect_with`] does, so a wrong setting fails here), and starts the
    /// refresh task.
    pub async fn connect(self) -> Result<(PgPool, RefreshHandle), Error> {
        let (settings, every, pool_options) = self.prepare()?;
        let signed = settings.sign().await?;
        let acquire_timeout = pool_options.get_acquire_timeout();
        let started = Instant::now();
        let pool = pool_options
            .connect_with(signed.options.clone())
            .await
            .map_err(|e| settings.pool_error(e, acquire_timeout, started))?;
        let handle = Refresher::spawn(settings, every, pool.clone(), signed);
        Ok((pool, handle))
    }

    /// Signs a token and returns the pool without opening a connection (connections open
    /// on demand), with the refresh task running.
    pub async fn connect_lazy(self) -> Result<(PgPool, RefreshHandle), Error> {
        let (settings, every, pool_options) = self.prepare()?;
        let signed = settings.sign().await?;
        let pool = pool_options.connect_lazy_with(signed.options.clone());
        let handle = Refresher::spawn(settings, every, pool.clone(), signed);
        Ok((pool, handle))
    }

    fn prepare(self) -> Result<(Settings, Duration, PgPoolOptions), Error> {
        let lifetime = self.connector.token_params().expires_in();
        let every = match self.refresh_every {
            None => (lifetime / 3).max(MIN_REFRESH_INTERVAL),
            Some(every) if every < MIN_REFRESH_INTERVAL => {
                return Err(invalid_interval(format!(
                    "{every:?} is shorter than {MIN_REFRESH_INTERVAL:?}"
                )))
            }
            Some(every) if every >= lifetime => {
                return Err(invalid_interval(format!(
                    "{every:?} is not shorter than the token's life ({lifetime:?}): tokens would expire before they are replaced"
                )))
            }
            Some(every) => every,
        };
        // Settings sqlx cannot carry are refused, not dropped.
        if self.connector.startup_config().get_options().is_some() {
            return Err(ConfigError::invalid(
                "options",
                "is set, but sqlx takes startup options as key-value pairs: pass them with PoolBuilder::customize(|o| o.options([(\"search_path\", \"app\")])) (RDS Proxy refuses them either way)",
            )
            .into());
        }
        if self.connector.target_session_attrs() != TargetSessionAttrs::Any {
            return Err(ConfigError::invalid(
                "target_session_attrs",
                "is set, but sqlx has no such check: verify with PgPoolOptions::after_connect (SHOW transaction_read_only)",
            )
            .into());
        }
        if self.connector.has_after_connect() {
            return Err(ConfigError::invalid(
                "after_connect",
                "is set, but sqlx opens its own connections: use PgPoolOptions::after_connect",
            )
            .into());
        }
        let settings = Settings::new(&self.connector, self.customize, self.accept_unverified_name)?;
        Ok((settings, every, self.pool_options))
    }
}

fn invalid_interval(reason: String) -> Error {
    ConfigError::invalid("refresh_every", reason).into()
}

impl Connector {
    /// A sqlx pool whose connections log in with fresh IAM tokens (feature `sqlx`):
    /// [`PoolBuilder::new`]`(self.clone()).pool_options(options).connect()`.
    pub async fn sqlx_pool(
        &self,
        options: PgPoolOptions,
    ) -> Result<(PgPool, RefreshHandle), Error> {
        PoolBuilder::new(self.clone())
            .pool_options(options)
            .connect()
            .await
    }
}

/// What the refresh task of one pool is doing; cheap to clone.
///
/// Dropping it changes nothing: the task runs until the pool is closed or
/// [`RefreshHandle::stop`] is called.
#[derive(Clone)]
pub struct RefreshHandle {
    status: Arc<Status>,
}

struct Status {
    refreshes: AtomicU64,
    /// Failed refreshes; the last one until a refresh succeeds.
    failures: FailureLog,
    running: AtomicBool,
    stop: Notify,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the token of the options in force was signed.
    signed_at: Option<SystemTime>,
    /// When the credentials that signed it expire.
    credentials_expiry: Option<SystemTime>,
}

impl Status {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for RefreshHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshHandle")
            .field("running", &self.is_running())
            .field("refreshes", &self.refresh_count())
            .field("failed_refreshes", &self.failed_refresh_count())
            .field("token_signed_at", &self.token_signed_at())
            .finish_non_exhaustive()
    }
}

impl RefreshHandle {
    /// The error of the last refresh while refreshing fails (the pool still has the
    /// previous options); `None` once a refresh succeeds.
    pub fn last_refresh_error(&self) -> Option<Error> {
        self.status.failures.last().map(|(_, error)| error)
    }

    /// How many refreshes failed since the pool was built.
    pub fn failed_refresh_count(&self) -> u64 {
        self.status.failures.count()
    }

    /// How many times fresh options were installed, the first ones included.
    pub fn refresh_count(&self) -> u64 {
        self.status.refreshes.load(Ordering::Relaxed)
    }

    /// When the token in the pool's options was signed.
    pub fn token_signed_at(&self) -> Option<SystemTime> {
        self.status.lock().signed_at
    }

    /// When the credentials that signed that token expire (`None`: long-term keys).
    pub fn credentials_expire_at(&self) -> Option<SystemTime> {
        self.status.lock().credentials_expiry
    }

    /// Whether the task still refreshes (false once the pool is closed or after
    /// [`RefreshHandle::stop`]).
    pub fn is_running(&self) -> bool {
        self.status.running.load(Ordering::SeqCst)
    }

    /// Stops refreshing; the pool keeps its last options (which expire with their token).
    pub fn stop(&self) {
        self.status.stop.notify_one();
    }
}

/// Everything needed to build options from a token: fixed when the pool is built.
struct Settings {
    connector: Connector,
    route: Route,
    /// The connector's CA bundle as PEM; empty without one (which also keeps
    /// `PGSSLROOTCERT` from adding a root).
    root_pem: Vec<u8>,
    customize: Option<Customize>,
}

/// Options with a token signed now, and the expiry of the credentials that signed it.
struct Signed {
    options: PgConnectOptions,
    signed_at: SystemTime,
    credentials_expiry: Option<SystemTime>,
}

/// How sqlx reaches the server, and what it verifies there.
enum Route {
    /// TCP to the dial target, which is the endpoint name: `VerifyFull`.
    Direct,
    /// A `connect_address` override, through the local forwarder's Unix socket: `VerifyFull`
    /// for the endpoint name (the forwarder only moves ciphertext).
    #[cfg(unix)]
    Forwarded(Arc<forward::Forwarder>),
    /// A `connect_address` override dialed by sqlx itself, where no forwarder can run, as
    /// the user accepted: `VerifyCa`.
    #[cfg(not(unix))]
    UnverifiedName,
}

impl Route {
    fn new(connector: &Connector, accept_unverified_name: bool) -> Result<Route, Error> {
        let (dial, port) = connector.dial_target();
        let endpoint = connector.token_params().hostname();
        if same_host(dial, endpoint) {
            return Ok(Route::Direct);
        }
        #[cfg(unix)]
        {
            // Not needed here: the forwarder verifies the name.
            let _ = accept_unverified_name;
            match forward::for_connector(connector) {
                Ok(forwarder) => Ok(Route::Forwarded(forwarder)),
                Err(e) => Err(tcp_error(
                    &format!("{dial}:{port}"),
                    &format!("cannot start the local forwarder sqlx dials through: {e}"),
                    Some(e),
                )),
            }
        }
        #[cfg(not(unix))]
        {
            if accept_unverified_name {
                warn_name_unverified(dial, port, endpoint);
                Ok(Route::UnverifiedName)
            } else {
                Err(ConfigError::invalid(
                    "connect_address",
                    format!(
                        "is set ({dial}:{port}), but on this platform sqlx can verify only the certificate's chain there, not that it names {endpoint}: dial the endpoint name (no connect_address), or accept that with PoolBuilder::accept_unverified_name_over_connect_address()"
                    ),
                )
                .into())
            }
        }
    }
}

impl Settings {
    fn new(
        connector: &Connector,
        customize: Option<Customize>,
        accept_unverified_name: bool,
    ) -> Result<Self, Error> {
        let route = Route::new(connector, accept_unverified_name)?;
        let root_pem = connector
            .ca_bundle()
            .map(|b| pem(b.certificates()))
            .unwrap_or_default();
        Ok(Self {
            connector: connector.clone(),
            route,
            root_pem,
            customize,
        })
    }

    /// The options with the password of the next logins: a token signed with the
    /// connector's cached credentials, or the stored password from its cache.
    async fn sign(&self) -> Result<Signed, Error> {
        let (password, credentials_expiry) = self.connector.password_for_login().await?;
        let signed_at = SystemTime::now();
        let params = self.connector.token_params();
        #[cfg(unix)]
        if let Route::Forwarded(forwarder) = &self.route {
            // Whoever holds these options can dial the forwarder until the token expires.
            forwarder.keep_for(params.expires_in());
        }
        Ok(Signed {
            options: self.options(password.as_str()),
            signed_at,
            credentials_expiry,
        })
    }

    fn options(&self, password: &str) -> PgConnectOptions {
        let c = &self.connector;
        let (host, port) = c.dial_target();
        let user = c.token_params().username();
        let startup = c.startup_config();
        let mut options = PgConnectOptions::new_without_pgpass();
        if let Some(customize) = &self.customize {
            options = customize(options);
        }
        let options = match &self.route {
            Route::Direct => options
                .host(host)
                .port(port)
                .ssl_mode(PgSslMode::VerifyFull),
            // sqlx connects to DIR/.s.PGSQL.PORT, then sends the SSLRequest and verifies
            // the certificate against `host`: the endpoint name, whatever the socket is.
            #[cfg(unix)]
            Route::Forwarded(forwarder) => {
                let endpoint = c.token_params();
                options
                    .host(endpoint.hostname())
                    .port(endpoint.port())
                    .socket(forwarder.dir())
                    .ssl_mode(PgSslMode::VerifyFull)
            }
            #[cfg(not(unix))]
            Route::UnverifiedName => options.host(host).port(port).ssl_mode(PgSslMode::VerifyCa),
        };
        let mut options = options
            .username(user)
            .password(password)
            // Always set, so PGDATABASE cannot change it: PostgreSQL's default is the user.
            .database(startup.get_dbname().unwrap_or(user))
            .ssl_root_cert_from_pem(self.root_pem.clone());
        if let Some(name) = startup.get_application_name() {
            options = options.application_name(name);
        }
        options
    }

    /// The wait before the next refresh after a successful one.
    fn next_refresh(&self, every: Duration, signed: &Signed) -> Duration {
        let credentials_left = signed
            .credentials_expiry
            .map(|e| e.duration_since(signed.signed_at).unwrap_or_default());
        match credentials_left {
            Some(left) => every.min(left / 2),
            None => every,
        }
        .max(MIN_REFRESH_INTERVAL)
    }

    /// A failed first connection, as an [`Error`] naming its stage (the sqlx error is the
    /// source).
    fn pool_error(&self, e: ::sqlx::Error, acquire_timeout: Duration, since: Instant) -> Error {
        let (host, port) = self.connector.dial_target();
        let p = self.connector.token_params();
        if find_cause::<rustls::Error>(&e).is_some() || matches!(e, ::sqlx::Error::Tls(_)) {
            // The name sqlx verified: the endpoint's, except where the user accepted not
            // verifying it.
            #[cfg(not(unix))]
            if let Route::UnverifiedName = self.route {
                return tls_error(host, std::io::Error::other(e));
            }
            return tls_error(p.hostname(), std::io::Error::other(e));
        }
        // The forwarder closed the stream sqlx opened because its own dial failed: that
        // failure (DNS or TCP, with the address) says more than the closed stream.
        #[cfg(unix)]
        if let Route::Forwarded(forwarder) = &self.route {
            if !matches!(e, ::sqlx::Error::Database(_)) {
                if let Some(failure) = forwarder.failure_since(since) {
                    return failure;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = since;
        match e {
            ::sqlx::Error::Database(ref db) => {
                let code = db.code().map(|c| c.into_owned());
                let message = format!("{}: {}", code.as_deref().unwrap_or("error"), db.message());
                let reason = login_reason(db.message(), code.as_deref());
                let error = login_failure(p.username(), p.hostname(), reason, &message, code)
                    .with_source(e);
                match self.connector.password_source() {
                    Some(_) => password_login_error(error),
                    None => error,
                }
            }
            ::sqlx::Error::Io(source) => {
                tcp_error(&format!("{host}:{port}"), &source.to_string(), Some(source))
            }
            // The pool retries refused connections until its acquire timeout.
            ::sqlx::Error::PoolTimedOut => Error::timeout(Stage::Login, acquire_timeout),
            other => {
                let message = error_chain(&other);
                login_failure(
                    p.username(),
                    p.hostname(),
                    Reason::LoginFailed,
                    &message,
                    None,
                )
                .with_source(other)
            }
        }
    }
}

fn same_host(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// Logs, once per endpoint and dial address (per process), that sqlx does not verify the
/// name there (the user accepted it where no forwarder can run).
#[cfg(not(unix))]
fn warn_name_unverified(dial: &str, port: u16, endpoint: &str) {
    use std::collections::HashSet;
    type Seen = HashSet<(String, u16, String)>;
    static WARNED: Mutex<Option<Seen>> = Mutex::new(None);
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned
        .get_or_insert_with(HashSet::new)
        .insert((dial.to_owned(), port, endpoint.to_owned()))
    {
        tracing::warn!(
            endpoint,
            dial_address = %format_args!("{dial}:{port}"),
            "sqlx: dialing {dial}:{port} instead of the endpoint name without a local forwarder (accept_unverified_name_over_connect_address): sqlx verifies the certificate's chain there but not that it names {endpoint} (PgSslMode::VerifyCa), so a server with a trusted certificate for any name receives the token; run the staged check to verify the name"
        );
    }
}

/// Certificates as PEM text (what sqlx reads its extra roots from).
fn pem(certificates: &[CertificateDer<'_>]) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = String::new();
    for cert in certificates {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in text.as_bytes().chunks(64) {
            // Base64 is ASCII.
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

/// The refresh task of one pool.
struct Refresher {
    settings: Settings,
    every: Duration,
    pool: PgPool,
    status: Arc<Status>,
}

impl Refresher {
    fn spawn(settings: Settings, every: Duration, pool: PgPool, first: Signed) -> RefreshHandle {
        let status = Arc::new(Status {
            refreshes: AtomicU64::new(0),
            failures: FailureLog::default(),
            running: AtomicBool::new(true),
            stop: Notify::new(),
            state: Mutex::default(),
        });
        let refresher = Refresher {
            settings,
            every,
            pool,
            status: status.clone(),
        };
        let wait = refresher.installed(first);
        tokio::spawn(refresher.run(wait));
        RefreshHandle { status }
    }

    async fn run(self, mut wait: Duration) {
        let mut closed = std::pin::pin!(self.pool.close_event());
        let mut failures_in_a_row = 0u32;
        // A stored password read again (its time to live passed, or a login through the
        // connector was refused after a rotation) is installed at once, not at the next tick.
        let mut new_password = self
            .settings
            .connector
            .password_cache()
            .map(|cache| cache.subscribe());
        loop {
            let on_schedule = tokio::select! {
                _ = &mut closed => break,
                _ = self.status.stop.notified() => break,
                _ = tokio::time::sleep(wait) => true,
                Some(Ok(())) = async {
                    match new_password.as_mut() {
                        Some(versions) => Some(versions.changed().await),
                        None => None,
                    }
                } => false,
            };
            if on_schedule && new_password.is_some() {
                // sqlx cannot tell this task that its logins are refused after a rotation;
                // a login through the connector can, and reads the password again.
                tokio::select! {
                    _ = &mut closed => break,
                    () = self.settings.connector.probe_login() => {}
                }
            }
            let outcome = tokio::select! {
                _ = &mut closed => break,
                outcome = self.settings.sign() => outcome,
            };
            wait = match outcome {
                Ok(signed) => {
                    if failures_in_a_row > 0 {
                        tracing::info!(
                            failed_attempts = failures_in_a_row,
                            "sqlx pool: IAM token refreshed again after failures"
                        );
                    }
                    failures_in_a_row = 0;
                    self.pool.set_connect_options(signed.options.clone());
                    self.installed(signed)
                }
                Err(error) => {
                    failures_in_a_row += 1;
                    let retry_in = backoff(failures_in_a_row, MAX_RETRY_BACKOFF).min(self.every);
                    self.failed(error, failures_in_a_row, retry_in);
                    retry_in
                }
            };
        }
        self.status.running.store(false, Ordering::SeqCst);
        tracing::debug!("sqlx pool closed or stopped: IAM token refresh ended");
    }

    /// Records fresh options (already in the pool); the wait until the next refresh.
    fn installed(&self, signed: Signed) -> Duration {
        let wait = self.settings.next_refresh(self.every, &signed);
        let mut state = self.status.lock();
        state.signed_at = Some(signed.signed_at);
        state.credentials_expiry = signed.credentials_expiry;
        drop(state);
        self.status.failures.clear_last();
        self.status.refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            next_refresh_in = ?wait,
            "sqlx pool: installed connect options with a fresh IAM token"
        );
        wait
    }

    fn failed(&self, error: Error, in_a_row: u32, retry_in: Duration) {
        self.status.failures.record(&error);
        let signed_at = self.status.lock().signed_at;
        let token_age = signed_at.and_then(|t| t.elapsed().ok());
        tracing::warn!(
            stage = %error.stage(),
            cause = %error.cause(),
            hint = error.hint().unwrap_or("-"),
            failed_attempts = in_a_row,
            current_token_age = ?token_age,
            retry_in = ?retry_in,
            "sqlx pool: refreshing the IAM token failed; new connections use the previous token until a refresh succeeds"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_the_bundle_parser() {
        let certs = vec![
            CertificateDer::from(vec![0x30u8, 0x03, 0x02, 0x01, 0x01]),
            CertificateDer::from((0..=255u8).cycle().take(1000).collect::<Vec<u8>>()),
        ];
        let text = pem(&certs);
        let parsed = crate::CaBundle::from_pem(&text).expect("parses");
        assert_eq!(parsed.certificates(), &certs[..]);
        let text = String::from_utf8(text).expect("ascii");
        assert!(text.lines().all(|l| l.len() <= 64), "{text}");
    }

    #[test]
    fn retry_backoff_doubles_to_its_cap_with_at_most_a_fifth_of_jitter() {
        for (n, full) in [(1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (u32::MAX, 30.0)] {
            let wait = backoff(n, MAX_RETRY_BACKOFF).as_secs_f64();
            assert!(wait <= full && wait >= full * 0.8, "{n}: {wait}");
        }
    }

    #[test]
    fn login_reasons_follow_the_proxy_messages() {
        let iam = "The IAM authentication failed for the role app. Check the IAM token for this role and try again.";
        assert_eq!(login_reason(iam, Some("28P01")), Reason::IamRefused);
        assert_eq!(
            login_reason("database \"x\" does not exist", Some("3D000")),
            Reason::DatabaseNotFound
        );
        assert_eq!(
            login_reason("too many", Some("53300")),
            Reason::TooManyConnections
        );
        assert_eq!(
            login_reason("something else", Some("XX000")),
            Reason::LoginFailed
        );
    }

    #[test]
    fn host_comparison_ignores_case_and_the_root_dot() {
        assert!(same_host(
            "Db.Proxy-X.us-east-1.rds.amazonaws.com.",
            "db.proxy-x.us-east-1.rds.amazonaws.com"
        ));
        assert!(!same_host(
            "127.0.0.1",
            "db.proxy-x.us-east-1.rds.amazonaws.com"
        ));
    }
}
