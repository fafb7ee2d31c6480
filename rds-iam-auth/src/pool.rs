//! Connection pooling for long-running services: [deadpool-postgres] with IAM tokens
//! (feature `deadpool-postgres`).
//!
//! A pool of IAM-authenticated connections must not bake one token into its configuration:
//! a token lives 15 minutes, so such a pool stops opening connections after that. Here the
//! pool is deadpool-postgres's own ([`Pool`], [`Object`](deadpool_postgres::Object),
//! `prepare_cached`, [`RecyclingMethod`]); only how it opens a connection changes: every
//! physical connection goes through [`Connector::connect`], with a freshly signed token from
//! credentials the connector caches and refreshes, the TLS and dial settings, the
//! connector's deadline and its after-connect hook.
//!
//! A deadpool-postgres user switches by changing how the pool is built:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rds_iam_auth::pool::{self, ManagerConfig, RecyclingMethod};
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
//! // Was: Pool::builder(Manager::from_config(pg_config, tls, manager_config))
//! let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Verified };
//! let pool = pool::builder(&connector, manager_config).max_size(16).build()?;
//!
//! // Or choose the limits yourself, from the manager:
//! use std::time::Duration;
//! let custom = pool::Pool::builder(pool::manager(&connector, ManagerConfig::default()))
//!     .runtime(pool::Runtime::Tokio1)
//!     .recycle_timeout(Some(Duration::from_secs(2)))
//!     .pre_recycle(pool::max_lifetime(Duration::from_secs(10 * 60)))
//!     .max_size(16)
//!     .build()?;
//! # drop(custom);
//!
//! let client = pool.get().await?;
//! let statement = client.prepare_cached("SELECT $1::int4 + 1").await?;
//! let row = client.query_one(&statement, &[&41i32]).await?;
//! assert_eq!(row.get::<_, i32>(0), 42);
//! # Ok(()) }
//! ```
//!
//! What [`builder`] adds to a plain deadpool-postgres pool, for a service that runs for
//! months:
//! - **a recycle timeout** ([`DEFAULT_RECYCLE_TIMEOUT`]): with
//!   [`RecyclingMethod::Verified`], a half-open connection costs that long at checkout and
//!   is replaced, instead of hanging the caller;
//! - **a maximum lifetime** ([`max_lifetime`], [`DEFAULT_MAX_LIFETIME`] with up to a tenth
//!   less per connection, so they do not all expire together): connections move off old
//!   backends (after a failover, a scaling event) by themselves;
//! - TCP keepalive on every socket, from the connector's settings.
//!
//! Build the pool from [`manager`] instead to choose these yourself.
//!
//! A service configured through a [`deadpool_postgres::Config`] keeps it; only the password
//! goes (it is refused: the token is the password):
//!
//! ```no_run
//! # async fn run(cfg: deadpool_postgres::Config) -> Result<(), Box<dyn std::error::Error>> {
//! use rds_iam_auth::pool::{self, deadpool_postgres};
//!
//! let connector = rds_iam_auth::Config::from_pg_config(&cfg.get_pg_config()?)?
//!     .assume_role("arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role")
//!     .external_id("5e0d8c1a-example")
//!     .connector()
//!     .await?;
//! let mut pool_config = cfg.get_pool_config(); // size, queue mode, timeouts
//! pool_config.timeouts.recycle.get_or_insert(pool::DEFAULT_RECYCLE_TIMEOUT);
//! let pool = pool::builder(&connector, cfg.get_manager_config())
//!     .config(pool_config)
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! deadpool-postgres's [`Connect`] trait returns a [`tokio_postgres::Error`], which has no
//! public constructor. A failed connect is therefore handed to the pool as an I/O-kind
//! `tokio_postgres::Error` whose cause is this crate's [`Error`]. Its own message is
//! tokio-postgres's `error communicating with the server`; the cause (`login: ... | hint:
//! ...`) is its [`source`](std::error::Error::source), which error reporters such as
//! `anyhow` print, and [`stage_error`] gets the [`Error`] back (stage, hint) from a
//! `PoolError::Backend`. Each failure is also logged (WARN, with its stage) and kept:
//! [`Connector::last_connect_error`].
//!
//! [deadpool-postgres]: https://docs.rs/deadpool-postgres

use std::hash::BuildHasher;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub use deadpool_postgres::{
    self, Hook, HookError, Manager, ManagerConfig, Pool, PoolBuilder, PoolError, RecyclingMethod,
    Runtime,
};
use deadpool_postgres::{ClientWrapper, Connect};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;
use tokio_postgres::tls::NoTls;

use crate::{BoxFuture, Connector, Error};

/// The recycle timeout [`builder`] sets.
pub const DEFAULT_RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The maximum connection lifetime [`builder`] sets.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// A deadpool-postgres pool builder whose connections are opened by `connector`, with the
/// Tokio runtime, [`DEFAULT_RECYCLE_TIMEOUT`] and a [`max_lifetime`] of
/// [`DEFAULT_MAX_LIFETIME`]. Set the pool's size and other limits on it, then `build()`.
///
/// No create timeout is set: the connector's own `connect_timeout` already bounds every
/// stage of a connect, and its error names the stage that hung.
pub fn builder(connector: &Connector, config: ManagerConfig) -> PoolBuilder {
    Pool::builder(manager(connector, config))
        .runtime(Runtime::Tokio1)
        .recycle_timeout(Some(DEFAULT_RECYCLE_TIMEOUT))
        .pre_recycle(max_lifetime(DEFAULT_MAX_LIFETIME))
}

/// A deadpool-postgres [`Manager`] whose connections are opened by `connector` (see
/// [`IamConnect`]), for a pool built your own way.
pub fn manager(connector: &Connector, config: ManagerConfig) -> Manager {
    Manager::from_connect(
        connector.startup_config().clone(),
        IamConnect::new(connector.clone()),
        config,
    )
}

/// A pre-recycle hook that retires connections older than `lifetime` (less up to a tenth,
/// fixed per connection by its creation time) at checkout; the pool opens a new one.
pub fn max_lifetime(lifetime: Duration) -> Hook {
    let jitter = std::collections::hash_map::RandomState::new();
    Hook::sync_fn(move |_client: &mut ClientWrapper, metrics| {
        let fraction = (jitter.hash_one(metrics.created) % 1000) as u32;
        if metrics.age() >= own_lifetime(lifetime, fraction) {
            Err(HookError::message(
                "connection reached its maximum lifetime",
            ))
        } else {
            Ok(())
        }
    })
}

/// `lifetime` less `fraction` thousandths of a tenth of it: never overflows, whatever the
/// lifetime (`Duration::MAX` keeps connections for ever in practice).
fn own_lifetime(lifetime: Duration, fraction: u32) -> Duration {
    lifetime - lifetime / 10_000 * fraction.min(1000)
}

/// deadpool-postgres's [`Connect`] through a [`Connector`]: every connection gets a fresh
/// token and the connector's TLS, dial, deadline and after-connect settings. The
/// `tokio_postgres::Config` deadpool-postgres passes in is not used: the connector's
/// settings are the configuration.
#[derive(Clone, Debug)]
pub struct IamConnect {
    connector: Connector,
}

impl IamConnect {
    /// Connects with `connector`.
    pub fn new(connector: Connector) -> Self {
        Self { connector }
    }

    /// The connector (its credential cache, its last connect error).
    pub fn connector(&self) -> &Connector {
        &self.connector
    }
}

impl Connect for IamConnect {
    fn connect(
        &self,
        _pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>>
    {
        Box::pin(async move {
            match self.connector.connect_driven().await {
                Ok(pair) => Ok(pair),
                Err(error) => {
                    tracing::warn!(stage = %error.stage(), error = %error, "pooled connect failed");
                    Err(carry(error).await)
                }
            }
        })
    }
}

/// This crate's error inside a `tokio_postgres::Error` handed out by the pool (from
/// `PoolError::Backend`), when the failure happened while opening a connection.
///
/// ```no_run
/// # async fn run(pool: rds_iam_auth::pool::Pool) {
/// use rds_iam_auth::pool::{stage_error, PoolError};
/// match pool.get().await {
///     Err(PoolError::Backend(e)) => match stage_error(&e) {
///         Some(err) => eprintln!("connect failed at {}: {err}", err.stage()),
///         None => eprintln!("database error: {e}"),
///     },
///     Err(e) => eprintln!("pool: {e}"),
///     Ok(client) => { /* ... */ }
/// }
/// # }
/// ```
pub fn stage_error(error: &tokio_postgres::Error) -> Option<&Error> {
    let io = std::error::Error::source(error)?.downcast_ref::<io::Error>()?;
    io.get_ref()?.downcast_ref::<Error>()
}

/// Makes a `tokio_postgres::Error` whose cause is `error`: tokio-postgres has no public
/// constructor, but reports a failing stream as an I/O error that keeps the stream's
/// `io::Error` (and so ours) as its cause.
async fn carry(error: Error) -> tokio_postgres::Error {
    let stream = FailingStream(Some(io::Error::other(error)));
    let mut config = tokio_postgres::Config::new();
    config.user("-");
    match config.connect_raw(stream, NoTls).await {
        Err(e) => e,
        Ok(_) => unreachable!("a stream that fails every read and write cannot log in"),
    }
}

/// A stream whose first operation fails with the given error (later ones with a plain
/// one).
struct FailingStream(Option<io::Error>);

impl FailingStream {
    fn fail<T>(&mut self) -> Poll<io::Result<T>> {
        Poll::Ready(Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("connect failed"))))
    }
}

impl AsyncRead for FailingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().fail()
    }
}

impl AsyncWrite for FailingStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().fail()
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().fail()
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::Stage;

    proptest::proptest! {
        /// The jittered lifetime never overflows and stays within a tenth below the
        /// setting, whatever the setting (`Duration::MAX` included).
        #[test]
        fn own_lifetime_takes_any_duration(
            secs in proptest::prelude::any::<u64>(),
            nanos in 0..1_000_000_000u32,
            fraction in proptest::prelude::any::<u32>(),
        ) {
            for lifetime in [Duration::new(secs, nanos), Duration::MAX, Duration::ZERO] {
                let own = own_lifetime(lifetime, fraction);
                proptest::prop_assert!(own <= lifetime);
                proptest::prop_assert!(own >= lifetime - lifetime / 10);
            }
        }
    }

    #[tokio::test]
    async fn a_connect_error_travels_inside_a_tokio_postgres_error() {
        let error = Error::timeout(Stage::AssumeRole, Duration::from_secs(3));
        let expected = error.to_string();
        let carried = carry(error).await;
        let back = stage_error(&carried).expect("our error is the cause");
        assert_eq!(back.stage(), Stage::AssumeRole);
        assert_eq!(back.to_string(), expected);
        let cause = std::error::Error::source(&carried).expect("cause");
        assert_eq!(cause.to_string(), expected);
    }
}
