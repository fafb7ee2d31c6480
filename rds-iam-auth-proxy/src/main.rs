//! `rds-iam-auth-proxy`: see the library part of this package.

fn main() -> std::process::ExitCode {
    rds_iam_auth_proxy::main_with_args(std::env::args_os())
}
