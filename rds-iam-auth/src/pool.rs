//! Connection pooling for long-running services (feature `pool`, on by default).
//!
//! A pool of IAM-authenticated connections must not bake one token into its
//! configuration: a token lives 15 minutes, so such a pool stops opening connections after
//! that. [`Pool`] is a [deadpool] pool whose [`Manager`] opens every physical connection
//! with [`Connector::connect`]: a freshly signed token from credentials that the connector
//! caches and refreshes.
//!
//! What the manager adds for a service that runs for months:
//! - **recycling** at checkout: [`Recycling::Verified`] (default) proves the session with an
//!   empty query, bounded by [`Manager::recycle_timeout`] so a half-open connection costs
//!   that long, not a hang; [`Recycling::Fast`] only checks that the connection is open;
//! - **a maximum lifetime** ([`Manager::max_lifetime`], 30 minutes by default, each
//!   connection up to a tenth shorter at random so they do not all expire together):
//!   connections move off old backends (after a failover, a scaling event) by themselves;
//! - TCP keepalive on every socket, from the connector's settings.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use rds_iam_auth::pool::{Manager, Pool, Recycling};
//! use rds_iam_auth::Config;
//!
//! let connector = Config::new()
//!     .hostname("app-ro.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com")
//!     .user("app_reader")
//!     .database("example_db")
//!     .assume_role("arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role")
//!     .external_id("5e0d8c1a-example")
//!     .connect_timeout(Duration::from_secs(5))   // the whole connect, all stages
//!     .connector()
//!     .await?;
//! let pool = Pool::builder(
//!     Manager::new(connector)
//!         .recycling(Recycling::Verified)          // an empty query at checkout...
//!         .recycle_timeout(Duration::from_secs(2)) // ...that may take 2 s at most
//!         .max_lifetime(Some(Duration::from_secs(30 * 60))),
//! )
//! .max_size(16)
//! .build()?;
//! let client = pool.get().await?;
//! client.simple_query("SELECT 1").await?;
//! # Ok(()) }
//! ```

use std::hash::BuildHasher;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};

use crate::{Connector, Error};

/// A pool of connections opened by a [`Manager`].
pub type Pool = managed::Pool<Manager>;

/// A pooled connection (derefs to [`tokio_postgres::Client`]).
pub type PooledClient = managed::Object<Manager>;

/// Why `Pool::get` failed: [`Error`] says which stage of opening a connection broke.
pub type PoolError = managed::PoolError<Error>;

/// How a connection is checked when it is taken from the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recycling {
    /// Only whether the connection is still open: no round trip, but a connection the
    /// network dropped silently is found on first use instead.
    Fast,
    /// An empty query round trip (the cheapest one that proves the session), within the
    /// recycle timeout.
    #[default]
    Verified,
}

/// The default [`Manager::recycle_timeout`].
pub const DEFAULT_RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default [`Manager::max_lifetime`].
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Opens pooled connections with a [`Connector`] and decides whether to reuse them.
#[derive(Debug)]
pub struct Manager {
    connector: Connector,
    recycling: Recycling,
    recycle_timeout: Duration,
    max_lifetime: Option<Duration>,
    /// Keys the per-connection jitter of the lifetime.
    jitter: std::collections::hash_map::RandomState,
}

impl Manager {
    /// A manager with the defaults: verified recycling within 5 s, 30-minute lifetime.
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            recycling: Recycling::default(),
            recycle_timeout: DEFAULT_RECYCLE_TIMEOUT,
            max_lifetime: Some(DEFAULT_MAX_LIFETIME),
            jitter: Default::default(),
        }
    }

    /// How connections are checked at checkout.
    pub fn recycling(mut self, recycling: Recycling) -> Self {
        self.recycling = recycling;
        self
    }

    /// The longest a verified recycle may take; a connection that does not answer in time
    /// is dropped and another one is used or opened.
    pub fn recycle_timeout(mut self, timeout: Duration) -> Self {
        self.recycle_timeout = timeout;
        self
    }

    /// Connections older than this (less up to a tenth, per connection) are closed at
    /// checkout instead of reused; `None` keeps them for as long as they work.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// The connector every connection is opened with.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// This connection's lifetime: the maximum less a fraction (0 to 1/10) fixed by its
    /// creation time.
    fn lifetime_of(&self, metrics: &Metrics) -> Option<Duration> {
        let max = self.max_lifetime?;
        let fraction = (self.jitter.hash_one(metrics.created) % 1000) as u32;
        Some(max - max / 10 * fraction / 1000)
    }
}

impl From<Connector> for Manager {
    fn from(connector: Connector) -> Self {
        Self::new(connector)
    }
}

impl managed::Manager for Manager {
    type Type = tokio_postgres::Client;
    type Error = Error;

    async fn create(&self) -> Result<tokio_postgres::Client, Error> {
        self.connector.connect().await
    }

    async fn recycle(
        &self,
        client: &mut tokio_postgres::Client,
        metrics: &Metrics,
    ) -> RecycleResult<Error> {
        if client.is_closed() {
            return Err(RecycleError::message("connection closed by the server"));
        }
        if let Some(lifetime) = self.lifetime_of(metrics) {
            if metrics.age() >= lifetime {
                return Err(RecycleError::message(
                    "connection reached its maximum lifetime",
                ));
            }
        }
        if self.recycling == Recycling::Fast {
            return Ok(());
        }
        match tokio::time::timeout(self.recycle_timeout, client.simple_query("")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RecycleError::Backend(Error::from_query(e))),
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.recycle_timeout.as_millis() as u64,
                    "pooled connection did not answer its recycle check: dropped"
                );
                Err(RecycleError::message(
                    "connection did not answer within the recycle timeout",
                ))
            }
        }
    }
}
