//! What one proxy endpoint serves, as the proxy sees it (shared by the orchestration and
//! `authorize`, which checks tokens against it).

use crate::config::TargetRole;

/// What a proxy endpoint serves, as the proxy sees it.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Endpoint name.
    pub name: String,
    /// Host name signed into tokens.
    pub hostname: String,
    /// Advertised port signed into tokens.
    pub port: u16,
    /// Target role.
    pub target_role: TargetRole,
}
