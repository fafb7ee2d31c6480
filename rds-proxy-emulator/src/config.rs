//! The stack's configuration: accounts, principals, roles, the proxy, its endpoints and
//! its db users, in one TOML file.
//!
//! `rds-proxy-emulator/local-stack.toml` (the repository root's `local-stack.toml` is a
//! symbolic link to it) is the demo configuration; it is compiled in
//! and available as [`StackConfig::demo`].
//!
//! ```
//! use rds_proxy_emulator::{StackConfig, TargetRole};
//!
//! let mut config = StackConfig::demo();
//! assert_eq!(config.region, "us-east-1");
//! assert!(config.proxy.endpoints.iter().any(|e| e.target_role == TargetRole::ReadOnly));
//! // Tests often tighten a limit before starting a stack:
//! config.proxy.max_client_connections = 2;
//! config.validate().unwrap();
//! ```

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The demo configuration, byte for byte `local-stack.toml`.
pub const DEMO_TOML: &str = include_str!("../local-stack.toml");

/// The whole stack: what the STS stand-in knows, what the proxy serves, what PostgreSQL holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// Region of the proxy, of the tokens it accepts and of the STS stand-in.
    pub region: String,
    /// Who the "application" is: used for [`crate::LocalStack::env`] and the accessors.
    pub client: ClientConfig,
    /// The STS stand-in.
    #[serde(default)]
    pub sts: StsConfig,
    /// Principals with long-term keys that may call STS.
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
    /// Roles that can be assumed through STS.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    /// The RDS Proxy stand-in.
    pub proxy: ProxyConfig,
    /// The PostgreSQL database behind the proxy.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The Secrets Manager stand-in and its secrets.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// The Parameter Store stand-in and the connection parameters it holds.
    #[serde(default)]
    pub parameter_store: ParameterStoreConfig,
}

/// The Secrets Manager stand-in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Listen address (loopback only; port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Rotate every secret this often, as Secrets Manager's single-user rotation does
    /// (0: never; [`crate::LocalStack::rotate_secret_now`] rotates on demand).
    #[serde(default)]
    pub rotate_every_seconds: u64,
    /// The secrets (`[[secrets.secret]]`), each holding one db user's password.
    #[serde(default, rename = "secret")]
    pub secrets: Vec<SecretConfig>,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            listen: default_listen(),
            rotate_every_seconds: 0,
            secrets: Vec::new(),
        }
    }
}

impl Default for ParameterStoreConfig {
    fn default() -> Self {
        ParameterStoreConfig {
            listen: default_listen(),
            account: None,
            path: None,
            db_user: None,
            readers: Vec::new(),
        }
    }
}

/// One secret: the password of the db user whose `secret` names it, in RDS's JSON shape.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// Secret name (the ARN adds `-` and six random characters).
    pub name: String,
    /// The account that owns it (the database account).
    pub account: String,
    /// The proxy endpoint (name, host name or target role) whose host name and port go
    /// into the secret's `host` and `port`.
    pub endpoint: String,
    /// The resource policy: principals (role ARNs; sessions of these roles match) allowed
    /// `secretsmanager:GetSecretValue`.
    #[serde(default)]
    pub readers: Vec<String>,
    /// The KMS key the secret is encrypted with.
    #[serde(default)]
    pub kms_key: KmsKey,
}

/// Which KMS key encrypts a secret: it decides whether other accounts can decrypt it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum KmsKey {
    /// A customer managed key whose key policy allows the secret's readers to decrypt.
    #[default]
    #[serde(rename = "customer-managed")]
    CustomerManaged,
    /// The AWS managed key `aws/secretsmanager`: usable by the owning account only, so
    /// reads from other accounts fail even when the resource policy allows them.
    #[serde(rename = "aws/secretsmanager")]
    AwsManaged,
}

/// The Parameter Store stand-in. With `path` set, the stack stores the connection settings
/// of `db_user` under it (in the application account), as `GetParametersByPath` reads them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ParameterStoreConfig {
    /// Listen address (loopback only; port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The account that owns the parameters (the application account).
    #[serde(default)]
    pub account: Option<String>,
    /// The path the connection parameters live under (`/connectiontest/db`).
    #[serde(default)]
    pub path: Option<String>,
    /// The db user (`auth = "secret"`) the parameters describe.
    #[serde(default)]
    pub db_user: Option<String>,
    /// Principals allowed `ssm:GetParameter*` on them (sessions of these roles match).
    #[serde(default)]
    pub readers: Vec<String>,
}

/// The application's view of the stack (what goes into `stack.env`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// ARN of the principal whose keys the application holds (one of `principals`).
    pub principal: String,
    /// ARN of the role it assumes (one of `roles`).
    pub role: String,
    /// Database user it connects as (one of `proxy.db_users`).
    pub db_user: String,
    /// Name (or host name) of the proxy endpoint it connects to.
    pub endpoint: String,
}

/// Settings of the STS stand-in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StsConfig {
    /// Listen address (loopback only; port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Smallest `DurationSeconds` accepted (AWS: 900).
    #[serde(default = "default_min_duration")]
    pub min_duration_seconds: u32,
    /// Largest accepted difference between `X-Amz-Date` and the server clock.
    #[serde(default = "default_skew")]
    pub max_clock_skew_seconds: u32,
    /// Issued credentials expire after this many seconds, whatever `DurationSeconds` asked
    /// for (`None`: as asked). For testing credential rotation in long-running clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_lifetime_seconds: Option<u32>,
}

impl Default for StsConfig {
    fn default() -> Self {
        StsConfig {
            listen: default_listen(),
            min_duration_seconds: default_min_duration(),
            max_clock_skew_seconds: default_skew(),
            credentials_lifetime_seconds: None,
        }
    }
}

/// A principal (user or role) holding long-term access keys.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Its ARN, e.g. `arn:aws:iam::111111111111:role/connectiontest-lambda-role`.
    pub arn: String,
    /// Access key id (`AKIA...`).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for PrincipalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalConfig")
            .field("arn", &self.arn)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// A role that STS can issue session credentials for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Role ARN, e.g. `arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role`.
    pub arn: String,
    /// Trust policy: principal ARNs allowed to assume it.
    #[serde(default)]
    pub trusted_principals: Vec<String>,
    /// The `sts:ExternalId` condition, if any.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Largest `DurationSeconds` (AWS default: 3600).
    #[serde(default = "default_max_session")]
    pub max_session_duration_seconds: u32,
    /// Resources of `rds-db:connect` allowed to the role (`*` and `?` wildcards as in IAM).
    #[serde(default)]
    pub rds_db_connect: Vec<String>,
}

/// The RDS Proxy stand-in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Proxy name.
    pub name: String,
    /// Resource id (`prx-...`), as in `arn:aws:rds-db:REGION:ACCOUNT:dbuser:prx-ID/USER`.
    pub resource_id: String,
    /// Account that owns the proxy (the database account).
    pub account: String,
    /// Largest number of simultaneous client connections.
    #[serde(default = "default_max_clients")]
    pub max_client_connections: usize,
    /// `IdleClientTimeout`: seconds a client may stay idle (no request since its last one
    /// completed, in a transaction or not) before its connection is closed (AWS default
    /// 1800).
    #[serde(default = "default_idle")]
    pub idle_client_timeout_seconds: u64,
    /// `MaxConnectionsPercent`: the pools' database connections on a server, all pools
    /// together, are capped at this percentage of its `max_connections` (AWS default 100).
    #[serde(default = "default_max_connections_percent")]
    pub max_connections_percent: u32,
    /// `MaxIdleConnectionsPercent`: idle database connections kept per server, as a
    /// percentage of its `max_connections`; more are closed when given back. Unset: half of
    /// `max_connections_percent` (AWS's default, 50 with the default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_connections_percent: Option<u32>,
    /// `ConnectionBorrowTimeout`: seconds a client's request (or login) waits for a
    /// database connection (all busy at the cap, or no server for the role during a
    /// failover) before it gets `Timed-out waiting to acquire database connection.` (AWS
    /// default 120).
    #[serde(default = "default_borrow_timeout")]
    pub connection_borrow_timeout_seconds: u64,
    /// Clock-skew allowance for a token's `X-Amz-Date`.
    #[serde(default = "default_skew")]
    pub max_clock_skew_seconds: u32,
    /// Seconds opening one database connection (TCP and login) may take before the client
    /// is told the database is unreachable.
    #[serde(default = "default_backend_timeout")]
    pub backend_connect_timeout_seconds: u64,
    /// Tokens older than this (by their `X-Amz-Date`) are refused at login with the IAM
    /// authentication message, whatever their `X-Amz-Expires` (AWS: 900, the tokens' life).
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_seconds: u32,
    /// Endpoints (each with its own listen address).
    pub endpoints: Vec<EndpointConfig>,
    /// Database users the proxy holds a secret for.
    #[serde(default)]
    pub db_users: Vec<DbUserConfig>,
}

impl ProxyConfig {
    /// `max_idle_connections_percent`, or its default: half of `max_connections_percent`.
    pub fn effective_max_idle_connections_percent(&self) -> u32 {
        self.max_idle_connections_percent
            .unwrap_or(self.max_connections_percent / 2)
    }
}

/// One proxy endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Endpoint name (e.g. `application-db-endpoint-read-only`).
    pub name: String,
    /// DNS name, on the TLS certificate and signed into tokens.
    pub hostname: String,
    /// Advertised port: the port clients sign into the token (normally 5432).
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// `READ_WRITE` or `READ_ONLY`.
    pub target_role: TargetRole,
    /// Where it actually listens (loopback; port 0 picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

/// The target role of a proxy endpoint.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum TargetRole {
    /// Sessions may write.
    #[serde(rename = "READ_WRITE")]
    ReadWrite,
    /// Sessions are read-only (`default_transaction_read_only=on`).
    #[serde(rename = "READ_ONLY")]
    ReadOnly,
}

impl TargetRole {
    /// `READ_WRITE` or `READ_ONLY`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetRole::ReadWrite => "READ_WRITE",
            TargetRole::ReadOnly => "READ_ONLY",
        }
    }
}

impl std::fmt::Display for TargetRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A database user and the secret the proxy logs in to PostgreSQL with.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DbUserConfig {
    /// PostgreSQL role name (also the `DBUser` of tokens).
    pub name: String,
    /// How clients authenticate as this user.
    #[serde(default)]
    pub auth: DbAuth,
    /// Its PostgreSQL password (SCRAM-SHA-256), for `auth = "iam"` users. Empty for
    /// `auth = "secret"` users: their password is generated at start and lives in `secret`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend_password: String,
    /// For `auth = "secret"`: the name of the `[[secrets.secret]]` holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl std::fmt::Debug for DbUserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbUserConfig")
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("backend_password", &"<redacted>")
            .field("secret", &self.secret)
            .finish()
    }
}

/// How a db user authenticates to the proxy (RDS Proxy's per-user `IAMAuth`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DbAuth {
    /// An IAM token as the password (`IAMAuth: REQUIRED`); the proxy logs in to
    /// PostgreSQL with `backend_password`.
    #[default]
    Iam,
    /// The password in the user's Secrets Manager secret, checked with SCRAM-SHA-256
    /// (`IAMAuth: DISABLED`, `ClientPasswordAuthType: POSTGRES_SCRAM_SHA_256`); the proxy
    /// logs in to PostgreSQL with the same password.
    Secret,
}

/// The seeded database.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Database name.
    #[serde(default = "default_db_name")]
    pub name: String,
    /// SQL run as the database owner (the first db user) after creation; `None` seeds
    /// the built-in example tables ([`crate::pg::DEFAULT_SEED_SQL`]).
    #[serde(default)]
    pub seed_sql: Option<String>,
    /// Hot standbys (readers) streaming from the writer: where `READ_ONLY` endpoints send
    /// sessions. 0: no reader, so `READ_ONLY` logins time out as with RDS Proxy.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            name: default_db_name(),
            seed_sql: None,
            replicas: default_replicas(),
        }
    }
}

fn default_replicas() -> u32 {
    1
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
fn default_min_duration() -> u32 {
    900
}
fn default_skew() -> u32 {
    300
}
fn default_max_session() -> u32 {
    3600
}
fn default_max_clients() -> usize {
    100
}
fn default_idle() -> u64 {
    1800
}
fn default_max_connections_percent() -> u32 {
    100
}
fn default_borrow_timeout() -> u64 {
    120
}
fn default_backend_timeout() -> u64 {
    10
}
fn default_token_lifetime() -> u32 {
    900
}
fn default_pg_port() -> u16 {
    5432
}
fn default_db_name() -> String {
    "example_db".to_string()
}

impl StackConfig {
    /// Parses a configuration from TOML text and validates it.
    ///
    /// ```
    /// let config = rds_proxy_emulator::StackConfig::from_toml(rds_proxy_emulator::config::DEMO_TOML).unwrap();
    /// assert_eq!(config.database.name, "example_db");
    /// ```
    pub fn from_toml(text: &str) -> Result<StackConfig, Error> {
        let config: StackConfig =
            toml::from_str(text).map_err(|e| Error::Config(e.message().trim().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML configuration file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<StackConfig, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let config: StackConfig = toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message().trim())))?;
        config.validate()?;
        Ok(config)
    }

    /// The demo configuration (`local-stack.toml`, compiled in).
    pub fn demo() -> StackConfig {
        match toml::from_str(DEMO_TOML) {
            Ok(config) => config,
            // Covered by a unit test: the compiled-in file always parses.
            Err(e) => unreachable!("local-stack.toml does not parse: {e}"),
        }
    }

    /// Checks cross references (client principal, role, db user, endpoint exist; listen
    /// addresses are loopback; names are unique).
    pub fn validate(&self) -> Result<(), Error> {
        let err = |m: String| Err(Error::Config(m));
        if self.region.is_empty() {
            return err("region is empty".into());
        }
        if !self
            .principals
            .iter()
            .any(|p| p.arn == self.client.principal)
        {
            return err(format!(
                "client.principal {} is not one of [[principals]]",
                self.client.principal
            ));
        }
        if !self.roles.iter().any(|r| r.arn == self.client.role) {
            return err(format!(
                "client.role {} is not one of [[roles]]",
                self.client.role
            ));
        }
        if !self
            .proxy
            .db_users
            .iter()
            .any(|u| u.name == self.client.db_user)
        {
            return err(format!(
                "client.db_user {} is not one of [[proxy.db_users]]",
                self.client.db_user
            ));
        }
        if self.find_endpoint(&self.client.endpoint).is_none() {
            return err(format!(
                "client.endpoint {} is not one of [[proxy.endpoints]]",
                self.client.endpoint
            ));
        }
        if self.proxy.endpoints.is_empty() {
            return err("proxy.endpoints is empty".into());
        }
        if !self.sts.listen.ip().is_loopback() {
            return err(format!(
                "sts.listen {} is not a loopback address",
                self.sts.listen
            ));
        }
        for (i, e) in self.proxy.endpoints.iter().enumerate() {
            if !e.listen.ip().is_loopback() {
                return err(format!(
                    "endpoint {}: listen {} is not loopback",
                    e.name, e.listen
                ));
            }
            if e.hostname.is_empty() || e.name.is_empty() {
                return err("an endpoint has an empty name or hostname".into());
            }
            if self.proxy.endpoints[..i]
                .iter()
                .any(|o| o.name == e.name || o.hostname.eq_ignore_ascii_case(&e.hostname))
            {
                return err(format!("endpoint {} is listed twice", e.name));
            }
        }
        for (i, p) in self.principals.iter().enumerate() {
            if self.principals[..i]
                .iter()
                .any(|o| o.access_key_id == p.access_key_id)
            {
                return err(format!("access key of {} is used twice", p.arn));
            }
            if account_of_arn(&p.arn).is_none() {
                return err(format!("principal ARN {} has no account", p.arn));
            }
        }
        for r in &self.roles {
            if role_name_of_arn(&r.arn).is_none() || account_of_arn(&r.arn).is_none() {
                return err(format!(
                    "role ARN {} is not arn:aws:iam::ACCOUNT:role/NAME",
                    r.arn
                ));
            }
        }
        for u in &self.proxy.db_users {
            if u.name.is_empty() || u.name.contains('\0') {
                return err("a db user has an empty or invalid name".into());
            }
            self.validate_db_user_auth(u)?;
        }
        self.validate_secrets()?;
        self.validate_parameter_store()?;
        if self.proxy.token_lifetime_seconds == 0 {
            return err("proxy.token_lifetime_seconds must be at least 1".into());
        }
        if self.sts.credentials_lifetime_seconds == Some(0) {
            return err("sts.credentials_lifetime_seconds must be at least 1".into());
        }
        let p = &self.proxy;
        if !(1..=100).contains(&p.max_connections_percent) {
            return err("proxy.max_connections_percent must be between 1 and 100".into());
        }
        if p.max_idle_connections_percent
            .is_some_and(|i| i > p.max_connections_percent)
        {
            return err(
                "proxy.max_idle_connections_percent must be between 0 and max_connections_percent"
                    .into(),
            );
        }
        if !(1..=3600).contains(&p.connection_borrow_timeout_seconds) {
            return err(
                "proxy.connection_borrow_timeout_seconds must be between 1 and 3600".into(),
            );
        }
        if p.idle_client_timeout_seconds == 0 {
            return err("proxy.idle_client_timeout_seconds must be at least 1".into());
        }
        if self.proxy.max_client_connections == 0 {
            return err("proxy.max_client_connections must be at least 1".into());
        }
        if self.database.replicas > 8 {
            return err("database.replicas must be at most 8".into());
        }
        if self.database.name.is_empty() || self.database.name.contains('\0') {
            return err("database.name is empty or invalid".into());
        }
        Ok(())
    }

    fn validate_db_user_auth(&self, u: &DbUserConfig) -> Result<(), Error> {
        let err = |m: String| Err(Error::Config(format!("db user {}: {m}", u.name)));
        match (u.auth, &u.secret) {
            (DbAuth::Iam, None) if u.backend_password.is_empty() => {
                err("auth = \"iam\" needs a backend_password".into())
            }
            (DbAuth::Iam, Some(_)) => {
                err("secret is only for auth = \"secret\" users".into())
            }
            (DbAuth::Secret, None) => err("auth = \"secret\" needs secret = NAME".into()),
            (DbAuth::Secret, Some(_)) if !u.backend_password.is_empty() => err(
                "auth = \"secret\" users take no backend_password (it is generated at start and kept in the secret)".into(),
            ),
            (DbAuth::Secret, Some(name)) if self.secret_config(name).is_none() => {
                err(format!("secret {name} is not one of [[secrets.secret]]"))
            }
            _ => Ok(()),
        }
    }

    fn validate_secrets(&self) -> Result<(), Error> {
        let err = |m: String| Err(Error::Config(m));
        if !self.secrets.listen.ip().is_loopback() {
            return err(format!(
                "secrets.listen {} is not loopback",
                self.secrets.listen
            ));
        }
        for (i, s) in self.secrets.secrets.iter().enumerate() {
            let valid_name = !s.name.is_empty()
                && s.name.len() <= 512
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c));
            if !valid_name {
                return err(format!(
                    "secret name {:?} is not 1 to 512 of A-Za-z0-9/_+=.@-",
                    s.name
                ));
            }
            if self.secrets.secrets[..i].iter().any(|o| o.name == s.name) {
                return err(format!("secret {} is listed twice", s.name));
            }
            if !is_account_id(&s.account) {
                return err(format!(
                    "secret {}: account {:?} is not 12 digits",
                    s.name, s.account
                ));
            }
            if self.find_endpoint(&s.endpoint).is_none() {
                return err(format!(
                    "secret {}: endpoint {} is not one of [[proxy.endpoints]]",
                    s.name, s.endpoint
                ));
            }
            let users = self
                .proxy
                .db_users
                .iter()
                .filter(|u| u.secret.as_deref() == Some(&s.name))
                .count();
            if users != 1 {
                return err(format!(
                    "secret {} must be the secret of exactly one db user (it is of {users})",
                    s.name
                ));
            }
        }
        Ok(())
    }

    fn validate_parameter_store(&self) -> Result<(), Error> {
        let err = |m: String| Err(Error::Config(m));
        let ps = &self.parameter_store;
        if !ps.listen.ip().is_loopback() {
            return err(format!(
                "parameter_store.listen {} is not loopback",
                ps.listen
            ));
        }
        let Some(path) = &ps.path else {
            return Ok(());
        };
        if !path.starts_with('/') || path.ends_with('/') || path.contains("//") {
            return err(format!(
                "parameter_store.path {path:?} must start with / and not end with /"
            ));
        }
        if !ps.account.as_deref().is_some_and(is_account_id) {
            return err(
                "parameter_store.account (12 digits) is needed with parameter_store.path".into(),
            );
        }
        let user = ps.db_user.as_deref().unwrap_or_default();
        if !self
            .proxy
            .db_users
            .iter()
            .any(|u| u.name == user && u.auth == DbAuth::Secret)
        {
            return err(format!("parameter_store.db_user {user:?} is not an auth = \"secret\" user of [[proxy.db_users]]"));
        }
        Ok(())
    }

    /// A secret's configuration by name.
    pub fn secret_config(&self, name: &str) -> Option<&SecretConfig> {
        self.secrets.secrets.iter().find(|s| s.name == name)
    }

    /// Finds an endpoint by name, host name (case-insensitive) or target role
    /// (`READ_ONLY` / `READ_WRITE`, the first one).
    pub fn find_endpoint(&self, key: &str) -> Option<&EndpointConfig> {
        let eps = &self.proxy.endpoints;
        eps.iter()
            .find(|e| e.name == key)
            .or_else(|| eps.iter().find(|e| e.hostname.eq_ignore_ascii_case(key)))
            .or_else(|| eps.iter().find(|e| e.target_role.as_str() == key))
    }

    /// The `rds-db:connect` resource ARN for a db user of this proxy.
    ///
    /// ```
    /// let c = rds_proxy_emulator::StackConfig::demo();
    /// assert_eq!(
    ///     c.dbuser_arn("app_user"),
    ///     "arn:aws:rds-db:us-east-1:222222222222:dbuser:prx-0a1b2c3d4e5f67890/app_user"
    /// );
    /// ```
    pub fn dbuser_arn(&self, db_user: &str) -> String {
        let id = &self.proxy.resource_id;
        let id = if id.starts_with("prx-") {
            id.clone()
        } else {
            format!("prx-{id}")
        };
        format!(
            "arn:aws:rds-db:{}:{}:dbuser:{}/{}",
            self.region, self.proxy.account, id, db_user
        )
    }
}

/// The account id of an IAM or STS ARN (`arn:aws:iam::ACCOUNT:...`).
pub fn account_of_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (arn_lit, _partition, _service, _region, account) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    parts.next()?;
    (arn_lit == "arn" && account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
        .then_some(account)
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The role name of `arn:aws:iam::ACCOUNT:role/[PATH/]NAME`.
pub fn role_name_of_arn(arn: &str) -> Option<&str> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let rest = resource.strip_prefix("role/")?;
    let name = rest.rsplit('/').next()?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_parses_and_validates() {
        let c = StackConfig::from_toml(DEMO_TOML).unwrap();
        assert_eq!(c, StackConfig::demo());
        assert_eq!(c.proxy.endpoints.len(), 2);
        assert_eq!(
            c.find_endpoint("READ_ONLY").unwrap().name,
            "application-db-endpoint-read-only"
        );
        assert_eq!(
            c.find_endpoint("READ_WRITE").unwrap().name,
            "application-db-proxy"
        );
    }

    #[test]
    fn arn_parts() {
        assert_eq!(
            account_of_arn("arn:aws:iam::222222222222:role/x"),
            Some("222222222222")
        );
        assert_eq!(account_of_arn("arn:aws:iam::22:role/x"), None);
        assert_eq!(
            role_name_of_arn("arn:aws:iam::222222222222:role/a/b/name"),
            Some("name")
        );
        assert_eq!(
            role_name_of_arn("arn:aws:iam::222222222222:user/name"),
            None
        );
    }

    #[test]
    fn bad_reference_is_reported() {
        let mut c = StackConfig::demo();
        c.client.db_user = "nobody".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("client.db_user nobody"), "{e}");
    }

    #[test]
    fn unknown_field_is_reported() {
        let text = format!("{DEMO_TOML}\nbogus = 1\n");
        assert!(StackConfig::from_toml(&text).is_err());
    }
}
