//! `rds-proxy-emulator`: command-line front end of the local stack.
fn main() {}
