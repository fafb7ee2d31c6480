//! Settings from Parameter Store ([`Config::from_parameters`]): every parameter under a
//! path, named by the setting it fills, read with `GetParametersByPath` (recursive, with
//! decryption, page by page).
//!
//! The names are the environment mapping's settings ([`env::VARIABLES`]: `hostname`,
//! `port`, `user`, `database`, `assume_role`, ...), plus `username` for `user` (the RDS
//! secret's word) and `password`: a SecureString holding the password itself, which makes
//! that parameter the password source (it is read again by the connector, through its
//! cache; the value read here is not kept) unless the path also names a `secret_arn` or a
//! `password_parameter`, which win (a secret follows rotation; a copy does not). Values are checked as the environment's are, so
//! a parameter and its variable accept the same text.

use std::collections::HashMap;

use aws_config::SdkConfig;

use super::{env, Config};
use crate::error::classify::parameter_error;
use crate::error::{ConfigError, Error, Reason};
use crate::password::parameter_client;
use crate::stage::Stage;

/// The name that makes a parameter the password source.
const PASSWORD: &str = "password";

/// The settings under `path`, read with `sdk_config`'s credentials and region.
pub(super) async fn read(sdk_config: &SdkConfig, path: &str) -> Result<Config, Error> {
    let path = path.trim();
    if !path.starts_with('/') {
        return Err(invalid_path(path, "must start with `/`"));
    }
    let prefix = format!("{}/", path.trim_end_matches('/'));
    let client = parameter_client(sdk_config, None);

    // Variable name (of the environment mapping) -> the parameter's name and value.
    let mut values: HashMap<&'static str, (String, String)> = HashMap::new();
    let mut password_parameter = None;
    let mut next_token = None;
    loop {
        let page = client
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .with_decryption(true)
            .set_next_token(next_token.take())
            .send()
            .await
            .map_err(|e| parameter_error(Stage::Parameters, path, e))?;
        for parameter in page.parameters() {
            let Some(name) = parameter.name() else {
                continue;
            };
            let key = name.strip_prefix(&prefix).unwrap_or(name);
            if key == PASSWORD {
                password_parameter = Some(name.to_owned());
                continue;
            }
            let setting = if key == "username" { "user" } else { key };
            let Some(variable) = env::variable_for(setting) else {
                // The name only: the value may be a secret.
                tracing::warn!(
                    parameter = name,
                    "unknown parameter under the settings path: ignored"
                );
                continue;
            };
            let value = parameter.value().unwrap_or_default().to_owned();
            // `user` wins over `username` when both are there.
            if key != "username" || !values.contains_key(variable) {
                values.insert(variable, (name.to_owned(), value));
            }
        }
        next_token = page.next_token().map(str::to_owned);
        if next_token.is_none() {
            break;
        }
    }
    if values.is_empty() && password_parameter.is_none() {
        return Err(Error::new(
            Stage::Parameters,
            Reason::ParameterNotFound,
            format!("{path}: no parameters under this path"),
        ));
    }

    let config = env::config_from(|variable| values.get(variable).map(|(_, v)| v.clone()))
        .map_err(|e| match e {
            // The same check as the environment's, reported with the parameter's name.
            ConfigError::Env { variable, problem } => {
                let name = values.get(variable).map_or(variable, |(n, _)| n.as_str());
                Error::new(
                    Stage::Parameters,
                    Reason::InvalidConfig,
                    format!("parameter {name} {problem}"),
                )
            }
            other => Error::new(
                Stage::Parameters,
                Reason::InvalidConfig,
                format!("{path}: {other}"),
            ),
        })?;
    // A path may hold both a secret and a copy of its password (stores often do): the
    // secret is the source that follows rotation, so it wins.
    if config.get_secret_arn().is_some() || config.get_password_parameter().is_some() {
        return Ok(config);
    }
    Ok(config.set_password_parameter(password_parameter))
}

fn invalid_path(path: &str, problem: &str) -> Error {
    Error::new(
        Stage::Parameters,
        Reason::InvalidConfig,
        format!("parameter path {path:?} {problem}"),
    )
}

impl Config {
    /// The settings stored in Parameter Store under `path` (`/myapp/db`), one parameter
    /// per setting, named as the setting: `hostname`, `port`, `user` (or `username`),
    /// `database`, `assume_role`, `external_id`, `connect_address`, `connect_timeout` (in
    /// seconds), `application_name`, `ca_bundle`, `secret_arn`, `password_parameter`, and
    /// `password`, a SecureString holding the password itself (that parameter becomes the
    /// password source, unless the path names a `secret_arn`, which wins). Read with the default AWS configuration (the caller's own
    /// credentials: parameters live in the application account), recursively, decrypted.
    ///
    /// An unknown name under the path is logged at WARN and ignored; a malformed value is
    /// an error naming the parameter; failures are errors of stage
    /// [`Stage::Parameters`](crate::Stage::Parameters).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), rds_iam_auth::Error> {
    /// let connector = rds_iam_auth::Config::from_parameters("/orders/db")
    ///     .await?
    ///     .application_name("billing-worker")
    ///     .connector()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_parameters(path: &str) -> Result<Self, Error> {
        let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Self::from_parameters_with(&sdk_config, path).await
    }

    /// [`Config::from_parameters`] with this SDK configuration (region, endpoint,
    /// credentials) for Parameter Store.
    pub async fn from_parameters_with(sdk_config: &SdkConfig, path: &str) -> Result<Self, Error> {
        read(sdk_config, path).await
    }

    /// The environment's settings ([`Config::from_env`]), and when `CONFIG_PARAMETER_PATH`
    /// is set, the settings under that path ([`Config::from_parameters`]) for what the
    /// environment leaves unset: what the connection-test Lambda does at init. A password
    /// source set in the environment (`DB_SECRET_ARN`, `DB_PASSWORD_PARAMETER`) replaces
    /// the path's, as one setting.
    pub async fn from_env_and_parameters() -> Result<Self, Error> {
        let config = Self::from_env()?;
        match std::env::var(CONFIG_PARAMETER_PATH)
            .ok()
            .filter(|p| !p.trim().is_empty())
        {
            Some(path) => Ok(config.fill_unset_from(Self::from_parameters(&path).await?)),
            None => Ok(config),
        }
    }

    /// These settings, with those of the environment mapping that are unset here taken
    /// from `fallback` (the environment first, then Parameter Store, as
    /// [`Config::from_env_and_parameters`] does). The password source is one setting:
    /// `fallback`'s is used only when neither a secret nor a parameter is set here.
    pub fn fill_unset_from(mut self, fallback: Config) -> Self {
        macro_rules! fill {
            ($($field:ident),*) => { $( if self.$field.is_none() { self.$field = fallback.$field; } )* };
        }
        fill!(
            hostname,
            port,
            user,
            database,
            assume_role,
            external_id,
            connect_address,
            ca_bundle,
            connect_timeout,
            application_name
        );
        if self.secret_arn.is_none() && self.password_parameter.is_none() {
            self.secret_arn = fallback.secret_arn;
            self.password_parameter = fallback.password_parameter;
        }
        self
    }
}

/// The environment variable naming the Parameter Store path of the settings
/// ([`Config::from_env_and_parameters`]).
pub const CONFIG_PARAMETER_PATH: &str = "CONFIG_PARAMETER_PATH";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_and_the_password_source_is_one_setting() {
        let env = Config::new()
            .hostname("env.example")
            .secret_arn("arn:aws:secretsmanager:us-east-1:222222222222:secret:s-AbCdEf");
        let stored = Config::new()
            .hostname("stored.example")
            .port(6432)
            .password_parameter("/app/db/password");
        let merged = env.fill_unset_from(stored);
        assert_eq!(merged.get_hostname(), Some("env.example"));
        assert_eq!(merged.get_port(), Some(6432));
        assert!(merged.get_password_parameter().is_none());
        assert!(merged.password_source().unwrap().is_some());
    }
}
