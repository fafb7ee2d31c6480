//! The client-visible texts of RDS Proxy: its messages, their SQLSTATEs and the startup
//! parameters it accepts.

/// SQLSTATE of IAM authentication failures.
pub const SQLSTATE_IAM: &str = "28P01";
/// SQLSTATE of the TLS-required refusal and of a missing user.
pub const SQLSTATE_AUTH_SPEC: &str = "28000";
/// SQLSTATE of unsupported protocol features.
pub const SQLSTATE_FEATURE: &str = "0A000";
/// SQLSTATE of the client-limit refusal.
pub const SQLSTATE_TOO_MANY: &str = "53300";
/// SQLSTATE when PostgreSQL cannot be reached.
pub const SQLSTATE_BACKEND_DOWN: &str = "08006";

/// `This RDS Proxy requires TLS connections.`
pub const MSG_TLS_REQUIRED: &str = "This RDS Proxy requires TLS connections.";
/// Protocol other than 3.0.
pub const MSG_PROTOCOL: &str =
    "Feature not supported: RDS Proxy supports only version 3.0 of the PostgreSQL messaging protocol.";
/// Replication mode.
pub const MSG_REPLICATION: &str =
    "Feature not supported: RDS Proxy currently doesn't support streaming replication mode.";
/// No user in the startup packet.
pub const MSG_NO_USER: &str =
    "A user name is missing from the connection startup packet. Provide a user name for this connection.";
/// No server of the endpoint's role became available in time (RDS Proxy's borrow timeout).
pub const MSG_BORROW_TIMEOUT: &str = "Timed-out waiting to acquire database connection.";
/// The message sent when PostgreSQL cannot be reached (not an AWS text: RDS Proxy would
/// time out waiting for a database connection).
pub const MSG_BACKEND_DOWN: &str =
    "RDS Proxy could not open a connection to the database: the database is not reachable.";

/// The message sent to a client whose database connection ended during its request or
/// transaction without an error of PostgreSQL's own (not an AWS text: AWS documents that
/// such connections are cancelled, not what the client reads).
pub const MSG_BACKEND_LOST: &str =
    "RDS Proxy lost the database connection of this session during a transaction or statement.";

/// A failed password login of an `auth = "secret"` user (wrong password, or an IAM token
/// sent as one). AWS does not document RDS Proxy's text for it; this is PostgreSQL's own,
/// with its SQLSTATE (28P01, as [`SQLSTATE_IAM`]).
pub fn msg_password_failed(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

/// `The IAM authentication failed for the role USER. ...`
pub fn msg_iam_failed(user: &str) -> String {
    format!("The IAM authentication failed for the role {user}. Check the IAM token for this role and try again.")
}
/// `This RDS proxy has no credentials for the role USER. ...`
pub fn msg_no_credentials(user: &str) -> String {
    format!("This RDS proxy has no credentials for the role {user}. Check the credentials for this role and try again.")
}
/// `Feature not supported: RDS Proxy currently doesn't support the option OPTION.`
pub fn msg_option(option: &str) -> String {
    format!("Feature not supported: RDS Proxy currently doesn't support the option {option}.")
}
/// `The maximum number of client connections to the proxy exceeded N.`
pub fn msg_too_many(n: usize) -> String {
    format!("The maximum number of client connections to the proxy exceeded {n}.")
}

/// Startup parameters RDS Proxy accepts.
pub const ACCEPTED_PARAMETERS: &[&str] = &[
    "user",
    "database",
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
    "search_path",
];
