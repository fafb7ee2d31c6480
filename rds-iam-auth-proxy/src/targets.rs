//! The targets file: one entry per database the proxy (or `rds-iam-auth check --config`)
//! serves.
// PROVISIONAL: replaced by the targets-file module being written alongside.
use std::path::{Path, PathBuf};

/// One database.
pub struct Target {
    /// Name.
    pub name: String,
    /// Settings.
    pub config: rds_iam_auth::Config,
    /// Local port.
    pub local_port: Option<u16>,
    /// Socket dir.
    pub unix_socket: Option<PathBuf>,
}

/// Errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TargetsError(String);

/// Loads.
pub fn load(path: &Path) -> Result<Vec<Target>, TargetsError> {
    Err(TargetsError(format!("{}: not yet", path.display())))
}
