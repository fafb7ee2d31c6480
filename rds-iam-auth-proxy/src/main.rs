//! `rds-iam-auth-proxy`: see the library part of this package.

fn main() {}
