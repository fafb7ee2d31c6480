//! The targets file: one entry per database the proxy (or `rds-iam-auth check --config`)
//! serves.
