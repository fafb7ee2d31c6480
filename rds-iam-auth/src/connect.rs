//! Opening IAM-authenticated TLS connections: [`Config`] (what to connect to) and
//! [`Connector`] (credentials cache + TLS config, reused for every connection).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Connection};

use crate::credentials::{AssumeRole, CredentialCache};
use crate::error::{
    error_chain, ConfigError, Error, HINT_IAM_FAILED, HINT_NO_CREDENTIALS, HINT_NO_SECRET,
    HINT_TLS_EXPIRED, HINT_TLS_ISSUER, HINT_TLS_NAME, HINT_TLS_REFUSED, HINT_TOO_MANY,
};
use crate::report::{CheckReport, Outcome, Recorder};
use crate::tls::{client_config, CaBundle, RustlsConnect, RustlsStream};
use crate::token::{self, region_from_hostname, AuthToken, TokenParams};
use crate::Stage;

/// The default limit for each network stage (DNS, TCP, TLS + login, STS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to connect to and how to authenticate. A builder: every method takes and returns
/// `self`; nothing is checked until [`Config::connector`] or [`Config::connect`].
///
/// The names follow libpq where one exists (`hostname` is libpq's `host`, `connect_address`
/// plays the part of `hostaddr`).
///
/// ```no_run
/// # async fn example() -> Result<(), rds_iam_auth::Error> {
/// let client = rds_iam_auth::Config::new()
///     .hostname("app-ro.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com")
///     .port(5432)
///     .user("app_reader")
///     .database("example_db")
///     .assume_role("arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role")
///     .external_id("5e0d8c1a-example")
///     .connect()
///     .await?;
/// let row = client.query_one("SELECT 1::int4", &[]).await.map_err(rds_iam_auth::Error::from_query)?;
/// assert_eq!(row.get::<_, i32>(0), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Config {
    hostname: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    database: Option<String>,
    region: Option<String>,
    assume_role: Option<String>,
    external_id: Option<String>,
    role_session_name: Option<String>,
    role_duration: Option<Duration>,
    connect_address: Option<String>,
    ca_bundle: Option<CaBundle>,
    connect_timeout: Option<Duration>,
    application_name: Option<String>,
    profile: Option<String>,
    sdk_config: Option<SdkConfig>,
    credentials_provider: Option<SharedCredentialsProvider>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("region", &self.region)
            .field("assume_role", &self.assume_role)
            .field(
                "external_id",
                &self.external_id.as_ref().map(|_| "** redacted **"),
            )
            .field("connect_address", &self.connect_address)
            .field("ca_bundle", &self.ca_bundle)
            .field("connect_timeout", &self.connect_timeout)
            .field("application_name", &self.application_name)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// An empty configuration: set at least `hostname` and `user`.
    pub fn new() -> Self {
        Self::default()
    }
    /// The endpoint name: what the token signs and the certificate must match.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }
    /// The endpoint port (default 5432).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// The database user (the token's `DBUser`).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
    /// The database name (default: the user name, as in libpq).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }
    /// The signing region. Default: read from the endpoint name, else the SDK's region
    /// (`AWS_REGION`, profile); never guessed.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
    /// Assume this role (in the database account) to sign tokens.
    pub fn assume_role(mut self, role_arn: impl Into<String>) -> Self {
        self.assume_role = Some(role_arn.into());
        self
    }
    /// The external ID the role's trust policy requires.
    pub fn external_id(mut self, external_id: impl Into<String>) -> Self {
        self.external_id = Some(external_id.into());
        self
    }
    /// The role session name (default `rds-iam-auth`).
    pub fn role_session_name(mut self, name: impl Into<String>) -> Self {
        self.role_session_name = Some(name.into());
        self
    }
    /// The role session length (default one hour; STS accepts 900 s and up).
    pub fn role_duration(mut self, duration: Duration) -> Self {
        self.role_duration = Some(duration);
        self
    }
    /// Dial this address (`host`, `host:port`, `[v6]:port`) instead of the endpoint
    /// name, still verifying TLS against the endpoint name: for tunnels, port forwards
    /// and the local stack.
    pub fn connect_address(mut self, address: impl Into<String>) -> Self {
        self.connect_address = Some(address.into());
        self
    }
    /// Trust these CAs too (direct instance connections need the RDS CA bundle).
    pub fn ca_bundle(mut self, bundle: CaBundle) -> Self {
        self.ca_bundle = Some(bundle);
        self
    }
    /// Limit for each network stage (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }
    /// `application_name` startup parameter, shown in `pg_stat_activity`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }
    /// Use this named profile of the shared AWS config files for the base credentials.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }
    /// Use this SDK configuration (region, STS endpoint, credentials, retries) instead of
    /// loading the default one.
    pub fn sdk_config(mut self, sdk_config: SdkConfig) -> Self {
        self.sdk_config = Some(sdk_config);
        self
    }
    /// Use this provider for the base credentials instead of the SDK configuration's.
    pub fn credentials_provider(mut self, provider: SharedCredentialsProvider) -> Self {
        self.credentials_provider = Some(provider);
        self
    }

    /// Validates the configuration, loads the AWS configuration when none was given, and
    /// returns a [`Connector`] to open any number of connections with.
    pub async fn connector(self) -> Result<Connector, Error> {
        let hostname = non_empty(self.hostname.as_deref(), "hostname")?.to_owned();
        let user = non_empty(self.user.as_deref(), "user")?.to_owned();
        let port = self.port.unwrap_or(5432);
        let connect_timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be more than zero"));
        }
        let explicit_region = match self.region.as_deref() {
            Some(r) => Some(
                token::validate_region(r)
                    .map_err(ConfigError::from)?
                    .to_owned(),
            ),
            None => region_from_hostname(&hostname),
        };
        // Validate what can be validated before the (slower) SDK config load.
        token::validate_target(&hostname, port, &user).map_err(ConfigError::from)?;
        let (dial_host, dial_port) = match self.connect_address.as_deref() {
            Some(address) => parse_address(address, port)?,
            None => (hostname.clone(), port),
        };
        let assume = match self.assume_role {
            Some(role_arn) => Some(assume_settings(
                role_arn,
                self.external_id,
                self.role_session_name,
                self.role_duration,
            )?),
            None if self.external_id.is_some() => {
                return Err(invalid(
                    "external_id",
                    "is only used with assume_role; set the role ARN too",
                ))
            }
            None => None,
        };
        let tls = client_config(self.ca_bundle.as_ref())?;

        let sdk_config = match self.sdk_config {
            Some(c) => c,
            None => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(profile) = &self.profile {
                    loader = loader.profile_name(profile);
                }
                loader.load().await
            }
        };
        let region = explicit_region
            .or_else(|| sdk_config.region().map(|r| r.to_string()))
            .ok_or_else(|| {
                ConfigError::from(token::TokenError::MissingRegion {
                    hostname: hostname.clone(),
                })
            })?;
        let token_params =
            TokenParams::new(&hostname, port, &user, Some(&region)).map_err(ConfigError::from)?;
        // STS is regional: without a configured region, use the database's.
        let sdk_config = if sdk_config.region().is_none() {
            sdk_config
                .into_builder()
                .region(Region::new(region.clone()))
                .build()
        } else {
            sdk_config
        };
        let base = self
            .credentials_provider
            .or_else(|| sdk_config.credentials_provider())
            .ok_or_else(|| Error::Credentials {
                message: "no credentials provider is configured".to_owned(),
                hint: Some(HINT_NO_CREDENTIALS),
                source: None,
            })?;
        let credentials = CredentialCache::new(base, assume, &sdk_config);

        Ok(Connector {
            inner: Arc::new(Inner {
                token_params,
                database: self.database,
                application_name: self.application_name,
                dial_host,
                dial_port,
                tls,
                credentials,
                connect_timeout,
            }),
        })
    }

    /// One connection: [`Config::connector`] then [`Connector::connect`]. Keep a
    /// `Connector` instead when you open more than one connection, so credentials are
    /// cached.
    pub async fn connect(self) -> Result<Client, Error> {
        self.connector().await?.connect().await
    }
}

/// Opens connections; cheap to clone (the credential cache and TLS config are shared).
///
/// Every physical connection gets a freshly signed token, so a `Connector` (or a pool
/// built on it) keeps working past the 15-minute life of any one token.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<Inner>,
}

struct Inner {
    token_params: TokenParams,
    database: Option<String>,
    application_name: Option<String>,
    dial_host: String,
    dial_port: u16,
    tls: Arc<ClientConfig>,
    credentials: CredentialCache,
    connect_timeout: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Connector")
            .field("token_params", &i.token_params)
            .field("database", &i.database)
            .field("dial", &format_args!("{}:{}", i.dial_host, i.dial_port))
            .field("credentials", &i.credentials)
            .field("connect_timeout", &i.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Opens a connection and drives it on a Tokio task; the client is ready for queries.
    pub async fn connect(&self) -> Result<Client, Error> {
        let mut rec = Recorder::quiet();
        // Boxed: keeps the future type shallow for callers that nest it deeply (Lambda).
        let (client, connection) = Box::pin(self.open(&mut rec)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "database connection closed with an error");
            }
        });
        Ok(client)
    }

    /// Runs the whole path stage by stage (credentials, assume role, token, DNS, TCP,
    /// TLS, login, query) and reports each stage's outcome and time. Never fails: the
    /// report holds the error. The connection is closed before it returns.
    pub async fn check(&self) -> CheckReport {
        let started = Instant::now();
        let mut rec = Recorder::keeping();
        let error = match Box::pin(self.open(&mut rec)).await {
            Err(err) => Some(err),
            Ok((client, connection)) => {
                let task = tokio::spawn(connection);
                let query_started = Instant::now();
                let result = tokio::time::timeout(
                    self.inner.connect_timeout,
                    client.simple_query("SELECT 1"),
                )
                .await;
                let elapsed = query_started.elapsed();
                let error = match result {
                    Ok(Ok(_)) => {
                        rec.record(Stage::Query, Outcome::Ok, elapsed, "SELECT 1");
                        None
                    }
                    Ok(Err(e)) => Some(Error::from_query(e)),
                    Err(_) => Some(Error::Timeout {
                        stage: Stage::Query,
                        after: self.inner.connect_timeout,
                    }),
                };
                if let Some(err) = &error {
                    rec.fail(Stage::Query, elapsed, err);
                }
                drop(client);
                // The connection ends once the client is gone; do not wait on a broken one.
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
                error
            }
        };
        CheckReport {
            stages: rec.stages,
            error,
            total: started.elapsed(),
        }
    }

    /// A token for one login, signed now with the cached credentials.
    pub async fn token(&self) -> Result<AuthToken, Error> {
        let credentials = self.inner.credentials.credentials().await?;
        Ok(token::sign(
            &self.inner.token_params,
            &credentials,
            SystemTime::now(),
        ))
    }

    /// The credential cache (shared by every connection of this connector).
    pub fn credentials(&self) -> &CredentialCache {
        &self.inner.credentials
    }

    /// The validated token settings (host, port, user, region).
    pub fn token_params(&self) -> &TokenParams {
        &self.inner.token_params
    }

    async fn open(
        &self,
        rec: &mut Recorder,
    ) -> Result<(Client, Connection<TcpStream, RustlsStream>), Error> {
        let i = &*self.inner;
        let timeout = i.connect_timeout;

        let credentials = match tokio::time::timeout(timeout, i.credentials.get(rec)).await {
            Ok(result) => result?,
            Err(_) => {
                let stage = if i.credentials.assumes_role() {
                    Stage::AssumeRole
                } else {
                    Stage::Credentials
                };
                let err = Error::Timeout {
                    stage,
                    after: timeout,
                };
                rec.fail(stage, timeout, &err);
                return Err(err);
            }
        };

        let started = Instant::now();
        let token = token::sign(&i.token_params, &credentials, SystemTime::now());
        let p = &i.token_params;
        rec.record(
            Stage::Token,
            Outcome::Ok,
            started.elapsed(),
            &format!(
                "DBUser {} at {}:{} in {}, valid {} s",
                p.username(),
                p.hostname(),
                p.port(),
                p.region(),
                p.expires_in().as_secs()
            ),
        );

        let addresses = self.resolve(rec).await?;
        let stream = self.dial(&addresses, rec).await?;

        let mut pg = tokio_postgres::Config::new();
        pg.user(p.username())
            .password(token.as_str())
            .ssl_mode(SslMode::Require);
        if let Some(db) = &i.database {
            pg.dbname(db);
        }
        if let Some(name) = &i.application_name {
            pg.application_name(name);
        }
        let (tls, handshake_done) = RustlsConnect::new(i.tls.clone(), p.hostname())?;
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, pg.connect_raw(stream, tls)).await;
        let tls_done = handshake_done.lock().ok().and_then(|d| *d);
        let tls_time = tls_done.map_or(started.elapsed(), |t| t - started);
        let login_time = tls_done.map_or(Duration::ZERO, |t| t.elapsed());
        let tls_detail = format!("verified {}", p.hostname());
        match result {
            Ok(Ok(pair)) => {
                rec.record(Stage::Tls, Outcome::Ok, tls_time, &tls_detail);
                rec.record(
                    Stage::Login,
                    Outcome::Ok,
                    login_time,
                    &format!(
                        "{} to {}",
                        p.username(),
                        i.database.as_deref().unwrap_or(p.username())
                    ),
                );
                Ok(pair)
            }
            Ok(Err(e)) if tls_done.is_none() => {
                let err = tls_error(p.hostname(), e);
                rec.fail(Stage::Tls, tls_time, &err);
                Err(err)
            }
            Ok(Err(e)) => {
                rec.record(Stage::Tls, Outcome::Ok, tls_time, &tls_detail);
                let err = login_error(p.username(), p.hostname(), e);
                rec.fail(Stage::Login, login_time, &err);
                Err(err)
            }
            Err(_) => {
                let stage = if tls_done.is_some() {
                    rec.record(Stage::Tls, Outcome::Ok, tls_time, &tls_detail);
                    Stage::Login
                } else {
                    Stage::Tls
                };
                let err = Error::Timeout {
                    stage,
                    after: timeout,
                };
                rec.fail(stage, timeout, &err);
                Err(err)
            }
        }
    }

    async fn resolve(&self, rec: &mut Recorder) -> Result<Vec<SocketAddr>, Error> {
        let i = &*self.inner;
        if let Ok(ip) = i.dial_host.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, i.dial_port);
            rec.record(
                Stage::Dns,
                Outcome::Skipped,
                Duration::ZERO,
                &format!("{addr} is an address"),
            );
            return Ok(vec![addr]);
        }
        let started = Instant::now();
        let lookup = tokio::net::lookup_host((i.dial_host.as_str(), i.dial_port));
        match tokio::time::timeout(i.connect_timeout, lookup).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                rec.record(
                    Stage::Dns,
                    Outcome::Ok,
                    started.elapsed(),
                    &format!("{} -> {}", i.dial_host, shown.join(", ")),
                );
                Ok(addrs)
            }
            Ok(Err(source)) => {
                let err = Error::Dns {
                    host: i.dial_host.clone(),
                    source,
                };
                rec.fail(Stage::Dns, started.elapsed(), &err);
                Err(err)
            }
            Err(_) => {
                let err = Error::Timeout {
                    stage: Stage::Dns,
                    after: i.connect_timeout,
                };
                rec.fail(Stage::Dns, started.elapsed(), &err);
                Err(err)
            }
        }
    }

    async fn dial(&self, addresses: &[SocketAddr], rec: &mut Recorder) -> Result<TcpStream, Error> {
        let i = &*self.inner;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + i.connect_timeout;
        let mut last_error = None;
        for addr in addresses {
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    // Small request/response messages: do not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    rec.record(
                        Stage::Tcp,
                        Outcome::Ok,
                        started.elapsed(),
                        &addr.to_string(),
                    );
                    return Ok(stream);
                }
                Ok(Err(e)) => last_error = Some((addr, e)),
                Err(_) => break,
            }
        }
        let err = match last_error {
            Some((addr, source)) if tokio::time::Instant::now() < deadline => Error::Tcp {
                address: if i.dial_host.parse::<IpAddr>().is_ok() {
                    addr.to_string()
                } else {
                    format!("{}:{} ({addr})", i.dial_host, i.dial_port)
                },
                reason: source.to_string(),
                source: Some(source),
            },
            _ if addresses.is_empty() => Error::Tcp {
                address: format!("{}:{}", i.dial_host, i.dial_port),
                reason: "the name resolved to no address".to_owned(),
                source: None,
            },
            _ => Error::Timeout {
                stage: Stage::Tcp,
                after: i.connect_timeout,
            },
        };
        rec.fail(Stage::Tcp, started.elapsed(), &err);
        Err(err)
    }
}

fn tls_error(host: &str, e: tokio_postgres::Error) -> Error {
    let mut hint = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        // io::Error::source() skips the error it wraps: look inside it too.
        let wrapped = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(rustls_error) = s.downcast_ref::<rustls::Error>().or(wrapped) {
            use rustls::CertificateError as C;
            hint = match rustls_error {
                rustls::Error::InvalidCertificate(C::NotValidForName)
                | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
                    Some(HINT_TLS_NAME)
                }
                rustls::Error::InvalidCertificate(C::UnknownIssuer) => Some(HINT_TLS_ISSUER),
                rustls::Error::InvalidCertificate(
                    C::Expired
                    | C::ExpiredContext { .. }
                    | C::NotValidYet
                    | C::NotValidYetContext { .. },
                ) => Some(HINT_TLS_EXPIRED),
                _ => None,
            };
            break;
        }
        source = s.source();
    }
    let message = error_chain(&e);
    if hint.is_none() && message.contains("does not support TLS") {
        hint = Some(HINT_TLS_REFUSED);
    }
    Error::Tls {
        host: host.to_owned(),
        message,
        hint,
        source: Some(Box::new(e)),
    }
}

fn login_error(user: &str, host: &str, e: tokio_postgres::Error) -> Error {
    let (message, code, hint) = match e.as_db_error() {
        Some(db) => {
            let text = db.message();
            let hint = if text.contains("IAM authentication failed") {
                Some(HINT_IAM_FAILED)
            } else if text.contains("has no credentials for the role") {
                Some(HINT_NO_SECRET)
            } else if text.contains("maximum number of client connections") {
                Some(HINT_TOO_MANY)
            } else if text.contains("requires TLS") || text.contains("only with SSL") {
                Some(HINT_TLS_REFUSED)
            } else if db.code().code() == "28P01" {
                Some(HINT_IAM_FAILED)
            } else if db.code().code() == "3D000" {
                Some("check the database name (DBNAME / --database)")
            } else {
                None
            };
            (
                format!("{} {}: {}", db.severity(), db.code().code(), text),
                Some(db.code().code().to_owned()),
                hint,
            )
        }
        None => (error_chain(&e), None, None),
    };
    Error::Login {
        login: format!("{user}@{host}"),
        message,
        code,
        hint,
        source: Some(Box::new(e)),
    }
}

fn non_empty<'a>(value: Option<&'a str>, name: &'static str) -> Result<&'a str, ConfigError> {
    match value {
        None => Err(ConfigError::Missing(name)),
        Some(v) if v.trim().is_empty() => Err(ConfigError::Invalid {
            name,
            reason: "is empty".to_owned(),
        }),
        Some(v) => Ok(v),
    }
}

fn invalid(name: &'static str, reason: &str) -> Error {
    Error::Config(ConfigError::Invalid {
        name,
        reason: reason.to_owned(),
    })
}

fn assume_settings(
    role_arn: String,
    external_id: Option<String>,
    session_name: Option<String>,
    duration: Option<Duration>,
) -> Result<AssumeRole, ConfigError> {
    if !role_arn.starts_with("arn:aws") || !role_arn.contains(":role/") {
        return Err(ConfigError::Invalid {
            name: "assume_role",
            reason: format!("{role_arn:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
        });
    }
    if external_id.as_deref().is_some_and(|e| e.trim().is_empty()) {
        return Err(ConfigError::Invalid {
            name: "external_id",
            reason: "is empty".to_owned(),
        });
    }
    let mut settings = AssumeRole::new(role_arn);
    settings.external_id = external_id;
    if let Some(name) = session_name {
        let valid = (2..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "=,.@-_".contains(c));
        if !valid {
            return Err(ConfigError::Invalid {
                name: "role_session_name",
                reason: "2 to 64 characters of A-Z a-z 0-9 = , . @ - _".to_owned(),
            });
        }
        settings.session_name = name;
    }
    if let Some(d) = duration {
        if d < Duration::from_secs(900) || d > Duration::from_secs(43_200) {
            return Err(ConfigError::Invalid {
                name: "role_duration",
                reason: "STS accepts 900 s to 43200 s".to_owned(),
            });
        }
        settings.duration = d;
    }
    Ok(settings)
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address.
fn parse_address(address: &str, default_port: u16) -> Result<(String, u16), ConfigError> {
    let bad = |reason: &str| ConfigError::Invalid {
        name: "connect_address",
        reason: format!("{address:?}: {reason}"),
    };
    let address = address.trim();
    if address.is_empty() {
        return Err(bad("is empty"));
    }
    if address.contains("://") || address.contains('/') {
        return Err(bad("give host or host:port, without scheme or path"));
    }
    if address.parse::<IpAddr>().is_ok() {
        return Ok((address.to_owned(), default_port));
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad("unexpected text after ']'")),
        }
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be 1 to 65535")),
            Ok(p) => p,
        },
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_libpq_hostaddr_plus_port() {
        assert_eq!(
            parse_address("127.0.0.1", 5432).unwrap(),
            ("127.0.0.1".into(), 5432)
        );
        assert_eq!(
            parse_address("127.0.0.1:6000", 5432).unwrap(),
            ("127.0.0.1".into(), 6000)
        );
        assert_eq!(
            parse_address("localhost:6000", 5432).unwrap(),
            ("localhost".into(), 6000)
        );
        assert_eq!(parse_address("::1", 5432).unwrap(), ("::1".into(), 5432));
        assert_eq!(
            parse_address("[::1]:6000", 5432).unwrap(),
            ("::1".into(), 6000)
        );
        for bad in ["", "h:0", "h:70000", "h:x", "tcp://h:1", "[::1", ":5432"] {
            assert!(parse_address(bad, 5432).is_err(), "{bad}");
        }
    }

    #[test]
    fn role_settings_are_validated() {
        assert!(assume_settings("nope".into(), None, None, None).is_err());
        let ok = assume_settings(
            "arn:aws:iam::222222222222:role/r".into(),
            Some("x".into()),
            Some("s-1".into()),
            Some(Duration::from_secs(900)),
        )
        .unwrap();
        assert_eq!(ok.session_name, "s-1");
        assert!(
            assume_settings("arn:aws:iam::2:role/r".into(), Some(" ".into()), None, None).is_err()
        );
        assert!(assume_settings(
            "arn:aws:iam::2:role/r".into(),
            None,
            Some("a b".into()),
            None
        )
        .is_err());
        assert!(assume_settings(
            "arn:aws:iam::2:role/r".into(),
            None,
            None,
            Some(Duration::from_secs(60))
        )
        .is_err());
    }

    #[tokio::test]
    async fn missing_settings_are_config_errors() {
        let err = Config::new().user("u").connector().await.unwrap_err();
        assert_eq!(err.stage(), Stage::Config);
        assert_eq!(err.to_string(), "config: missing setting `hostname`");
        let err = Config::new()
            .hostname("db.x.us-east-1.rds.amazonaws.com")
            .user("u")
            .external_id("e")
            .connector()
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("only used with assume_role"),
            "{err}"
        );
    }
}
