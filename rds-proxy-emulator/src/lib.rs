//! A local stand-in for AWS STS and for an Amazon RDS Proxy (PostgreSQL, IAM
//! authentication and TLS required), in front of a real, throwaway PostgreSQL server.
//!
//! It exists so that everything in this project — end-to-end tests, `make demo`, a user's
//! own service — can run the whole connection path (STS `AssumeRole`, an IAM token, a TLS
//! login through RDS Proxy to PostgreSQL) on one machine, with no
//! AWS account and no network beyond 127.0.0.1:
//!
//! 1. [`pg`], [`cluster`]: `initdb` in a temp dir, a PostgreSQL writer and hot-standby
//!    readers (streaming replication) on free loopback ports, TLS from the stack's CA,
//!    SCRAM password auth for the backend user (the proxy's "secret"), a seeded
//!    `example_db`; failover promotes a reader.
//! 2. [`sts`]: `AssumeRole` / `GetCallerIdentity` (Query protocol, SigV4-verified,
//!    trust policy and `sts:ExternalId` enforced), answering the XML the AWS SDKs parse.
//! 3. [`proxy`]: the PostgreSQL wire protocol with TLS required, an IAM token checked
//!    as RDS Proxy checks it ([`token`]), the RDS Proxy refusal messages, then RDS Proxy's
//!    connection pooling: database connections to the writer (`READ_WRITE`) or the readers
//!    (`READ_ONLY`) opened once (SCRAM) and lent to clients one transaction at a time,
//!    pinned on the conditions of [`pinning`], kept through a failover, with RDS Proxy's
//!    CloudWatch metrics.
//! 4. [`control`]: fault injection (STS hang/refuse, proxy stall) and counters for tests.
//!
//! The verifier is written from the AWS SigV4 specification and does not
//! depend on the `rds-iam-auth` crate, so a signing bug there cannot be mirrored here.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), rds_proxy_emulator::Error> {
//! use rds_proxy_emulator::{LocalStack, StackConfig};
//!
//! let stack = LocalStack::start(StackConfig::demo()).await?;
//! let endpoint = stack.app_endpoint();
//! println!("STS at {}", stack.sts_endpoint_url());
//! println!(
//!     "proxy {}:{} listening on {}, CA at {}",
//!     endpoint.hostname,
//!     endpoint.port,
//!     endpoint.listen,
//!     stack.ca_path().display()
//! );
//! for (key, value) in stack.env() {
//!     println!("{key}={value}");
//! }
//! stack.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod accept;
pub mod aws_json;
pub mod cluster;
pub mod config;
pub mod control;
pub mod http_service;
pub mod iam;
pub mod pg;
pub mod pinning;
pub mod proxy;
mod rotation;
pub mod scram;
pub mod secrets;
pub mod signed_request;
pub mod sigv4;
pub mod ssm;
mod stack;
pub mod sts;
pub mod tls;
pub mod token;

pub use cluster::{FailoverReport, ServerRole, ServerStatus};
pub use config::{StackConfig, TargetRole};
pub use control::{Counters, ServiceFault, StsFault};
pub use iam::TemporaryCredentials;
pub use proxy::MetricsSnapshot;
pub use stack::{shell_quote, Endpoint, LocalStack, StartOptions};

/// Everything that can go wrong starting or running the stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unreadable or inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The PostgreSQL harness failed (initdb, server start, seeding).
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// Certificate generation or TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// An STS-side operation was refused.
    #[error("STS: {0}")]
    Sts(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
