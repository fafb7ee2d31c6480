//! A local IAM auth proxy for Amazon RDS Proxy (PostgreSQL): the counterpart, for RDS with
//! cross-account IAM authentication, of Google's Cloud SQL Auth Proxy.
//!
//! Programs in any language connect to a local listener with no password; every client
//! connection is opened through an [`rds_iam_auth::Connector`] (cached cross-account
//! credentials, a fresh IAM token, TLS verified against the endpoint name) and then relayed
//! byte for byte.
//!
//! | module | job |
//! |---|---|
//! | [`targets`] | the targets file (TOML): one entry per database, shared with `rds-iam-auth check --config` |
//! | `args.rs` | the command line (the Cloud SQL Auth Proxy's flag names) |
//! | `listen.rs` | the local listeners: TCP on loopback by default, Unix sockets laid out as PostgreSQL's |
//! | `frontend.rs` | the client's side of the protocol: startup, TLS refusal, user check, errors |
//! | `scram.rs` | the optional client password, checked with SCRAM-SHA-256 as PostgreSQL does |
//! | `session.rs` | one client: the upstream login through the connector, then the relay |
//! | `cancel.rs` | cancel requests, forwarded upstream for keys this proxy handed out |
//! | `metrics.rs` | counters and the connect latency histogram, in Prometheus text |
//! | `http.rs` | the health, metrics and `/quitquitquit` endpoints |
#![warn(missing_docs)]
#![deny(unreachable_pub)]

pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod scram;
pub mod targets;
