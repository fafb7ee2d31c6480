//! What to connect to and how to authenticate: the [`Config`] builder, validated into a
//! [`Connector`] before any network I/O.

pub mod env;
mod parameters;
mod pg;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::connector::{AfterConnect, BoxFuture, Connector, Inner, DEFAULT_CONNECT_TIMEOUT};
use crate::credentials::{AssumeRole, CredentialCache};
use crate::error::classify::fetch_stage;
use crate::error::classify::no_credentials_provider;
use crate::error::{ConfigError, Error};
use crate::login;
use crate::net::{parse_address, DialTarget, Keepalive};
use crate::password::{
    secret_arn_region, Fetcher, PasswordCache, PasswordSource, DEFAULT_PASSWORD_TTL,
};
use crate::runner::Deadline;
use crate::stage::Stage;
use crate::tls::{client_config, CaBundle};
use crate::token::{self, region_from_hostname, TokenParams};

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
    keepalive: Option<Option<Keepalive>>,
    after_connect: Option<AfterConnect>,
    application_name: Option<String>,
    options: Option<String>,
    target_session_attrs: Option<TargetSessionAttrs>,
    profile: Option<String>,
    sdk_config: Option<SdkConfig>,
    credentials_provider: Option<SharedCredentialsProvider>,
    secret_arn: Option<String>,
    password_parameter: Option<String>,
    password_ttl: Option<Duration>,
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
            .field("keepalive", &self.keepalive)
            .field("after_connect", &self.after_connect.is_some())
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("profile", &self.profile)
            .field("secret_arn", &self.secret_arn)
            .field("password_parameter", &self.password_parameter)
            .field("password_ttl", &self.password_ttl)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// An empty configuration: set at least `hostname` and `user`.
    pub fn new() -> Self {
        Self::default()
    }
    /// The endpoint name: what the token signs and the certificate must match.
    pub fn hostname(self, hostname: impl Into<String>) -> Self {
        self.set_hostname(Some(hostname.into()))
    }
    /// [`Config::hostname`], or unset with `None`.
    pub fn set_hostname(mut self, hostname: Option<String>) -> Self {
        self.hostname = hostname;
        self
    }
    /// The endpoint port (default 5432).
    pub fn port(self, port: u16) -> Self {
        self.set_port(Some(port))
    }
    /// [`Config::port`], or the default with `None`.
    pub fn set_port(mut self, port: Option<u16>) -> Self {
        self.port = port;
        self
    }
    /// The database user (the token's `DBUser`).
    pub fn user(self, user: impl Into<String>) -> Self {
        self.set_user(Some(user.into()))
    }
    /// [`Config::user`], or unset with `None`.
    pub fn set_user(mut self, user: Option<String>) -> Self {
        self.user = user;
        self
    }
    /// The database name (default: the user name, as in libpq).
    pub fn database(self, database: impl Into<String>) -> Self {
        self.set_database(Some(database.into()))
    }
    /// [`Config::database`], or the default with `None`.
    pub fn set_database(mut self, database: Option<String>) -> Self {
        self.database = database;
        self
    }
    /// The signing region. Default: read from the endpoint name, else the SDK's region
    /// (`AWS_REGION`, profile); never guessed.
    pub fn region(self, region: impl Into<String>) -> Self {
        self.set_region(Some(region.into()))
    }
    /// [`Config::region`], or the default with `None`.
    pub fn set_region(mut self, region: Option<String>) -> Self {
        self.region = region;
        self
    }
    /// Assume this role (in the database account) to sign tokens.
    pub fn assume_role(self, role_arn: impl Into<String>) -> Self {
        self.set_assume_role(Some(role_arn.into()))
    }
    /// [`Config::assume_role`], or sign with the base credentials with `None`.
    pub fn set_assume_role(mut self, role_arn: Option<String>) -> Self {
        self.assume_role = role_arn;
        self
    }
    /// The external ID the role's trust policy requires.
    pub fn external_id(self, external_id: impl Into<String>) -> Self {
        self.set_external_id(Some(external_id.into()))
    }
    /// [`Config::external_id`], or none with `None`.
    pub fn set_external_id(mut self, external_id: Option<String>) -> Self {
        self.external_id = external_id;
        self
    }
    /// The role session name (default `rds-iam-auth`).
    pub fn role_session_name(self, name: impl Into<String>) -> Self {
        self.set_role_session_name(Some(name.into()))
    }
    /// [`Config::role_session_name`], or the default with `None`.
    pub fn set_role_session_name(mut self, name: Option<String>) -> Self {
        self.role_session_name = name;
        self
    }
    /// The role session length (default one hour; STS accepts 900 s and up).
    pub fn role_duration(self, duration: Duration) -> Self {
        self.set_role_duration(Some(duration))
    }
    /// [`Config::role_duration`], or the default with `None`.
    pub fn set_role_duration(mut self, duration: Option<Duration>) -> Self {
        self.role_duration = duration;
        self
    }
    /// Dial this address (`host`, `host:port`, `[v6]:port`) instead of the endpoint
    /// name, still verifying TLS against the endpoint name: for tunnels, port forwards
    /// and the local stack.
    pub fn connect_address(self, address: impl Into<String>) -> Self {
        self.set_connect_address(Some(address.into()))
    }
    /// [`Config::connect_address`], or dial the endpoint name with `None`.
    pub fn set_connect_address(mut self, address: Option<String>) -> Self {
        self.connect_address = address;
        self
    }
    /// Trust these CAs too (direct instance connections need the RDS CA bundle).
    pub fn ca_bundle(self, bundle: CaBundle) -> Self {
        self.set_ca_bundle(Some(bundle))
    }
    /// [`Config::ca_bundle`], or the built-in roots alone with `None`.
    pub fn set_ca_bundle(mut self, bundle: Option<CaBundle>) -> Self {
        self.ca_bundle = bundle;
        self
    }
    /// Limit for a whole connect (default 10 s): credentials, STS, DNS, TCP, TLS and login
    /// share it, so a hang anywhere ends as that stage's timeout error within this time.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.set_connect_timeout(Some(timeout))
    }
    /// [`Config::connect_timeout`], or the default with `None`.
    pub fn set_connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// TCP keepalive on every connection (default [`Keepalive::default`]: first probe after
    /// 60 s idle, then every 10 s, 5 probes); `None` turns it off.
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = Some(keepalive);
        self
    }
    /// Session setup run on every new physical connection before it is handed out (by
    /// `connect`, the pool, and the staged check): `SET` commands, `search_path`,
    /// `statement_timeout`. Through RDS Proxy a session-level `SET` pins the session to its
    /// database connection; prefer settings the proxy passes at startup where they exist.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), rds_iam_auth::Error> {
    /// let connector = rds_iam_auth::Config::new()
    ///     .hostname("app-ro.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com")
    ///     .user("app_reader")
    ///     .after_connect(|client| {
    ///         Box::pin(async move { client.batch_execute("SET statement_timeout = '5s'").await })
    ///     })
    ///     .connector()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn after_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(
                &'a tokio_postgres::Client,
            ) -> BoxFuture<'a, Result<(), tokio_postgres::Error>>
            + Send
            + Sync
            + 'static,
    {
        self.after_connect = Some(Arc::new(hook));
        self
    }
    /// `application_name` startup parameter, shown in `pg_stat_activity`.
    pub fn application_name(self, name: impl Into<String>) -> Self {
        self.set_application_name(Some(name.into()))
    }
    /// [`Config::application_name`], or none with `None`.
    pub fn set_application_name(mut self, name: Option<String>) -> Self {
        self.application_name = name;
        self
    }
    /// The `options` startup parameter (libpq's `options`, e.g. `-c search_path=app`), for
    /// direct connections to PostgreSQL.
    ///
    /// RDS Proxy refuses connections that send it (it accepts only a few startup
    /// parameters): through a proxy, set such defaults on the database role instead
    /// (`ALTER ROLE app_user SET search_path = app, public`), which neither sends nor pins
    /// anything, or in [`Config::after_connect`], which pins the session.
    pub fn options(self, options: impl Into<String>) -> Self {
        self.set_options(Some(options.into()))
    }
    /// [`Config::options`], or none with `None`.
    pub fn set_options(mut self, options: Option<String>) -> Self {
        self.options = options;
        self
    }
    /// What a session must allow, checked after login with `SHOW transaction_read_only`
    /// (libpq's `target_session_attrs`; default `Any`, no check). `ReadWrite` turns a
    /// connection that landed on a reader (a `READ_ONLY` proxy endpoint, a writer demoted by
    /// a failover) into a login error instead of failed writes later.
    pub fn target_session_attrs(mut self, attrs: TargetSessionAttrs) -> Self {
        self.target_session_attrs = Some(attrs);
        self
    }
    /// Use this named profile of the shared AWS config files for the base credentials.
    pub fn profile(self, profile: impl Into<String>) -> Self {
        self.set_profile(Some(profile.into()))
    }
    /// [`Config::profile`], or the default profile chain with `None`.
    pub fn set_profile(mut self, profile: Option<String>) -> Self {
        self.profile = profile;
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
    /// Log in with the password of this Secrets Manager secret (its full ARN) instead of
    /// an IAM token, for databases not on IAM authentication. The secret is read in the
    /// ARN's region with the assumed role's credentials when a role is set (the secret's
    /// resource policy allows that role), else with the base credentials. An RDS secret's
    /// `username`, `host`, `port` and `dbname` fill the settings left unset (the secret is
    /// then read when the connector is built).
    pub fn secret_arn(self, arn: impl Into<String>) -> Self {
        self.set_secret_arn(Some(arn.into()))
    }
    /// [`Config::secret_arn`], or no secret with `None`.
    pub fn set_secret_arn(mut self, arn: Option<String>) -> Self {
        self.secret_arn = arn;
        self
    }
    /// Log in with the password held by this Parameter Store parameter (a SecureString,
    /// read with decryption and the base credentials: parameters live in the application
    /// account) instead of an IAM token. Not together with [`Config::secret_arn`].
    pub fn password_parameter(self, name: impl Into<String>) -> Self {
        self.set_password_parameter(Some(name.into()))
    }
    /// [`Config::password_parameter`], or none with `None`.
    pub fn set_password_parameter(mut self, name: Option<String>) -> Self {
        self.password_parameter = name;
        self
    }
    /// How long a password read from its secret or parameter is used before it is read
    /// again (default one hour, as the AWS caching clients; the read starts in the
    /// background shortly before). A login refused after a rotation reads it at once.
    pub fn password_ttl(self, ttl: Duration) -> Self {
        self.set_password_ttl(Some(ttl))
    }
    /// [`Config::password_ttl`], or the default with `None`.
    pub fn set_password_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.password_ttl = ttl;
        self
    }

    /// The endpoint host name, if set.
    pub fn get_hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }
    /// The port, if set (else 5432).
    pub fn get_port(&self) -> Option<u16> {
        self.port
    }
    /// The database user, if set.
    pub fn get_user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    /// The database name, if set (else the server uses the user name).
    pub fn get_database(&self) -> Option<&str> {
        self.database.as_deref()
    }
    /// The signing region, if set (else from the host name or the AWS configuration).
    pub fn get_region(&self) -> Option<&str> {
        self.region.as_deref()
    }
    /// The role to assume, if set.
    pub fn get_assume_role(&self) -> Option<&str> {
        self.assume_role.as_deref()
    }
    /// Whether an external ID is set (the value itself is not handed out: it stays out of
    /// logs).
    pub fn has_external_id(&self) -> bool {
        self.external_id.is_some()
    }
    /// The role session name, if set.
    pub fn get_role_session_name(&self) -> Option<&str> {
        self.role_session_name.as_deref()
    }
    /// The role session length, if set.
    pub fn get_role_duration(&self) -> Option<Duration> {
        self.role_duration
    }
    /// The address dialed instead of the endpoint, if set.
    pub fn get_connect_address(&self) -> Option<&str> {
        self.connect_address.as_deref()
    }
    /// The extra trusted CA certificates, if set.
    pub fn get_ca_bundle(&self) -> Option<&CaBundle> {
        self.ca_bundle.as_ref()
    }
    /// The limit for a whole connect, if set (else [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn get_connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }
    /// The keepalive setting: `None` when not set (the default applies), `Some(None)` when
    /// turned off.
    pub fn get_keepalive(&self) -> Option<Option<Keepalive>> {
        self.keepalive
    }
    /// Whether an after-connect hook is set.
    pub fn has_after_connect(&self) -> bool {
        self.after_connect.is_some()
    }
    /// The `application_name`, if set.
    pub fn get_application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }
    /// The `options` startup parameter, if set.
    pub fn get_options(&self) -> Option<&str> {
        self.options.as_deref()
    }
    /// What a session must allow, if set.
    pub fn get_target_session_attrs(&self) -> Option<TargetSessionAttrs> {
        self.target_session_attrs
    }
    /// The AWS profile for the base credentials, if set.
    pub fn get_profile(&self) -> Option<&str> {
        self.profile.as_deref()
    }
    /// The Secrets Manager secret holding the password, if set.
    pub fn get_secret_arn(&self) -> Option<&str> {
        self.secret_arn.as_deref()
    }
    /// The Parameter Store parameter holding the password, if set.
    pub fn get_password_parameter(&self) -> Option<&str> {
        self.password_parameter.as_deref()
    }
    /// How long a stored password is cached, if set (else [`DEFAULT_PASSWORD_TTL`]).
    pub fn get_password_ttl(&self) -> Option<Duration> {
        self.password_ttl
    }
    /// Where the password comes from: `None` for IAM authentication (the default). Both a
    /// secret and a parameter set is an error.
    pub fn password_source(&self) -> Result<Option<PasswordSource>, ConfigError> {
        match (&self.secret_arn, &self.password_parameter) {
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                "secret_arn",
                "and password_parameter are both set: choose one password source",
            )),
            (Some(arn), None) => {
                secret_arn_region(non_empty(Some(arn), "secret_arn")?)?;
                Ok(Some(PasswordSource::SecretsManager {
                    secret_arn: arn.trim().to_owned(),
                }))
            }
            (None, Some(name)) => Ok(Some(PasswordSource::Parameter {
                name: non_empty(Some(name), "password_parameter")?
                    .trim()
                    .to_owned(),
            })),
            (None, None) => Ok(None),
        }
    }

    /// The settings from the process environment: see [`env::VARIABLES`] for the
    /// names (those of the connection-test Lambda). Variables that are unset or blank leave
    /// their setting unset; a malformed one is an error that names it. Set or override
    /// anything else with the builder methods afterwards.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), rds_iam_auth::Error> {
    /// let connector = rds_iam_auth::Config::from_env()?
    ///     .application_name("billing-worker")
    ///     .connector()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Config::from_env`] reading variables with `lookup` (a map in tests, another
    /// prefix, a secrets file).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        env::config_from(lookup)
    }

    /// The settings of a `tokio_postgres::Config` (parsed from a connection string or built
    /// in code), for code that has one already. Settings added later with the builder
    /// methods win.
    ///
    /// Taken over: the one host (as [`Config::hostname`]), one `hostaddr` (as
    /// [`Config::connect_address`]), the port, user, dbname, `application_name`,
    /// `options`, `connect_timeout`, `target_session_attrs` and the keepalive settings
    /// (`keepalives=0` turns them off; tokio-postgres's unchanged defaults leave this
    /// crate's). Refused, each with a reason: a password (the token is the password), more
    /// than one host, a Unix socket, `sslmode=disable` (TLS is always on, and always
    /// verified against the endpoint name, whatever `sslmode` says) and
    /// `channel_binding=require` (IAM authentication sends the token as a cleartext password
    /// inside TLS; there is no SCRAM exchange to bind).
    ///
    /// ```
    /// let pg: rds_iam_auth::tokio_postgres::Config =
    ///     "host=app.proxy-abc123.us-east-1.rds.amazonaws.com user=app dbname=orders \
    ///      application_name=billing keepalives_idle=30 target_session_attrs=read-write"
    ///         .parse()
    ///         .unwrap();
    /// let config = rds_iam_auth::Config::from_pg_config(&pg)
    ///     .unwrap()
    ///     .assume_role("arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role");
    /// # let _ = config;
    ///
    /// let with_password: rds_iam_auth::tokio_postgres::Config =
    ///     "host=h.example user=app password=hunter2".parse().unwrap();
    /// let err = rds_iam_auth::Config::from_pg_config(&with_password).unwrap_err();
    /// assert!(err.to_string().contains("the IAM token is the password"));
    /// ```
    pub fn from_pg_config(pg: &tokio_postgres::Config) -> Result<Self, ConfigError> {
        pg::config_from(pg)
    }

    /// Validates the configuration, loads the AWS configuration when none was given, and
    /// returns a [`Connector`] to open any number of connections with.
    pub async fn connector(mut self) -> Result<Connector, Error> {
        let source = self.password_source()?;
        let connect_timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if connect_timeout.is_zero() {
            return Err(invalid("connect_timeout", "must be more than zero"));
        }
        let password_ttl = self.password_ttl.unwrap_or(DEFAULT_PASSWORD_TTL);
        if password_ttl < Duration::from_secs(1) {
            return Err(invalid("password_ttl", "must be at least one second"));
        }
        // An RDS secret fills what is unset: then it is read now, before the checks below.
        let secret_region = match &source {
            Some(PasswordSource::SecretsManager { secret_arn }) => {
                Some(secret_arn_region(secret_arn)?.to_owned())
            }
            _ => None,
        };
        let fill_from_secret = secret_region.is_some()
            && (self.hostname.is_none()
                || self.user.is_none()
                || self.port.is_none()
                || self.database.is_none());
        if !fill_from_secret {
            // Validate what can be validated before the (slower) SDK config load.
            self.validate_target()?;
        }
        let assume = match self.assume_role.take() {
            Some(role_arn) => Some(assume_settings(
                role_arn,
                self.external_id.take(),
                self.role_session_name.take(),
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
        let tls = MakeRustlsConnect::new(client_config(self.ca_bundle.as_ref())?);

        let sdk_config = match self.sdk_config.take() {
            Some(c) => c,
            None => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if let Some(profile) = &self.profile {
                    loader = loader.profile_name(profile);
                }
                loader.load().await
            }
        };
        // STS and Parameter Store are regional: without a configured region, use the
        // database's (or, for a secret, the secret's).
        let sdk_config = match self.explicit_region()?.or(secret_region) {
            Some(region) if sdk_config.region().is_none() => sdk_config
                .into_builder()
                .region(Region::new(region))
                .build(),
            _ => sdk_config,
        };
        let base = self
            .credentials_provider
            .take()
            .or_else(|| sdk_config.credentials_provider())
            .ok_or_else(no_credentials_provider)?;
        let credentials = CredentialCache::new(base.clone(), assume, &sdk_config);
        let password = match source {
            Some(source) => {
                let fetcher = Fetcher::new(&source, &sdk_config, credentials.provider(), base)?;
                Some(PasswordCache::new(source, fetcher, password_ttl))
            }
            None => None,
        };
        if let (true, Some(password)) = (fill_from_secret, &password) {
            let role = credentials.assumed_role().map(|r| r.role_arn());
            let deadline = Deadline::after(connect_timeout);
            deadline
                .limit(fetch_stage(role), credentials.credentials())
                .await?;
            let secret = deadline.limit(Stage::Secret, password.get()).await?.value;
            self.hostname = self.hostname.or(secret.host);
            self.user = self.user.or(secret.username);
            self.port = self.port.or(secret.port);
            self.database = self.database.or(secret.dbname);
            self.validate_target()?;
        }

        let (hostname, user, port) = self.target()?;
        let region = self
            .explicit_region()?
            .or_else(|| sdk_config.region().map(|r| r.to_string()))
            .ok_or_else(|| {
                ConfigError::from(token::TokenError::MissingRegion {
                    hostname: hostname.to_owned(),
                })
            })?;
        let token_params =
            TokenParams::new(hostname, port, user, Some(&region)).map_err(ConfigError::from)?;
        let dial = match self.connect_address.as_deref() {
            Some(address) => parse_address(address, port)?,
            None => DialTarget {
                host: hostname.to_owned(),
                port,
            },
        };
        let startup = login::startup(
            token_params.username(),
            self.database.as_deref(),
            self.application_name.as_deref(),
            self.options.as_deref(),
        );

        Ok(Connector {
            inner: Arc::new(Inner {
                token_params,
                startup,
                dial,
                keepalive: self.keepalive.unwrap_or(Some(Keepalive::default())),
                tls,
                ca_bundle: self.ca_bundle,
                credentials,
                password,
                connect_timeout,
                after_connect: self.after_connect,
                target_session_attrs: self.target_session_attrs.unwrap_or(TargetSessionAttrs::Any),
                failures: Default::default(),
                tokens_signed: Default::default(),
            }),
        })
    }

    /// The endpoint, user and port, required and validated.
    fn target(&self) -> Result<(&str, &str, u16), ConfigError> {
        let hostname = required(self.hostname.as_deref(), "hostname")?;
        let user = required(self.user.as_deref(), "user")?;
        Ok((hostname, user, self.port.unwrap_or(5432)))
    }

    /// Checks the endpoint, user, port and dial override before any I/O that needs them.
    fn validate_target(&self) -> Result<(), ConfigError> {
        let (hostname, user, port) = self.target()?;
        self.explicit_region()?;
        token::validate_target(hostname, port, user)?;
        rustls::pki_types::ServerName::try_from(hostname).map_err(|e| ConfigError::Invalid {
            name: "hostname",
            reason: format!("not usable as a TLS server name: {e}"),
        })?;
        if let Some(address) = self.connect_address.as_deref() {
            parse_address(address, port)?;
        }
        Ok(())
    }

    /// The region set, or the one the endpoint name carries.
    fn explicit_region(&self) -> Result<Option<String>, ConfigError> {
        match self.region.as_deref() {
            Some(r) => Ok(Some(token::validate_region(r)?.to_owned())),
            None => Ok(self.hostname.as_deref().and_then(region_from_hostname)),
        }
    }

    /// One connection: [`Config::connector`] then [`Connector::connect`]. Keep a
    /// `Connector` instead when you open more than one connection, so credentials are
    /// cached.
    pub async fn connect(self) -> Result<tokio_postgres::Client, Error> {
        self.connector().await?.connect().await
    }
}

/// A required setting; a missing one is reported with the variable that would fill it
/// (whether the configuration came from the builder or the environment is not recorded).
fn required<'a>(value: Option<&'a str>, name: &'static str) -> Result<&'a str, ConfigError> {
    non_empty(value, name).map_err(|e| match e {
        ConfigError::Missing(setting) => match env::variable_for(setting) {
            Some(variable) => ConfigError::MissingSetting { setting, variable },
            None => ConfigError::Missing(setting),
        },
        e => e,
    })
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
    ConfigError::invalid(name, reason).into()
}

fn assume_settings(
    role_arn: String,
    external_id: Option<String>,
    session_name: Option<String>,
    duration: Option<Duration>,
) -> Result<AssumeRole, ConfigError> {
    let mut settings = AssumeRole::new(role_arn)?;
    if let Some(id) = external_id {
        settings = settings.with_external_id(id)?;
    }
    if let Some(name) = session_name {
        settings = settings.with_session_name(name)?;
    }
    if let Some(d) = duration {
        settings = settings.with_duration(d)?;
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stage;

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
        assert_eq!(ok.session_name(), "s-1");
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
    async fn one_password_source_at_most_and_a_secret_arn_that_names_its_region() {
        let arn = "arn:aws:secretsmanager:eu-west-1:222222222222:secret:app-AbCdEf";
        let both = Config::new()
            .hostname("db.x.us-east-1.rds.amazonaws.com")
            .user("u")
            .secret_arn(arn)
            .password_parameter("/app/db/password");
        let err = both.password_source().unwrap_err();
        assert!(
            err.to_string().contains("choose one password source"),
            "{err}"
        );
        let err = both.connector().await.unwrap_err();
        assert_eq!(err.stage(), Stage::Config);
        let err = Config::new()
            .secret_arn("app-secret")
            .password_source()
            .unwrap_err();
        assert!(err.to_string().contains("not a secret ARN"), "{err}");
        assert_eq!(
            Config::new().secret_arn(arn).password_source().unwrap(),
            Some(PasswordSource::SecretsManager {
                secret_arn: arn.to_owned()
            })
        );
        assert_eq!(Config::new().password_source().unwrap(), None);
        let err = Config::new()
            .hostname("db.x.us-east-1.rds.amazonaws.com")
            .user("u")
            .password_parameter("/p")
            .password_ttl(Duration::ZERO)
            .connector()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("password_ttl"), "{err}");
    }

    #[tokio::test]
    async fn missing_settings_are_config_errors() {
        let err = Config::new().user("u").connector().await.unwrap_err();
        assert_eq!(err.stage(), Stage::Config);
        assert_eq!(
            err.to_string(),
            "config: missing setting `hostname`: set it, or environment variable RDS_PROXY_APPLICATION_ENDPOINT for Config::from_env"
        );
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
