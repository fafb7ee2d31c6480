//! Settings from environment variables: one mapping, used by the CLI, the Lambda and the
//! examples ([`Config::from_env`]).
//!
//! The names are those of the connection-test Lambda's environment (what the CDK stacks
//! set). The AWS SDK's own variables (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL_STS`,
//! the credential variables, ...) are read by `aws-config` when the connector loads the SDK
//! configuration, as in every AWS SDK.

use std::time::Duration;

use super::Config;
use crate::credentials::is_role_arn;
use crate::error::ConfigError;
use crate::password::secret_arn_region;
use crate::tls::CaBundle;
use crate::token::validate_hostname;

pub use super::parameters::CONFIG_PARAMETER_PATH;

/// One variable [`Config::from_env`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    /// The variable's name.
    pub name: &'static str,
    /// The [`Config`] setting it fills.
    pub setting: &'static str,
    /// What it holds.
    pub meaning: &'static str,
}

/// Every variable [`Config::from_env`] reads, in the order of the path.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "RDS_PROXY_APPLICATION_ENDPOINT",
        setting: "hostname",
        meaning: "endpoint name, bare (no scheme, port or path)",
    },
    Variable {
        name: "DB_PORT",
        setting: "port",
        meaning: "endpoint port, 1 to 65535 (default 5432)",
    },
    Variable {
        name: "DB_USERNAME",
        setting: "user",
        meaning: "database user",
    },
    Variable {
        name: "DBNAME",
        setting: "database",
        meaning: "database name (default: the user name)",
    },
    Variable {
        name: "DATABASE_ACCOUNT_IAM_ROLE",
        setting: "assume_role",
        meaning: "role ARN to assume in the database account",
    },
    Variable {
        name: "EXTERNAL_ID",
        setting: "external_id",
        meaning: "external ID the role's trust policy requires",
    },
    Variable {
        name: "DB_CONNECT_HOST",
        setting: "connect_address",
        meaning: "address to dial instead of the endpoint (host or host:port); TLS still verifies the endpoint name",
    },
    Variable {
        name: "DB_CA_BUNDLE",
        setting: "ca_bundle",
        meaning: "PEM file of extra trusted CAs (RDS bundle for instances, a local stack's CA)",
    },
    Variable {
        name: "DB_CONNECT_TIMEOUT_SECONDS",
        setting: "connect_timeout",
        meaning: "limit for a whole connect, 1 to 300 seconds (default 10)",
    },
    Variable {
        name: "DB_APPLICATION_NAME",
        setting: "application_name",
        meaning: "application_name shown in pg_stat_activity",
    },
    Variable {
        name: "DB_SECRET_ARN",
        setting: "secret_arn",
        meaning: "Secrets Manager secret ARN whose password logs in instead of an IAM token (read with the assumed role)",
    },
    Variable {
        name: "DB_PASSWORD_PARAMETER",
        setting: "password_parameter",
        meaning: "Parameter Store SecureString holding the password, instead of an IAM token (read with the caller's credentials)",
    },
];

/// The variable that fills `setting`, if one does.
pub(crate) fn variable_for(setting: &str) -> Option<&'static str> {
    VARIABLES
        .iter()
        .find(|v| v.setting == setting)
        .map(|v| v.name)
}

/// Builds a configuration from `lookup` (see [`Config::from_lookup`]).
pub(crate) fn config_from(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    // Unset and blank are the same: a deployment tool often sets a variable to "".
    let get = |name: &'static str| {
        lookup(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let number = |name: &'static str, range: std::ops::RangeInclusive<u64>| {
        get(name)
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| {
                        ConfigError::env(
                            name,
                            format!(
                                "is {v:?}: expected a whole number from {} to {}",
                                range.start(),
                                range.end()
                            ),
                        )
                    })
            })
            .transpose()
    };

    let hostname = get("RDS_PROXY_APPLICATION_ENDPOINT");
    if let Some(h) = &hostname {
        if validate_hostname(h).is_err() {
            return Err(ConfigError::env(
                "RDS_PROXY_APPLICATION_ENDPOINT",
                format!("is {h:?}: expected the bare endpoint name (no scheme, port or path; the port is DB_PORT)"),
            ));
        }
    }
    let role = get("DATABASE_ACCOUNT_IAM_ROLE");
    if let Some(arn) = &role {
        if !is_role_arn(arn) {
            return Err(ConfigError::env(
                "DATABASE_ACCOUNT_IAM_ROLE",
                format!("is {arn:?}: expected a role ARN, arn:aws:iam::ACCOUNT:role/NAME"),
            ));
        }
    }
    let secret_arn = get("DB_SECRET_ARN");
    if let Some(arn) = &secret_arn {
        if secret_arn_region(arn).is_err() {
            return Err(ConfigError::env(
                "DB_SECRET_ARN",
                format!("is {arn:?}: expected a secret ARN, arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME"),
            ));
        }
    }
    let ca_bundle = get("DB_CA_BUNDLE")
        .map(|path| {
            CaBundle::from_pem_file(&path)
                .map_err(|e| ConfigError::env("DB_CA_BUNDLE", format!("is {path:?}: {e}")))
        })
        .transpose()?;

    let config = Config::new()
        .set_hostname(hostname)
        .set_port(number("DB_PORT", 1..=65535)?.map(|p| p as u16))
        .set_user(get("DB_USERNAME"))
        .set_database(get("DBNAME"))
        .set_assume_role(role)
        .set_external_id(get("EXTERNAL_ID"))
        .set_connect_address(get("DB_CONNECT_HOST"))
        .set_ca_bundle(ca_bundle)
        .set_connect_timeout(
            number("DB_CONNECT_TIMEOUT_SECONDS", 1..=300)?.map(Duration::from_secs),
        )
        .set_application_name(get("DB_APPLICATION_NAME"))
        .set_secret_arn(secret_arn)
        .set_password_parameter(get("DB_PASSWORD_PARAMETER"));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn every_variable_names_a_distinct_setting() {
        let mut settings: Vec<_> = VARIABLES.iter().map(|v| v.setting).collect();
        settings.sort_unstable();
        settings.dedup();
        assert_eq!(settings.len(), VARIABLES.len());
        assert_eq!(variable_for("user"), Some("DB_USERNAME"));
    }

    #[test]
    fn malformed_values_name_the_variable_and_what_is_expected() {
        let err = config_from(lookup(&[("DB_PORT", "70000")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable DB_PORT is \"70000\": expected a whole number from 1 to 65535"
        );
        let err = config_from(lookup(&[("DATABASE_ACCOUNT_IAM_ROLE", "proxy-role")])).unwrap_err();
        assert!(err.to_string().starts_with(
            "environment variable DATABASE_ACCOUNT_IAM_ROLE is \"proxy-role\": expected a role ARN"
        ));
        let err =
            config_from(lookup(&[("RDS_PROXY_APPLICATION_ENDPOINT", "https://x")])).unwrap_err();
        assert!(err.to_string().contains("bare endpoint name"), "{err}");
        let err = config_from(lookup(&[("DB_SECRET_ARN", "orders-secret")])).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "environment variable DB_SECRET_ARN is \"orders-secret\": expected a secret ARN"
            ),
            "{err}"
        );
        let err = config_from(lookup(&[("DB_CA_BUNDLE", "/nonexistent/ca.pem")])).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "environment variable DB_CA_BUNDLE is \"/nonexistent/ca.pem\": CA bundle"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_required_variable_is_named_at_connector() {
        let config = config_from(lookup(&[("DB_USERNAME", "app"), ("DB_PORT", " ")])).unwrap();
        let err = config.connector().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "config: missing setting `hostname`: set it, or environment variable RDS_PROXY_APPLICATION_ENDPOINT for Config::from_env"
        );
    }
}
