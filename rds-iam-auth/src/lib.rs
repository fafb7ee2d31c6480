//! IAM-authenticated TLS connections to PostgreSQL behind Amazon RDS Proxy, across AWS
//! accounts, with no stored password.
//!
//! A service in an *application account* assumes a role in the *database account* (with an
//! external ID), signs a short-lived IAM auth token with those credentials, and opens a TLS
//! connection to the proxy endpoint, sending the token as the password. This crate does
//! each step the way the AWS SDKs and RDS Proxy expect, and names the step that broke when
//! something does.
//!
//! The path of one connection, stage by stage, and where each stage happens
//! (`ARCHITECTURE.md` at the repository root has the whole picture):
//!
//! | stage | module | what happens |
//! |---|---|---|
//! | config | [`Config`] (`config/`: the builder; [`mod@env`] and `pg.rs`, its other two sources) | everything is validated before any I/O |
//! | credentials, assume-role | [`credentials`] | base credentials, cross-account `AssumeRole`, cached and single-flight |
//! | token | [`token`] | SigV4 query presigning (on `aws-sigv4`), byte-identical to `aws rds generate-db-auth-token` |
//! | secret (instead of token) | `password.rs` ([`PasswordSource`]) | a database password from a Secrets Manager secret (read as the role) or a Parameter Store SecureString, cached, re-read after a rotation |
//! | dns, tcp | `net.rs` | resolve the endpoint (or the dial override) and open the socket |
//! | tls | `tls.rs` | rustls on aws-lc-rs through `tokio-postgres-rustls`, verified against the endpoint name |
//! | login | `login.rs` | PostgreSQL startup with the token as the password |
//! | login (relays) | `stream.rs` | the same startup done by hand, the session handed over as its stream ([`Connector::connect_stream`], [`LoggedInStream`]) |
//! | (all of them) | [`Connector`] (`connector.rs`) | runs the stages under one deadline (`runner.rs`: [`Outcome`], [`StageReport`]): credentials and token alongside DNS, TCP and TLS, then login |
//! | query | [`Connector::check`] (`check.rs`) | the staged check: every stage's outcome and time ([`CheckReport`]) |
//! | (any failure) | [`Error`] (`error/`, with `classify.rs`) | what each failure means: the [`Stage`], the [`Reason`], its cause and a hint |
//! | (pooling) | `pool` | deadpool-postgres pools whose every connection gets a fresh token (feature `deadpool-postgres`) |
//! | (sqlx) | `sqlx` | a sqlx `PgPool` whose options get a fresh token on a schedule (feature `sqlx`) |
//!
//! # Example
//!
//! ```no_run
//! use rds_iam_auth::Config;
//!
//! # async fn run() -> Result<(), rds_iam_auth::Error> {
//! // Build once (credentials are cached in the connector), connect as often as needed.
//! let connector = Config::new()
//!     .hostname("app-ro.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com")
//!     .user("app_reader")
//!     .database("example_db")
//!     .assume_role("arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role")
//!     .external_id("5e0d8c1a-example")
//!     .connector()
//!     .await?;
//!
//! let client = connector.connect().await?;
//! for row in client
//!     .query("SELECT table_name FROM information_schema.tables LIMIT 5", &[])
//!     .await
//!     .map_err(rds_iam_auth::Error::from_query)?
//! {
//!     println!("{}", row.get::<_, String>(0));
//! }
//!
//! // When something is wrong, the staged check says where:
//! let report = connector.check().await;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! Errors print as `stage: cause | hint: what to check`, for example
//! `login: app_reader@app-ro...: FATAL 28P01: The IAM authentication failed for the role
//! app_reader. ... | hint: check rds-db:connect on arn:aws:rds-db:...`.
//!
//! Errors carry a [`Reason`] to decide on (`err.reason() == Reason::IamRefused`), and are
//! `Clone`.
//!
//! Databases not on IAM authentication yet log in with a stored password instead:
//! [`Config::secret_arn`] or [`Config::password_parameter`] (and
//! [`Config::from_parameters`] for settings kept in Parameter Store).
//!
//! Tokens, passwords, secret keys, session tokens and external IDs never appear in
//! `Debug`, `Display` or logs.
//!
//! # Features
//!
//! - `sso` (default): base credentials from IAM Identity Center profiles and
//!   `credential_process`;
//! - `deadpool-postgres`: the `pool` module, deadpool-postgres pools whose every
//!   connection gets a fresh token;
//! - `sqlx`: the `sqlx` module, a sqlx `PgPool` whose options get a fresh token on a
//!   schedule (Rust 1.94);
//! - `test-util`: a replaceable clock for the credential cache, for tests.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unreachable_pub)]

mod check;
mod config;
mod connector;
pub mod credentials;
mod error;
mod login;
mod net;
mod password;
#[cfg(feature = "deadpool-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "deadpool-postgres")))]
pub mod pool;
mod runner;
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx;
mod stage;
mod stream;
mod tls;
pub mod token;
mod warm;

pub use check::CheckReport;
pub use config::{env, Config};
pub use connector::{AfterConnect, BoxFuture, Connector, DEFAULT_CONNECT_TIMEOUT};
pub use credentials::{AssumeRole, CredentialCache};
pub use error::{BoxError, ConfigError, Error, Reason};
pub use login::LoginPassword;
pub use net::Keepalive;
pub use password::{PasswordSource, DEFAULT_PASSWORD_TTL};
pub use runner::{Outcome, StageReport};
pub use stage::Stage;
pub use stream::{BackendKey, LoggedInStream};
pub use tls::{CaBundle, TlsStream};
pub use token::{AuthToken, TokenParams};

/// Re-exported so users name the same versions this crate uses.
pub use tokio_postgres;
