//! Connection pooling for long-running services (feature `pool`, on by default).
//!
//! A pool of IAM-authenticated connections must not bake one token into its
//! configuration: a token lives 15 minutes, so such a pool stops opening connections after
//! that. [`Pool`] is a [deadpool] pool whose manager is a [`Connector`]: every physical
//! connection it opens gets a freshly signed token, from credentials that the connector
//! caches and refreshes. A connection that the proxy closed (idle timeout, failover) is
//! found at checkout and replaced.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rds_iam_auth::{pool::Pool, Config};
//!
//! let connector = Config::new()
//!     .hostname("app-ro.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com")
//!     .user("app_reader")
//!     .database("example_db")
//!     .assume_role("arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role")
//!     .external_id("5e0d8c1a-example")
//!     .connector()
//!     .await?;
//! let pool = Pool::builder(connector).max_size(8).build()?;
//!
//! let client = pool.get().await?; // opens or reuses a connection
//! let n: i64 = client.query_one("SELECT count(*) FROM customers", &[]).await?.get(0);
//! # let _ = n;
//! # Ok(()) }
//! ```

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};

use crate::{Connector, Error};

/// A pool of connections opened by a [`Connector`].
pub type Pool = managed::Pool<Connector>;

/// A pooled connection (derefs to [`tokio_postgres::Client`]).
pub type PooledClient = managed::Object<Connector>;

/// Why `Pool::get` failed: [`Error`] says which stage of opening a connection broke.
pub type PoolError = managed::PoolError<Error>;

impl managed::Manager for Connector {
    type Type = tokio_postgres::Client;
    type Error = Error;

    async fn create(&self) -> Result<tokio_postgres::Client, Error> {
        self.connect().await
    }

    async fn recycle(
        &self,
        client: &mut tokio_postgres::Client,
        _: &Metrics,
    ) -> RecycleResult<Error> {
        if client.is_closed() {
            return Err(RecycleError::message("connection closed by the server"));
        }
        // An empty simple query is the cheapest round trip that proves the session lives.
        client
            .simple_query("")
            .await
            .map(|_| ())
            .map_err(|e| RecycleError::Backend(Error::from_query(e)))
    }
}
