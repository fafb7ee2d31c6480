//! The targets file: one entry per database the proxy (or `rds-iam-auth check --config`)
//! serves.
//!
//! A platform team serves many database accounts from one place, so the databases are
//! listed in one TOML file rather than in flags. Every entry becomes an
//! [`rds_iam_auth::Config`] built with the library's builder; `targets.example.toml` next
//! to this package's manifest shows every key.
//!
//! ```toml
//! [defaults]                 # optional: for every target that does not set its own
//! region = "us-east-1"
//! ca_bundle = "/etc/ssl/rds-global-bundle.pem"
//! connect_timeout = "10s"
//!
//! [[target]]
//! name = "orders"
//! endpoint = "orders.endpoint.proxy-abc.us-east-1.rds.amazonaws.com"
//! database = "orders"
//! user = "app_reader"
//! role_arn = "arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role"
//! external_id_env = "ORDERS_EXTERNAL_ID"
//! ```
//!
//! The external ID is a value shared between two accounts that the role's trust policy
//! checks, so it never sits in this file (which is copied, reviewed and committed): a
//! target names an environment variable (`external_id_env`) or a file
//! (`external_id_file`) that holds it, and an `external_id` key is refused.
//!
//! A database not on IAM authentication logs in with a stored password instead of a
//! token, and the file says where that password is, never what it is: `secret_arn` (a
//! Secrets Manager secret, read in its ARN's region with the target's role, else with this
//! host's credentials) or `password_parameter` (a Parameter Store SecureString, read with
//! this host's credentials), not both; `password_ttl` (default one hour, only with one of
//! them) is how long the value is cached. A login refused after a rotation reads it again
//! at once (see [`rds_iam_auth::Config::secret_arn`]).
//!
//! ```toml
//! [[target]]
//! name = "legacy"
//! endpoint = "legacy.endpoint.proxy-abc.us-east-1.rds.amazonaws.com"
//! database = "legacy"
//! user = "app_password_user"
//! role_arn = "arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role"
//! external_id_env = "LEGACY_EXTERNAL_ID"
//! secret_arn = "arn:aws:secretsmanager:us-east-1:222222222222:secret:legacy/app-AbCdEf"
//! password_ttl = "15m"
//! ```
//!
//! Everything is checked when the file is loaded, before any network I/O: each problem is
//! a [`TargetsError`] whose message is one line naming the file, the target and the key.
//! What the library only checks when a connector is built (the syntax of
//! `connect_address`, the endpoint as a TLS server name, a `password_ttl` under one
//! second) is reported by
//! [`rds_iam_auth::Config::connector`] as a `config` error.

use std::cell::RefCell;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rds_iam_auth::token::{validate_region, TokenError, TokenParams};
use rds_iam_auth::{AssumeRole, CaBundle, Config, ConfigError};
use serde::Deserialize;
use toml::Spanned;

/// One database of the targets file.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name in the file: unique, `[A-Za-z0-9_-]+`.
    pub name: String,
    /// The library's settings for it; build a connector with
    /// [`Config::connector`](rds_iam_auth::Config::connector).
    pub config: Config,
    /// For the local proxy: the TCP port of this target's listener.
    pub local_port: Option<u16>,
    /// For the local proxy: the directory of this target's Unix socket (relative paths in
    /// the file are resolved against the file's directory).
    pub unix_socket: Option<PathBuf>,
}

impl Target {
    /// The role assumed in the database account, if any.
    pub fn role_arn(&self) -> Option<&str> {
        self.config.get_assume_role()
    }

    /// The database account: the account ID of [`Target::role_arn`]; `None` when the
    /// target signs with the base credentials.
    pub fn account(&self) -> Option<&str> {
        // arn:PARTITION:iam::ACCOUNT:role/NAME
        self.role_arn().and_then(|arn| arn.split(':').nth(4))
    }

    /// The role's name (what follows `:role/`, path included), if a role is assumed.
    pub fn role_name(&self) -> Option<&str> {
        self.role_arn()
            .and_then(|arn| arn.split_once(":role/"))
            .map(|(_, name)| name)
    }

    /// The Unix socket of this target's listener, laid out as PostgreSQL's:
    /// `<unix_socket>/.s.PGSQL.<local_port, else the endpoint port>`; `None` without
    /// `unix_socket`. Two targets of one file never share one.
    pub fn socket_path(&self) -> Option<PathBuf> {
        let port = self
            .local_port
            .or(self.config.get_port())
            .unwrap_or(DEFAULT_PORT);
        Some(crate::listen::socket_path(
            self.unix_socket.as_deref()?,
            port,
        ))
    }
}

/// The endpoint port when a target gives none (the library's default too).
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// Where in the file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Section {
    /// Outside any table.
    TopLevel,
    /// The `[defaults]` table.
    Defaults,
    /// A `[[target]]` table.
    Target {
        /// Its position in the file, from 1.
        index: usize,
        /// Its `name`, when it has a usable one.
        name: Option<String>,
    },
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Section::TopLevel => f.write_str("top level"),
            Section::Defaults => f.write_str("[defaults]"),
            Section::Target {
                name: Some(name), ..
            } => write!(f, "target `{name}`"),
            Section::Target { index, name: None } => write!(f, "target #{index}"),
        }
    }
}

/// Why a targets file was refused. `Display` is one line naming the file, the target and
/// the key. No message holds an external ID.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetsError {
    /// The file cannot be read.
    #[error("{}: cannot read the targets file: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{}:{line}:{column}: not valid TOML: {message}", .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Line of the problem, from 1.
        line: u32,
        /// Column of the problem, from 1.
        column: u32,
        /// What the TOML parser says.
        message: String,
    },
    /// A key is unknown or missing, or its value cannot work.
    #[error("{}{}: {}{problem}", .path.display(), Location(.position), SectionPrefix(.section))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Line and column (from 1) of the key, or of its table when the key is missing or
        /// the problem is between targets.
        position: Option<(u32, u32)>,
        /// The table.
        section: Section,
        /// The key (of the table, or of the file at the top level), when one is to blame.
        key: Option<String>,
        /// What is wrong, naming the key.
        problem: String,
    },
    /// The file holds no `[[target]]` table.
    #[error("{}: no targets: add a [[target]] table for each database", .path.display())]
    NoTargets {
        /// The file.
        path: PathBuf,
    },
}

impl TargetsError {
    /// The key to blame, if the problem is with one.
    pub fn key(&self) -> Option<&str> {
        match self {
            TargetsError::Invalid { key, .. } => key.as_deref(),
            _ => None,
        }
    }
}

/// `:line:column`, or nothing.
struct Location<'a>(&'a Option<(u32, u32)>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.0 {
            Some((line, column)) => write!(f, ":{line}:{column}"),
            None => Ok(()),
        }
    }
}

/// `target `orders`: `, or nothing at the top level.
struct SectionPrefix<'a>(&'a Section);

impl fmt::Display for SectionPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Section::TopLevel => Ok(()),
            section => write!(f, "{section}: "),
        }
    }
}

/// Reads, parses and validates the targets file at `path`; external IDs named by
/// `external_id_env` are read from this process's environment.
pub fn load(path: &Path) -> Result<Vec<Target>, TargetsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TargetsError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path, |name| std::env::var(name).ok())
}

/// Parses and validates `text`, the targets file at `origin` (named in errors; relative
/// paths in the file are resolved against its directory). `env` looks up the variables
/// named by `external_id_env`.
pub fn parse(
    text: &str,
    origin: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Target>, TargetsError> {
    let file: RawFile = toml::from_str(text).map_err(|e| toml_error(text, origin, &e))?;
    if file.target.is_empty() {
        return Err(TargetsError::NoTargets {
            path: origin.to_owned(),
        });
    }
    let builder = Builder {
        path: origin,
        dir: origin.parent().unwrap_or(Path::new("")),
        text,
        env: &env,
        bundles: RefCell::default(),
    };
    let defaults = match &file.defaults {
        Some(d) => builder.defaults(d)?,
        None => Defaults::default(),
    };
    let mut targets = Vec::with_capacity(file.target.len());
    for (i, raw) in file.target.iter().enumerate() {
        targets.push(builder.target(i + 1, raw, &defaults)?);
    }
    check_unique(origin, text, &file.target, &targets)?;
    Ok(targets)
}

/// The file as written. Unknown keys are refused everywhere: a misspelt optional key
/// would otherwise be silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    target: Vec<Spanned<RawTarget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    region: Option<String>,
    ca_bundle: Option<PathBuf>,
    connect_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    endpoint: String,
    port: Option<u16>,
    database: String,
    user: String,
    region: Option<String>,
    role_arn: Option<String>,
    external_id_env: Option<String>,
    external_id_file: Option<PathBuf>,
    ca_bundle: Option<PathBuf>,
    connect_address: Option<String>,
    connect_timeout: Option<String>,
    application_name: Option<String>,
    secret_arn: Option<String>,
    password_parameter: Option<String>,
    password_ttl: Option<String>,
    local_port: Option<u16>,
    unix_socket: Option<PathBuf>,
}

/// `[defaults]`, validated.
#[derive(Default)]
struct Defaults {
    region: Option<String>,
    ca_bundle: Option<CaBundle>,
    connect_timeout: Option<Duration>,
}

/// Turns raw tables into settings, with what every table shares.
struct Builder<'a, E> {
    path: &'a Path,
    dir: &'a Path,
    text: &'a str,
    env: &'a E,
    /// Bundles already read, by resolved path: one read for the many targets that share
    /// one bundle.
    bundles: RefCell<HashMap<PathBuf, CaBundle>>,
}

impl<E: Fn(&str) -> Option<String>> Builder<'_, E> {
    fn error(
        &self,
        span: std::ops::Range<usize>,
        section: &Section,
        key: &str,
        problem: impl fmt::Display,
    ) -> TargetsError {
        TargetsError::Invalid {
            path: self.path.to_owned(),
            position: Some(line_column(self.text, span.start)),
            section: section.clone(),
            key: Some(key.to_owned()),
            problem: format!("`{key}` {problem}"),
        }
    }

    fn defaults(&self, raw: &Spanned<RawDefaults>) -> Result<Defaults, TargetsError> {
        let (span, section) = (raw.span(), Section::Defaults);
        let d = raw.get_ref();
        let err = |key: &str, problem: String| self.error(span.clone(), &section, key, problem);
        if let Some(region) = &d.region {
            validate_region(region).map_err(|e| err("region", format!("is refused: {e}")))?;
        }
        let connect_timeout = match &d.connect_timeout {
            Some(text) => Some(parse_duration(text).map_err(|e| err("connect_timeout", e))?),
            None => None,
        };
        let ca_bundle = match &d.ca_bundle {
            Some(path) => Some(self.bundle(path).map_err(|e| err("ca_bundle", e))?),
            None => None,
        };
        Ok(Defaults {
            region: d.region.clone(),
            ca_bundle,
            connect_timeout,
        })
    }

    fn target(
        &self,
        index: usize,
        raw: &Spanned<RawTarget>,
        defaults: &Defaults,
    ) -> Result<Target, TargetsError> {
        let span = raw.span();
        let t = raw.get_ref();
        let section = Section::Target {
            index,
            name: usable_name(&t.name).then(|| t.name.clone()),
        };
        let err = |key: &str, problem: String| self.error(span.clone(), &section, key, problem);

        if !usable_name(&t.name) {
            return Err(err(
                "name",
                format!("is {:?}: use letters, digits, `_` and `-`", t.name),
            ));
        }
        for (key, value) in [
            ("endpoint", &t.endpoint),
            ("database", &t.database),
            ("user", &t.user),
        ] {
            if value.trim().is_empty() {
                return Err(err(key, "is empty".to_owned()));
            }
        }
        if t.local_port == Some(0) {
            return Err(err(
                "local_port",
                "is 0: give the port to listen on, 1 to 65535".to_owned(),
            ));
        }
        let region = t.region.clone().or_else(|| defaults.region.clone());
        let port = t.port.unwrap_or(DEFAULT_PORT);
        // The library's own checks of what a token signs (endpoint, port, user, region).
        // Without a region and with an endpoint name that holds none, the region comes
        // from the AWS configuration when the connector is built: not an error here.
        match TokenParams::new(&t.endpoint, port, &t.user, region.as_deref()) {
            Ok(_) | Err(TokenError::MissingRegion { .. }) => {}
            Err(e) => {
                let key = match e {
                    TokenError::InvalidPort => "port",
                    TokenError::EmptyUsername => "user",
                    TokenError::InvalidRegion(_) => "region",
                    _ => "endpoint",
                };
                return Err(err(key, format!("is refused: {e}")));
            }
        }

        let external_id = self.external_id(t, &section, span.clone())?;
        if let Some(arn) = &t.role_arn {
            // The library's checks of the role settings, external ID included.
            let role = AssumeRole::new(arn.clone()).map_err(|e| err("role_arn", reason(e)))?;
            if let Some(id) = &external_id {
                let key = external_id_key(t);
                role.with_external_id(id.clone())
                    .map_err(|e| err(key, reason(e)))?;
            }
        }

        let connect_timeout = match &t.connect_timeout {
            Some(text) => Some(parse_duration(text).map_err(|e| err("connect_timeout", e))?),
            None => defaults.connect_timeout,
        };
        let ca_bundle = match &t.ca_bundle {
            Some(path) => Some(self.bundle(path).map_err(|e| err("ca_bundle", e))?),
            None => defaults.ca_bundle.clone(),
        };
        let password_ttl = self.password_keys(t, &section, span.clone())?;

        // Always given, as the file's port: the library fills an unset port from a secret,
        // whose `port` is the database instance's, not the proxy endpoint's.
        let config = Config::new()
            .hostname(&t.endpoint)
            .port(port)
            .user(&t.user)
            .database(&t.database)
            .set_region(region)
            .set_assume_role(t.role_arn.clone())
            .set_external_id(external_id)
            .set_ca_bundle(ca_bundle)
            .set_connect_address(t.connect_address.clone())
            .set_connect_timeout(connect_timeout)
            .set_application_name(t.application_name.clone())
            .set_secret_arn(t.secret_arn.clone())
            .set_password_parameter(t.password_parameter.clone())
            .set_password_ttl(password_ttl);
        Ok(Target {
            name: t.name.clone(),
            config,
            local_port: t.local_port,
            unix_socket: t.unix_socket.as_deref().map(|dir| self.dir.join(dir)),
        })
    }

    /// The external ID from where the target says it is. Messages name the variable or
    /// the file, never the value.
    fn external_id(
        &self,
        t: &RawTarget,
        section: &Section,
        span: std::ops::Range<usize>,
    ) -> Result<Option<String>, TargetsError> {
        let err = |key: &str, problem: String| self.error(span.clone(), section, key, problem);
        let id = match (&t.external_id_env, &t.external_id_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(err(
                    "external_id_file",
                    "cannot be used with `external_id_env`: give one place for the external ID"
                        .to_owned(),
                ))
            }
            (Some(variable), None) => {
                let variable = variable.trim();
                // Not repeated when it is no variable name: an external ID written here by
                // mistake must not end up in the message.
                let is_name = variable.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && variable
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !is_name {
                    return Err(err(
                        "external_id_env",
                        "is not an environment variable name (letters, digits and `_`): give the name of the variable that holds the external ID, not the ID".to_owned(),
                    ));
                }
                match (self.env)(variable) {
                    None => {
                        return Err(err(
                            "external_id_env",
                            format!("names environment variable {variable}, which is not set"),
                        ))
                    }
                    Some(id) if id.trim().is_empty() => {
                        return Err(err(
                            "external_id_env",
                            format!("names environment variable {variable}, which is empty"),
                        ))
                    }
                    Some(id) => id.trim().to_owned(),
                }
            }
            (None, Some(file)) => {
                let path = self.dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    err(
                        "external_id_file",
                        format!("cannot be read: {}: {e}", path.display()),
                    )
                })?;
                let id = text.trim();
                if id.is_empty() {
                    return Err(err(
                        "external_id_file",
                        format!("names {}, which is empty", path.display()),
                    ));
                }
                if id.contains('\n') {
                    return Err(err(
                        "external_id_file",
                        format!(
                            "names {}, which holds more than one line: it must hold the external ID alone",
                            path.display()
                        ),
                    ));
                }
                id.to_owned()
            }
        };
        if t.role_arn.is_none() {
            return Err(err(
                external_id_key(t),
                "is only used with `role_arn`: the external ID is sent when assuming that role"
                    .to_owned(),
            ));
        }
        Ok(Some(id))
    }

    /// Checks the password keys (one source at most; a time to live only with one) and
    /// returns the time to live. Messages name the key; neither key holds a secret (an
    /// ARN, a parameter name), so their values may be shown.
    fn password_keys(
        &self,
        t: &RawTarget,
        section: &Section,
        span: std::ops::Range<usize>,
    ) -> Result<Option<Duration>, TargetsError> {
        let err = |key: &str, problem: String| self.error(span.clone(), section, key, problem);
        let key = match (&t.secret_arn, &t.password_parameter) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "password_parameter",
                    "cannot be used with `secret_arn`: give one password source".to_owned(),
                ))
            }
            (Some(_), None) => Some("secret_arn"),
            (None, Some(_)) => Some("password_parameter"),
            (None, None) => None,
        };
        if let Some(key) = key {
            let value = t.secret_arn.as_ref().or(t.password_parameter.as_ref());
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err(err(key, "is empty".to_owned()));
            }
            // The library's own check of the source: a secret ARN's shape (its region is
            // where the secret is read). A parameter name is Parameter Store's to judge.
            Config::new()
                .set_secret_arn(t.secret_arn.clone())
                .set_password_parameter(t.password_parameter.clone())
                .password_source()
                .map_err(|e| err(key, reason(e)))?;
        }
        let Some(text) = &t.password_ttl else {
            return Ok(None);
        };
        if key.is_none() {
            return Err(err(
                "password_ttl",
                "is only used with `secret_arn` or `password_parameter`: it is how long a stored password is cached (IAM tokens are signed for each connection)".to_owned(),
            ));
        }
        parse_duration(text)
            .map(Some)
            .map_err(|e| err("password_ttl", e))
    }

    fn bundle(&self, path: &Path) -> Result<CaBundle, String> {
        let path = self.dir.join(path);
        if let Some(bundle) = self.bundles.borrow().get(&path) {
            return Ok(bundle.clone());
        }
        let bundle = CaBundle::from_pem_file(&path).map_err(|e| format!("is refused: {e}"))?;
        self.bundles.borrow_mut().insert(path, bundle.clone());
        Ok(bundle)
    }
}

/// The key that holds the target's external ID setting.
fn external_id_key(t: &RawTarget) -> &'static str {
    if t.external_id_file.is_some() {
        "external_id_file"
    } else {
        "external_id_env"
    }
}

/// The library's reason, without its own setting name (the file's key is named instead).
fn reason(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { reason, .. } => format!("is refused: {reason}"),
        e => format!("is refused: {e}"),
    }
}

fn usable_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Names, local ports and Unix sockets: each belongs to one target.
fn check_unique(
    path: &Path,
    text: &str,
    raw: &[Spanned<RawTarget>],
    targets: &[Target],
) -> Result<(), TargetsError> {
    let error = |i: usize, key: &str, problem: String| TargetsError::Invalid {
        path: path.to_owned(),
        position: Some(line_column(text, raw[i].span().start)),
        section: Section::Target {
            index: i + 1,
            name: Some(targets[i].name.clone()),
        },
        key: Some(key.to_owned()),
        problem: format!("`{key}` {problem}"),
    };
    let mut names = BTreeMap::new();
    let mut ports = BTreeMap::new();
    let mut sockets = BTreeMap::new();
    for (i, target) in targets.iter().enumerate() {
        match names.entry(target.name.as_str()) {
            Entry::Occupied(first) => {
                return Err(error(
                    i,
                    "name",
                    format!(
                        "is {:?}, the name of target #{} too: names must be unique",
                        target.name,
                        first.get() + 1
                    ),
                ))
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        if let Some(port) = target.local_port {
            if let Some(first) = ports.insert(port, i) {
                return Err(error(
                    i,
                    "local_port",
                    format!(
                        "is {port}, the local port of target `{}` too",
                        targets[first].name
                    ),
                ));
            }
        }
        if let Some(socket) = target.socket_path() {
            if let Some(first) = sockets.insert(socket.clone(), i) {
                return Err(error(
                    i,
                    "unix_socket",
                    format!(
                        "gives socket {}, the socket of target `{}` too: set a different `local_port` or directory",
                        socket.display(),
                        targets[first].name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A duration with its unit, as the command line takes it (`500ms`, `10s`, `2m`, `1h30m`),
/// more than zero.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = crate::args::parse_duration(text).map_err(|_| {
        format!("is {text:?}: expected a whole number and a unit (ms, s, m or h), e.g. \"10s\"")
    })?;
    if duration.is_zero() {
        return Err(format!("is {text:?}: must be more than zero"));
    }
    Ok(duration)
}

/// Line and column (from 1, in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    // u32 keeps the error small; no targets file has 4 billion lines.
    let small = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    (small(line), small(column))
}

/// The keys of a table and where their values are.
type Keys = BTreeMap<String, Spanned<toml::Value>>;

/// Where each table and key is, for errors the typed parse reports by position only.
#[derive(Deserialize)]
struct Outline {
    defaults: Option<Spanned<Keys>>,
    #[serde(default)]
    target: Vec<Spanned<Keys>>,
}

/// A TOML or typed-parse error as one line. Only `message()` and `span()` are used: the
/// parser's `Display` quotes the source line, which may hold a secret.
fn toml_error(text: &str, origin: &Path, e: &toml::de::Error) -> TargetsError {
    let offset = e.span().map_or(0, |s| s.start);
    let (line, column) = line_column(text, offset);
    let message = e.message().trim().replace('\n', "; ");
    // The outline accepts any keys, so what it cannot read is either not TOML at all or a
    // top-level key of the wrong type (`target = "x"`).
    let outline = toml::from_str::<Outline>(text).ok();
    let top_level = match &outline {
        Some(_) => None,
        None => match toml::from_str::<Keys>(text) {
            Ok(keys) => Some(keys),
            Err(_) => {
                return TargetsError::Syntax {
                    path: origin.to_owned(),
                    line,
                    column,
                    message,
                }
            }
        },
    };
    let contains = |span: std::ops::Range<usize>| span.start <= offset && offset < span.end;
    let targets = outline.as_ref().map_or(&[][..], |o| &o.target[..]);
    let defaults = outline.as_ref().and_then(|o| o.defaults.as_ref());
    let (section, keys) =
        if let Some((i, table)) = targets.iter().enumerate().find(|(_, t)| contains(t.span())) {
            let name = table
                .get_ref()
                .get("name")
                .and_then(|v| v.get_ref().as_str())
                .filter(|n| usable_name(n))
                .map(str::to_owned);
            let section = Section::Target { index: i + 1, name };
            (section, Some(table.get_ref()))
        } else if let Some(d) = defaults.filter(|d| contains(d.span())) {
            (Section::Defaults, Some(d.get_ref()))
        } else {
            (Section::TopLevel, top_level.as_ref())
        };

    let quoted_after = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('`'))
            .and_then(|rest| rest.split_once('`'))
            .map(|(key, rest)| (key.to_owned(), rest.to_owned()))
    };
    let (key, problem) = if let Some((key, rest)) = quoted_after("unknown field ") {
        let problem = if key == "external_id" {
            "unknown key `external_id`: the external ID is a secret shared between accounts \
             and does not belong in this file; use `external_id_env` (an environment variable) \
             or `external_id_file` (a file) to say where it is"
                .to_owned()
        } else {
            format!("unknown key `{key}`{rest}")
        };
        (Some(key), problem)
    } else if let Some((key, rest)) = quoted_after("missing field ") {
        (Some(key.clone()), format!("missing key `{key}`{rest}"))
    } else if let Some(key) = keys.and_then(|keys| {
        keys.iter()
            .find(|(_, value)| contains(value.span()))
            .map(|(key, _)| key.clone())
    }) {
        let problem = format!("`{key}` {message}");
        (Some(key), problem)
    } else {
        (None, message)
    };
    TargetsError::Invalid {
        path: origin.to_owned(),
        position: Some((line, column)),
        section,
        key,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rds_iam_auth::PasswordSource;

    const ORIGIN: &str = "/etc/rds/targets.toml";
    const SECRET: &str = "s3cr3t-external-id-7d1e";

    /// One valid target, to add keys to.
    const ORDERS: &str = r#"
[[target]]
name = "orders"
endpoint = "orders.endpoint.proxy-abc.us-east-1.rds.amazonaws.com"
database = "orders"
user = "app_reader"
"#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn parse_with(text: &str, pairs: &[(&str, &str)]) -> Result<Vec<Target>, TargetsError> {
        parse(text, Path::new(ORIGIN), env(pairs))
    }

    /// The error for `text`, checked to be one line that names the file.
    fn error(text: &str, pairs: &[(&str, &str)]) -> TargetsError {
        let err = parse_with(text, pairs).expect_err("refused");
        let line = err.to_string();
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(line.starts_with(ORIGIN), "names the file: {line}");
        err
    }

    fn with(extra: &str) -> String {
        format!("{ORDERS}{extra}\n")
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../targets.example.toml");
        let targets = parse_with(
            text,
            &[("ORDERS_EXTERNAL_ID", SECRET), ("BILLING_EXTERNAL_ID", "b")],
        )
        .expect("valid");
        let names: Vec<_> = targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["orders", "billing", "inventory", "legacy"]);
        let [orders, billing, inventory, legacy] = &targets[..] else {
            unreachable!()
        };
        assert_eq!(orders.account(), Some("222222222222"));
        assert_eq!(
            orders.role_name(),
            Some("proxy-cross-account-rds-connect-role")
        );
        assert!(orders.config.has_external_id());
        assert_eq!(
            orders.config.get_region(),
            Some("us-east-1"),
            "from [defaults]"
        );
        assert_eq!(billing.config.get_region(), Some("eu-west-1"), "its own");
        assert_eq!(
            billing.config.get_connect_timeout(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            orders.config.get_connect_timeout(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            orders.socket_path(),
            Some(PathBuf::from("/var/run/rds/.s.PGSQL.5433"))
        );
        assert_eq!(
            billing.socket_path(),
            Some(PathBuf::from("/var/run/rds/.s.PGSQL.5434"))
        );
        assert_eq!(inventory.account(), None);
        assert_eq!(inventory.role_arn(), None);
        assert!(!inventory.config.has_external_id());
        assert_eq!(
            inventory.config.get_connect_address(),
            Some("127.0.0.1:6432")
        );
        assert_eq!(inventory.socket_path(), None);
        assert_eq!(inventory.config.password_source().expect("no source"), None);
        assert!(matches!(
            legacy.config.password_source().expect("one source"),
            Some(PasswordSource::SecretsManager { .. })
        ));
        assert_eq!(
            legacy.config.get_password_ttl(),
            Some(Duration::from_secs(15 * 60))
        );
    }

    /// A directory with a CA bundle and an external ID file, and a file that uses every key
    /// with relative paths.
    fn full_example() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = rds_proxy_emulator::tls::ProxyTls::generate(&["x.example".to_owned()])
            .expect("CA")
            .ca_pem;
        std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
        std::fs::write(dir.path().join("ca.pem"), &ca).expect("ca");
        std::fs::write(dir.path().join("other-ca.pem"), &ca).expect("ca");
        std::fs::write(
            dir.path().join("secrets/billing-id"),
            format!("  {SECRET}\n"),
        )
        .expect("id");
        let text = r#"
[defaults]
region = "us-west-2"
ca_bundle = "ca.pem"
connect_timeout = "1500ms"

[[target]]
name = "orders"
endpoint = "orders.endpoint.proxy-abc.us-east-1.rds.amazonaws.com"
port = 6543
database = "orders_db"
user = "app_reader"
region = "us-east-1"
role_arn = "arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role"
external_id_env = "ORDERS_EXTERNAL_ID"
ca_bundle = "other-ca.pem"
connect_address = "127.0.0.1:6432"
connect_timeout = "2m"
application_name = "orders-reader"
local_port = 5433
unix_socket = "sockets"

[[target]]
name = "billing_2"
endpoint = "db.internal"
database = "billing"
user = "billing"
role_arn = "arn:aws:iam::333333333333:role/team/reader"
external_id_file = "secrets/billing-id"
secret_arn = "arn:aws:secretsmanager:eu-west-1:333333333333:secret:billing/app-AbCdEf"
password_ttl = "15m"
unix_socket = "sockets"

[[target]]
name = "ledger"
endpoint = "ledger.endpoint.proxy-abc.us-west-2.rds.amazonaws.com"
database = "ledger"
user = "ledger_app"
password_parameter = "/ledger/db/password"
"#;
        let path = dir.path().join("targets.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn every_key_reaches_the_library_config() {
        let (dir, path) = full_example();
        let text = std::fs::read_to_string(&path).expect("read");
        let targets = parse(&text, &path, env(&[("ORDERS_EXTERNAL_ID", SECRET)])).expect("valid");
        let [orders, billing, ledger] = &targets[..] else {
            panic!("three targets: {targets:?}")
        };
        let c = &orders.config;
        assert_eq!(orders.name, "orders");
        assert_eq!(
            c.get_hostname(),
            Some("orders.endpoint.proxy-abc.us-east-1.rds.amazonaws.com")
        );
        assert_eq!(c.get_port(), Some(6543));
        assert_eq!(c.get_database(), Some("orders_db"));
        assert_eq!(c.get_user(), Some("app_reader"));
        assert_eq!(c.get_region(), Some("us-east-1"), "the target's own");
        assert_eq!(orders.account(), Some("222222222222"));
        assert!(c.has_external_id());
        let ca = c.get_ca_bundle().expect("bundle");
        assert_eq!(
            ca.origin(),
            dir.path().join("other-ca.pem").display().to_string()
        );
        assert_eq!(c.get_connect_address(), Some("127.0.0.1:6432"));
        assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(120)));
        assert_eq!(c.get_application_name(), Some("orders-reader"));
        assert_eq!(c.password_source().expect("no source"), None, "IAM");
        assert_eq!(orders.local_port, Some(5433));
        assert_eq!(orders.unix_socket, Some(dir.path().join("sockets")));
        assert_eq!(
            orders.socket_path(),
            Some(dir.path().join("sockets/.s.PGSQL.5433"))
        );

        let c = &billing.config;
        assert_eq!(c.get_port(), Some(DEFAULT_PORT), "the file's default");
        assert_eq!(c.get_region(), Some("us-west-2"), "from [defaults]");
        assert_eq!(
            c.get_ca_bundle().expect("bundle").origin(),
            dir.path().join("ca.pem").display().to_string()
        );
        assert_eq!(c.get_connect_timeout(), Some(Duration::from_millis(1500)));
        assert!(c.has_external_id(), "from the file, trimmed");
        assert_eq!(
            c.password_source().expect("one source"),
            Some(PasswordSource::SecretsManager {
                secret_arn:
                    "arn:aws:secretsmanager:eu-west-1:333333333333:secret:billing/app-AbCdEf"
                        .to_owned()
            })
        );
        assert_eq!(c.get_password_ttl(), Some(Duration::from_secs(15 * 60)));
        let c = &ledger.config;
        assert_eq!(
            c.password_source().expect("one source"),
            Some(PasswordSource::Parameter {
                name: "/ledger/db/password".to_owned()
            })
        );
        assert_eq!(c.get_password_ttl(), None, "the library's default");
        assert_eq!(ledger.role_arn(), None);
        assert_eq!(billing.account(), Some("333333333333"));
        assert_eq!(billing.role_name(), Some("team/reader"));
        assert_eq!(
            billing.socket_path(),
            Some(dir.path().join("sockets/.s.PGSQL.5432")),
            "the endpoint port when no local port is set"
        );
        assert_eq!(billing.local_port, None);
        assert_eq!(c.get_application_name(), None);

        let debug = format!("{targets:?}");
        assert!(!debug.contains(SECRET), "{debug}");
    }

    /// The library accepts every loaded target: connectors build (with a given SDK
    /// configuration, so no AWS configuration is read and nothing is dialed).
    #[tokio::test]
    async fn connectors_build_from_loaded_targets() {
        use aws_config::{BehaviorVersion, Region, SdkConfig};
        use aws_credential_types::provider::SharedCredentialsProvider;
        use aws_credential_types::Credentials;
        let (_dir, path) = full_example();
        let text = std::fs::read_to_string(&path).expect("read");
        let targets = parse(&text, &path, env(&[("ORDERS_EXTERNAL_ID", SECRET)])).expect("valid");
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::from_keys(
                "AKIDEXAMPLE",
                "secret",
                None,
            )))
            .build();
        // With every setting given, a password target does not read its secret here.
        for target in targets {
            let assumes_role = target.role_arn().is_some();
            let connector = target
                .config
                .sdk_config(sdk.clone())
                .connector()
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", target.name));
            assert_eq!(connector.credentials().assumes_role(), assumes_role);
        }
    }

    #[test]
    fn load_reads_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("targets.toml");
        std::fs::write(&path, ORDERS).expect("write");
        let targets = load(&path).expect("valid");
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].account(), None);
    }

    #[test]
    fn load_names_a_file_it_cannot_read() {
        let err = load(Path::new("/nonexistent/targets.toml")).unwrap_err();
        assert!(matches!(err, TargetsError::Read { .. }));
        assert!(
            err.to_string()
                .starts_with("/nonexistent/targets.toml: cannot read the targets file: "),
            "{err}"
        );
    }

    #[test]
    fn not_toml_is_refused_with_line_and_column() {
        let err = error(&with("port = 5432 5433"), &[]);
        let TargetsError::Syntax { line, column, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!((*line, *column), (7, 13), "{err}");
        assert!(err
            .to_string()
            .starts_with(&format!("{ORIGIN}:7:13: not valid TOML: ")));

        // The parser quotes the source line in its own Display: not here.
        let err = error(&with(&format!("application_name = {SECRET}")), &[]);
        assert!(!err.to_string().contains(SECRET), "{err}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");

        let err = error(&with("endpoint = \"again\""), &[]);
        assert!(
            err.to_string().contains("duplicate key `endpoint`"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_its_target() {
        let err = error(&with("conect_timeout = \"5s\""), &[]);
        assert_eq!(err.key(), Some("conect_timeout"));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "{ORIGIN}:7:1: target `orders`: unknown key `conect_timeout`, expected one of "
            )),
            "{text}"
        );
        // Unnamed (or before its name): by position.
        let text = format!("{ORDERS}\n[[target]]\nport = 5\nbogus = 1\n");
        let err = error(&text, &[]);
        assert!(
            err.to_string()
                .starts_with(&format!("{ORIGIN}:10:1: target #2: unknown key `bogus`")),
            "{err}"
        );
        // In [defaults] and at the top level.
        let err = error(&format!("[defaults]\nuser = \"x\"\n{ORDERS}"), &[]);
        assert!(
            err.to_string()
                .starts_with(&format!("{ORIGIN}:2:1: [defaults]: unknown key `user`")),
            "{err}"
        );
        let err = error(&format!("targets = 1\n{ORDERS}"), &[]);
        assert!(
            err.to_string()
                .starts_with(&format!("{ORIGIN}:1:1: unknown key `targets`")),
            "{err}"
        );
    }

    #[test]
    fn an_external_id_in_the_file_is_refused_without_repeating_it() {
        let err = error(&with(&format!("external_id = \"{SECRET}\"")), &[]);
        assert_eq!(err.key(), Some("external_id"));
        let text = err.to_string();
        assert!(
            text.contains("target `orders`: unknown key `external_id`")
                && text.contains("use `external_id_env`")
                && text.contains("`external_id_file`"),
            "{text}"
        );
        assert!(!text.contains(SECRET), "{text}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
        // Also in [defaults].
        let err = error(
            &format!("[defaults]\nexternal_id = \"{SECRET}\"\n{ORDERS}"),
            &[],
        );
        assert!(err.to_string().contains("use `external_id_env`"), "{err}");
        assert!(!format!("{err} {err:?}").contains(SECRET));
    }

    #[test]
    fn a_missing_required_key_is_named() {
        for key in ["name", "endpoint", "database", "user"] {
            let text: String = ORDERS
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} =")))
                .map(|l| format!("{l}\n"))
                .collect();
            let err = error(&text, &[]);
            assert_eq!(err.key(), Some(key));
            let expected_target = if key == "name" {
                "target #1"
            } else {
                "target `orders`"
            };
            assert_eq!(
                err.to_string(),
                format!("{ORIGIN}:2:1: {expected_target}: missing key `{key}`")
            );
        }
        // Present but blank.
        let err = error(
            &ORDERS.replace("user = \"app_reader\"", "user = \" \""),
            &[],
        );
        assert_eq!(err.key(), Some("user"));
        assert!(
            err.to_string()
                .ends_with("target `orders`: `user` is empty"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_type_or_value_names_the_key() {
        let err = error(&with("port = \"5432\""), &[]);
        assert_eq!(err.key(), Some("port"));
        assert_eq!(
            err.to_string(),
            format!(
                "{ORIGIN}:7:8: target `orders`: `port` invalid type: string \"5432\", expected u16"
            )
        );
        let err = error(&with("local_port = 70000"), &[]);
        assert_eq!(err.key(), Some("local_port"));
        let err = error("target = \"orders\"\n", &[]);
        assert_eq!(err.key(), Some("target"));
        assert!(
            err.to_string()
                .starts_with(&format!("{ORIGIN}:1:10: `target` invalid type")),
            "{err}"
        );

        // The library's own checks, reported with the file's key.
        let cases = [
            ("port = 0", "port", "invalid port 0"),
            ("local_port = 0", "local_port", "is 0"),
            (
                "region = \"US_EAST\"",
                "region",
                "invalid region \"US_EAST\"",
            ),
            ("role_arn = \"proxy-role\"", "role_arn", "is not a role ARN"),
        ];
        for (line, key, needle) in cases {
            let err = error(&with(line), &[]);
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("{ORIGIN}:2:1: target `orders`: `{key}` ")),
                "{err}"
            );
            assert!(err.to_string().contains(needle), "{err}");
        }
        let err = error(
            &ORDERS.replace("endpoint = \"", "endpoint = \"https://"),
            &[],
        );
        assert_eq!(err.key(), Some("endpoint"));
        assert!(err.to_string().contains("without a scheme"), "{err}");
        let err = error(
            &ORDERS.replace("\"orders\"\nendpoint", "\"or ders\"\nendpoint"),
            &[],
        );
        assert_eq!(err.key(), Some("name"));
        assert!(
            err.to_string().contains("target #1: `name` is \"or ders\""),
            "{err}"
        );
    }

    #[test]
    fn names_local_ports_and_sockets_are_unique() {
        let second = |extra: &str| {
            ORDERS.replace(
                "name = \"orders\"\n",
                &format!("name = \"second\"\n{extra}\n"),
            )
        };
        let err = error(&format!("{ORDERS}{ORDERS}"), &[]);
        assert_eq!(err.key(), Some("name"));
        assert_eq!(
            err.to_string(),
            format!("{ORIGIN}:8:1: target `orders`: `name` is \"orders\", the name of target #1 too: names must be unique")
        );

        let err = error(
            &format!(
                "{}{}",
                with("local_port = 5433"),
                second("local_port = 5433")
            ),
            &[],
        );
        assert_eq!(err.key(), Some("local_port"));
        assert!(
            err.to_string().ends_with(
                "target `second`: `local_port` is 5433, the local port of target `orders` too"
            ),
            "{err}"
        );

        // Same directory (written differently) and the same endpoint port.
        let err = error(
            &format!(
                "{}{}",
                with("unix_socket = \"/run/rds\""),
                second("unix_socket = \"/run/rds/\"")
            ),
            &[],
        );
        assert_eq!(err.key(), Some("unix_socket"));
        assert!(
            err.to_string()
                .contains("gives socket /run/rds/.s.PGSQL.5432, the socket of target `orders` too"),
            "{err}"
        );
        // A local port equal to the other's endpoint port: the same socket too.
        let err = error(
            &format!(
                "{}{}",
                with("unix_socket = \"/run/rds\""),
                second("unix_socket = \"/run/rds\"\nlocal_port = 5432")
            ),
            &[],
        );
        assert_eq!(err.key(), Some("unix_socket"));
        // Different ports, or different directories: fine.
        for extra in [
            "unix_socket = \"/run/rds\"\nlocal_port = 5433",
            "unix_socket = \"/run/other\"",
        ] {
            let text = format!("{}{}", with("unix_socket = \"/run/rds\""), second(extra));
            assert_eq!(parse_with(&text, &[]).expect("valid").len(), 2);
        }
    }

    #[test]
    fn the_external_id_comes_from_a_set_variable_or_a_readable_file() {
        let role = "role_arn = \"arn:aws:iam::222222222222:role/r\"";
        let from_env = with(&format!("{role}\nexternal_id_env = \"ORDERS_EXTERNAL_ID\""));
        assert!(
            parse_with(&from_env, &[("ORDERS_EXTERNAL_ID", SECRET)]).expect("valid")[0]
                .config
                .has_external_id()
        );

        let err = error(&from_env, &[]);
        assert_eq!(err.key(), Some("external_id_env"));
        assert_eq!(
            err.to_string(),
            format!("{ORIGIN}:2:1: target `orders`: `external_id_env` names environment variable ORDERS_EXTERNAL_ID, which is not set")
        );
        let err = error(&from_env, &[("ORDERS_EXTERNAL_ID", " \n")]);
        assert!(
            err.to_string()
                .ends_with("ORDERS_EXTERNAL_ID, which is empty"),
            "{err}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let origin = dir.path().join("targets.toml");
        let from_file = |file: &str| with(&format!("{role}\nexternal_id_file = \"{file}\""));
        let err = parse(&from_file("missing-id"), &origin, env(&[])).unwrap_err();
        assert_eq!(err.key(), Some("external_id_file"));
        let missing = dir.path().join("missing-id");
        assert!(
            err.to_string().contains(&format!(
                "target `orders`: `external_id_file` cannot be read: {}: ",
                missing.display()
            )),
            "{err}"
        );
        std::fs::write(dir.path().join("empty-id"), "\n  \n").expect("write");
        let err = parse(&from_file("empty-id"), &origin, env(&[])).unwrap_err();
        assert!(
            err.to_string().ends_with("empty-id, which is empty"),
            "{err}"
        );
        std::fs::write(
            dir.path().join("two-lines"),
            format!("{SECRET}\n{SECRET}\n"),
        )
        .expect("write");
        let err = parse(&from_file("two-lines"), &origin, env(&[])).unwrap_err();
        assert!(err.to_string().contains("more than one line"), "{err}");
        assert!(!format!("{err} {err:?}").contains(SECRET));

        let both = with(&format!(
            "{role}\nexternal_id_env = \"ORDERS_EXTERNAL_ID\"\nexternal_id_file = \"id\""
        ));
        let err = error(&both, &[("ORDERS_EXTERNAL_ID", SECRET)]);
        assert_eq!(err.key(), Some("external_id_file"));
        assert!(err.to_string().ends_with("`external_id_file` cannot be used with `external_id_env`: give one place for the external ID"), "{err}");

        // The ID itself where the variable's name belongs: not repeated.
        let err = error(
            &with(&format!("{role}\nexternal_id_env = \"{SECRET}\"")),
            &[],
        );
        assert_eq!(err.key(), Some("external_id_env"));
        assert!(
            err.to_string()
                .contains("is not an environment variable name"),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains(SECRET));
        let err = error(&with(&format!("{role}\nexternal_id_env = \"\"")), &[]);
        assert_eq!(err.key(), Some("external_id_env"));

        let no_role = with("external_id_env = \"ORDERS_EXTERNAL_ID\"");
        let err = error(&no_role, &[("ORDERS_EXTERNAL_ID", SECRET)]);
        assert_eq!(err.key(), Some("external_id_env"));
        assert!(
            err.to_string().contains("only used with `role_arn`"),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains(SECRET));
    }

    #[test]
    fn a_ca_bundle_that_cannot_be_read_is_refused() {
        let err = error(&with("ca_bundle = \"/nonexistent/ca.pem\""), &[]);
        assert_eq!(err.key(), Some("ca_bundle"));
        assert!(
            err.to_string().contains(
                "target `orders`: `ca_bundle` is refused: CA bundle /nonexistent/ca.pem: cannot read: "
            ),
            "{err}"
        );
        let err = error(
            &format!("[defaults]\nca_bundle = \"ca.pem\"\n{ORDERS}"),
            &[],
        );
        assert!(
            err.to_string().starts_with(&format!(
                "{ORIGIN}:1:1: [defaults]: `ca_bundle` is refused: CA bundle /etc/rds/ca.pem: cannot read"
            )),
            "relative to the file: {err}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("junk.pem"), "hello").expect("write");
        let err = parse(
            &with("ca_bundle = \"junk.pem\""),
            &dir.path().join("t.toml"),
            env(&[]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no certificate found"), "{err}");
    }

    const SECRET_ARN: &str =
        "arn:aws:secretsmanager:us-east-1:222222222222:secret:orders/app-AbCdEf";

    #[test]
    fn one_password_source_at_most_checked_as_the_library_checks_it() {
        let err = error(
            &with(&format!(
                "secret_arn = \"{SECRET_ARN}\"\npassword_parameter = \"/orders/db/password\""
            )),
            &[],
        );
        assert_eq!(err.key(), Some("password_parameter"));
        assert_eq!(
            err.to_string(),
            format!("{ORIGIN}:2:1: target `orders`: `password_parameter` cannot be used with `secret_arn`: give one password source")
        );

        // Not a Secrets Manager secret ARN: the library's reason, with the file's key.
        for arn in [
            "orders/app",
            "arn:aws:ssm:us-east-1:222222222222:parameter/orders/db/password",
            "arn:aws:secretsmanager::222222222222:secret:orders/app",
        ] {
            let err = error(&with(&format!("secret_arn = \"{arn}\"")), &[]);
            assert_eq!(err.key(), Some("secret_arn"), "{err}");
            assert!(
                err.to_string().contains(&format!(
                    "target `orders`: `secret_arn` is refused: \"{arn}\" is not a secret ARN"
                )),
                "{err}"
            );
        }
        for key in ["secret_arn", "password_parameter"] {
            let err = error(&with(&format!("{key} = \" \"")), &[]);
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(
                err.to_string()
                    .ends_with(&format!("target `orders`: `{key}` is empty")),
                "{err}"
            );
        }
        // A parameter is named as Parameter Store names it (a path, a plain name or an
        // ARN): Parameter Store, not the file, says whether it exists.
        for name in ["/orders/db/password", "orders-db-password"] {
            let text = with(&format!("password_parameter = \"{name}\""));
            assert_eq!(
                parse_with(&text, &[]).expect("valid")[0]
                    .config
                    .get_password_parameter(),
                Some(name)
            );
        }
    }

    #[test]
    fn a_password_ttl_needs_a_password_source_and_a_unit() {
        let err = error(&with("password_ttl = \"15m\""), &[]);
        assert_eq!(err.key(), Some("password_ttl"));
        assert!(
            err.to_string().contains(
                "target `orders`: `password_ttl` is only used with `secret_arn` or `password_parameter`"
            ),
            "{err}"
        );
        let source = format!("secret_arn = \"{SECRET_ARN}\"");
        let err = error(&with(&format!("{source}\npassword_ttl = \"900\"")), &[]);
        assert_eq!(err.key(), Some("password_ttl"));
        assert!(
            err.to_string().ends_with(
                "`password_ttl` is \"900\": expected a whole number and a unit (ms, s, m or h), e.g. \"10s\""
            ),
            "{err}"
        );
        let err = error(&with(&format!("{source}\npassword_ttl = \"0s\"")), &[]);
        assert!(err.to_string().ends_with("must be more than zero"), "{err}");
        let targets =
            parse_with(&with(&format!("{source}\npassword_ttl = \"1h30m\"")), &[]).expect("valid");
        assert_eq!(
            targets[0].config.get_password_ttl(),
            Some(Duration::from_secs(90 * 60))
        );
    }

    /// The library's own floor for the time to live is reported when the connector is
    /// built, before any AWS configuration is loaded.
    #[tokio::test]
    async fn a_password_ttl_under_a_second_is_refused_by_the_library() {
        let text = with(&format!(
            "secret_arn = \"{SECRET_ARN}\"\npassword_ttl = \"500ms\""
        ));
        let target = parse_with(&text, &[])
            .expect("the file accepts it")
            .remove(0);
        let err = target
            .config
            .connector()
            .await
            .expect_err("the library refuses it");
        assert!(err.to_string().contains("password_ttl"), "{err}");
        assert!(err.to_string().contains("at least one second"), "{err}");
    }

    #[test]
    fn durations_need_a_unit() {
        for (text, expected) in [
            ("500ms", 500),
            ("10s", 10_000),
            (" 2m", 120_000),
            ("1h", 3_600_000),
            ("1.5s", 1_500),
            ("1h30m", 5_400_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(expected)),
                "{text}"
            );
        }
        for bad in [
            "10",
            "10x",
            "-1s",
            "s",
            "",
            "10 s s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_duration("0s"),
            Err("is \"0s\": must be more than zero".to_owned())
        );
        let err = error(&with("connect_timeout = \"10\""), &[]);
        assert_eq!(err.key(), Some("connect_timeout"));
        assert!(
            err.to_string().ends_with("target `orders`: `connect_timeout` is \"10\": expected a whole number and a unit (ms, s, m or h), e.g. \"10s\""),
            "{err}"
        );
        let err = error(&with("connect_timeout = 10"), &[]);
        assert_eq!(err.key(), Some("connect_timeout"));
        let err = error(
            &format!("[defaults]\nconnect_timeout = \"soon\"\n{ORDERS}"),
            &[],
        );
        assert!(
            err.to_string()
                .contains("[defaults]: `connect_timeout` is \"soon\""),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_targets_is_refused() {
        for text in [
            "",
            "# nothing\n",
            "[defaults]\nregion = \"us-east-1\"\n",
            "target = []\n",
        ] {
            let err = error(text, &[]);
            assert!(matches!(err, TargetsError::NoTargets { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!("{ORIGIN}: no targets: add a [[target]] table for each database")
            );
        }
    }

    #[test]
    fn the_first_problem_stops_the_file_and_no_message_holds_the_external_id() {
        // A valid target with an external ID, then a broken one: the error is about the
        // second, and says nothing of the first one's ID.
        let text = format!(
            "{}{}",
            with("role_arn = \"arn:aws:iam::222222222222:role/r\"\nexternal_id_env = \"ID\""),
            ORDERS.replace("name = \"orders\"\n", "name = \"b\"\nport = 0\n")
        );
        let err = error(&text, &[("ID", SECRET)]);
        assert!(err.to_string().contains("target `b`: `port`"), "{err}");
        assert!(!format!("{err} {err:?}").contains(SECRET));
        // A role ARN that is refused, with an external ID.
        let text = with("role_arn = \"nope\"\nexternal_id_env = \"ID\"");
        let err = error(&text, &[("ID", SECRET)]);
        assert_eq!(err.key(), Some("role_arn"));
        assert!(!format!("{err} {err:?}").contains(SECRET));
    }
}
