//! The connection-test Lambda: proves the cross-account path to the database works, or says
//! which stage broke and why (the contract is in `ARCHITECTURE.md`).
//!
//! - [`config_from_lookup`] reads and validates the environment once, at init, with the
//!   library's mapping ([`Config::from_env`]); a missing or malformed variable names itself.
//!   With `CONFIG_PARAMETER_PATH`, the settings the environment leaves unset are read from
//!   Parameter Store at init ([`Config::from_parameters_with`]).
//! - `DB_SECRET_ARN` (a Secrets Manager secret, read with the assumed role) or
//!   `DB_PASSWORD_PARAMETER` (a SecureString, read with the function's role) make it log in
//!   with that password instead of an IAM token; the stage is then `secret` instead of
//!   `token`, and its failures are `SecretFailed` or `ParameterFailed`.
//! - [`Function::invoke`] runs the library's staged check on a fresh connection. Credentials
//!   from `AssumeRole` are kept in the [`rds_iam_auth::Connector`] across warm invocations.
//! - Success is the exact response of the reference sample ([`SUCCESS_RESPONSE`]); failure is
//!   a function error ([`Failure`]) whose `errorType` names the stage (`AssumeRoleFailed`,
//!   `TlsFailed`, `AuthenticationFailed`, ...) and whose `errorMessage` gives cause and hint.

#![warn(missing_docs)]

pub mod logs;

use std::time::{Duration, SystemTime};

use lambda_runtime::Diagnostic;
use rds_iam_auth::env::CONFIG_PARAMETER_PATH;
use rds_iam_auth::{Config, ConfigError, Connector, Error, PasswordSource, Stage};
use serde_json::value::RawValue;

/// How long before the invocation's deadline the check must have ended, so that a hang
/// becomes a stage error (`TcpConnectFailed: timed out after ...`) in the function's answer
/// instead of Lambda's `Task timed out`.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// The success answer, byte for byte as the reference (Python) sample printed it.
pub const SUCCESS_RESPONSE: &str = r#"{"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "Database connection was successful!"}"#;

/// The variables this function cannot run without when it signs IAM tokens and reads no
/// settings from Parameter Store. The library's mapping
/// ([`rds_iam_auth::env::VARIABLES`]) reads them and the optional ones (`DB_PORT`,
/// `EXTERNAL_ID`, `DB_CA_BUNDLE`, `DB_CONNECT_HOST`, `DB_CONNECT_TIMEOUT_SECONDS`, ...).
pub const REQUIRED_VARIABLES: &[&str] = &[
    "DATABASE_ACCOUNT_IAM_ROLE",
    "RDS_PROXY_APPLICATION_ENDPOINT",
    "DB_USERNAME",
    "DBNAME",
];

/// Who the function is, to the database (`pg_stat_activity`) and to the database account
/// (CloudTrail's role session name).
pub const APPLICATION_NAME: &str = "connectiontest-lambda";

/// The function's configuration from its environment, read with `lookup` (`std::env::var`
/// in the function, a map in tests): the library's mapping ([`Config::from_lookup`]), with
/// the function's required variables and its names.
///
/// With a password source (`DB_SECRET_ARN`, `DB_PASSWORD_PARAMETER`) or
/// `CONFIG_PARAMETER_PATH`, [`REQUIRED_VARIABLES`] are not required here: the secret or the
/// parameters may hold them, and the connector names whatever is still missing.
pub fn config_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    settings_from_lookup(lookup).map(with_function_defaults)
}

/// The environment's settings, the required variables checked, without the function's
/// defaults (applied last, so that Parameter Store's settings can fill what is unset).
fn settings_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let set = |name: &str| lookup(name).is_some_and(|v| !v.trim().is_empty());
    let iam_only = ![
        "DB_SECRET_ARN",
        "DB_PASSWORD_PARAMETER",
        CONFIG_PARAMETER_PATH,
    ]
    .into_iter()
    .any(set);
    if iam_only {
        for &name in REQUIRED_VARIABLES {
            match lookup(name) {
                None => return Err(ConfigError::env(name, "is not set")),
                Some(v) if v.trim().is_empty() => return Err(ConfigError::env(name, "is empty")),
                Some(_) => {}
            }
        }
    }
    Config::from_lookup(lookup)
}

/// The function's own names, where the settings give none.
fn with_function_defaults(config: Config) -> Config {
    let config = match config.get_role_session_name() {
        Some(_) => config,
        None => config.role_session_name(APPLICATION_NAME),
    };
    match config.get_application_name() {
        Some(_) => config,
        None => config.application_name(APPLICATION_NAME),
    }
}

/// The AWS SDK's configuration, loaded as the library loads it, but with an HTTPS client
/// (for STS) that trusts the Mozilla root certificates compiled into the function instead
/// of the system's trust store.
///
/// The SDK's default client reads and decodes the system's CA bundle before its first
/// request: 3 to 7 ms of a cold start here (145 certificates), all of it on the path to
/// `AssumeRole`, which cannot be sent before. Lambda's image holds the same Mozilla set in
/// its bundle, so the trust is the same; decoding the compiled-in certificates costs about
/// 0.6 ms. The library uses the same set (`webpki-roots`) for its PostgreSQL TLS.
pub async fn sdk_config() -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls;
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    let trust = tls::TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(mozilla_roots_pem());
    let loader = match tls::TlsContext::builder().with_trust_store(trust).build() {
        Ok(context) => loader.http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .tls_context(context)
                .build_https(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "the SDK's default HTTPS client is used");
            loader
        }
    };
    loader.load().await
}

/// The Mozilla root certificates of `webpki-root-certs`, as PEM (the form the SDK takes).
fn mozilla_roots_pem() -> Vec<u8> {
    use base64::Engine;
    let mut pem = Vec::with_capacity(webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() * 2048);
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in encoded.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

/// A failed invocation: becomes the function error the caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `errorType`: the stage, e.g. `AssumeRoleFailed`, `ConfigurationError`.
    pub error_type: String,
    /// `errorMessage`: cause, then the hint.
    pub error_message: String,
}

impl Failure {
    /// The failure of `err`; `source` is the connector's password source, which names the
    /// secret stage's failures (`SecretFailed`, or `ParameterFailed` for a parameter).
    fn from_error(err: &Error, source: Option<&PasswordSource>) -> Self {
        let mut message = err.cause();
        if let Some(hint) = err.hint() {
            message.push_str(". Hint: ");
            message.push_str(hint);
        }
        let error_type = match (err.stage(), source) {
            (Stage::Secret, Some(PasswordSource::Parameter { .. })) => {
                Stage::Parameters.failure_type()
            }
            (stage, _) => stage.failure_type(),
        };
        Failure {
            error_type: error_type.to_owned(),
            error_message: message,
        }
    }

    fn configuration(err: &ConfigError) -> Self {
        Failure {
            error_type: Stage::Config.failure_type().to_owned(),
            error_message: format!("{err} (fix the function's configuration and redeploy)"),
        }
    }
}

impl From<Failure> for Diagnostic {
    fn from(f: Failure) -> Diagnostic {
        Diagnostic {
            error_type: f.error_type,
            error_message: f.error_message,
        }
    }
}

/// The function: its connector when the settings were valid, else the settings error
/// every invocation reports.
pub struct Function {
    connector: Result<Connector, Failure>,
}

impl Function {
    /// Initialises from the process environment (once per cold start), with the AWS SDK's
    /// configuration loaded as the library loads it but over [`sdk_config`]'s HTTPS client.
    ///
    /// With `CONFIG_PARAMETER_PATH`, the settings under that path fill what the environment
    /// leaves unset (read once, here); a failure to read them is what every invocation
    /// reports (`ParameterFailed`).
    pub async fn from_env() -> Self {
        let config = match settings_from_lookup(|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(e) => return Self::new(Err(e)).await,
        };
        let sdk = sdk_config().await;
        let path = std::env::var(CONFIG_PARAMETER_PATH)
            .ok()
            .filter(|p| !p.trim().is_empty());
        let config = match path {
            None => config,
            Some(path) => match Config::from_parameters_with(&sdk, &path).await {
                Ok(stored) => config.fill_unset_from(stored),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the settings from Parameter Store");
                    return Function {
                        connector: Err(Failure::from_error(&e, None)),
                    };
                }
            },
        };
        Self::new(Ok(with_function_defaults(config).sdk_config(sdk))).await
    }

    /// Initialises from a configuration; an error is kept and reported by every invocation.
    pub async fn new(config: Result<Config, ConfigError>) -> Self {
        let connector = match config {
            Err(e) => {
                tracing::error!(error = %e, "invalid configuration");
                Err(Failure::configuration(&e))
            }
            Ok(config) => {
                let source = config.password_source().ok().flatten();
                config.connector().await.map_err(|e| {
                    tracing::error!(error = %e, "invalid configuration");
                    Failure::from_error(&e, source.as_ref())
                })
            }
        };
        Function { connector }
    }

    /// Initialises with a ready library configuration (tests, other entry points).
    pub async fn with_config(config: Config) -> Self {
        let source = config.password_source().ok().flatten();
        Function {
            connector: config
                .connector()
                .await
                .map_err(|e| Failure::from_error(&e, source.as_ref())),
        }
    }

    /// Init work that shortens the first invocation ([`Connector::warm_up`]): fetches the
    /// role's credentials into the cache, seeds the TLS random number generator and loads
    /// the resolver, waiting at most `limit`. The returned future owns what it needs, so it
    /// can be spawned and run while the runtime asks for the first event; the first
    /// invocation then waits only for what is still missing.
    ///
    /// Never fails the function: a failed or unfinished fetch is logged, and the first
    /// invocation runs the normal staged check, which fetches again (or waits for the fetch
    /// still under way) and answers with the stage that failed.
    pub fn warm_up(
        &self,
        limit: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let connector = self.connector.as_ref().ok().cloned();
        async move {
            let Some(connector) = connector else { return };
            let started = tokio::time::Instant::now();
            match connector.warm_up(limit).await {
                Ok(()) => tracing::info!(
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "init: credentials ready"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "init: credentials not ready; the first invocation fetches them"
                ),
            }
        }
    }

    /// The connector (and its credential cache) kept across invocations, when the settings
    /// were valid.
    pub fn connector(&self) -> Option<&Connector> {
        self.connector.as_ref().ok()
    }

    /// One invocation with no deadline of its own: the staged check on a fresh
    /// connection, within the connect timeout.
    pub async fn invoke(&self) -> Result<Box<RawValue>, Failure> {
        self.invoke_within(Duration::MAX).await
    }

    /// One invocation that must answer before `deadline` (the invocation's deadline):
    /// the check gets what is left of it, less [`DEADLINE_MARGIN`].
    ///
    /// A deadline that leaves no time at all is no deadline a real invocation gets (Lambda
    /// gives at least the function's timeout, one second or more): some local runtimes send
    /// zero or a past time. Then the connect timeout alone applies, with a warning.
    pub async fn invoke_before(&self, deadline: SystemTime) -> Result<Box<RawValue>, Failure> {
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(DEADLINE_MARGIN);
        if left.is_zero() {
            let ms = deadline
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            tracing::warn!(
                deadline_ms = ms as u64,
                "the invocation deadline leaves no time: using the connect timeout alone"
            );
            return self.invoke().await;
        }
        self.invoke_within(left).await
    }

    async fn invoke_within(&self, limit: Duration) -> Result<Box<RawValue>, Failure> {
        let connector = self.connector.as_ref().map_err(Clone::clone)?;
        let report = connector.check_within(limit).await;
        match &report.error {
            None => {
                tracing::info!(
                    total_ms = report.total.as_secs_f64() * 1000.0,
                    "Database connection was successful!"
                );
                RawValue::from_string(SUCCESS_RESPONSE.to_owned()).map_err(|e| Failure {
                    error_type: "InternalError".to_owned(),
                    error_message: e.to_string(),
                })
            }
            Some(err) => {
                let failure = Failure::from_error(err, connector.password_source());
                tracing::error!(error_type = %failure.error_type, error = %failure.error_message, total_ms = report.total.as_secs_f64() * 1000.0, "connection test failed");
                Err(failure)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const GOOD: &[(&str, &str)] = &[
        (
            "DATABASE_ACCOUNT_IAM_ROLE",
            "arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role",
        ),
        (
            "RDS_PROXY_APPLICATION_ENDPOINT",
            "ro.endpoint.proxy-abc.us-east-1.rds.amazonaws.com",
        ),
        ("DB_USERNAME", "app_user"),
        ("DBNAME", "example_db"),
    ];

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        GOOD.iter().copied().filter(|(k, _)| *k != name).collect()
    }

    #[test]
    fn the_function_names_itself_unless_told_otherwise() {
        let shown = format!("{:?}", config_from_lookup(env(GOOD)).expect("valid"));
        assert!(
            shown.contains("application_name: Some(\"connectiontest-lambda\")"),
            "{shown}"
        );
        let mut named = GOOD.to_vec();
        named.push(("DB_APPLICATION_NAME", "on-call-probe"));
        let shown = format!("{:?}", config_from_lookup(env(&named)).expect("valid"));
        assert!(
            shown.contains("application_name: Some(\"on-call-probe\")"),
            "{shown}"
        );
    }

    #[test]
    fn each_missing_variable_is_named() {
        for (name, _) in GOOD {
            let err = config_from_lookup(env(&without(name))).expect_err(name);
            assert_eq!(
                err.to_string(),
                format!("environment variable {name} is not set")
            );
        }
    }

    #[test]
    fn malformed_values_are_named_with_what_is_expected() {
        let mut bad = GOOD.to_vec();
        bad.push(("DB_PORT", "70000"));
        let err = config_from_lookup(env(&bad)).expect_err("port");
        assert_eq!(
            err.to_string(),
            "environment variable DB_PORT is \"70000\": expected a whole number from 1 to 65535"
        );

        let mut bad = without("DATABASE_ACCOUNT_IAM_ROLE");
        bad.push(("DATABASE_ACCOUNT_IAM_ROLE", "proxy-role"));
        let err = config_from_lookup(env(&bad)).expect_err("arn");
        assert!(err.to_string().starts_with(
            "environment variable DATABASE_ACCOUNT_IAM_ROLE is \"proxy-role\": expected a role ARN"
        ));

        let mut bad = without("RDS_PROXY_APPLICATION_ENDPOINT");
        bad.push((
            "RDS_PROXY_APPLICATION_ENDPOINT",
            "https://x.rds.amazonaws.com",
        ));
        let err = config_from_lookup(env(&bad)).expect_err("endpoint");
        assert!(
            err.to_string()
                .starts_with("environment variable RDS_PROXY_APPLICATION_ENDPOINT is"),
            "{err}"
        );

        let mut bad = without("DBNAME");
        bad.push(("DBNAME", "  "));
        assert_eq!(
            config_from_lookup(env(&bad))
                .expect_err("empty")
                .to_string(),
            "environment variable DBNAME is empty"
        );
    }

    #[test]
    fn the_sdk_trusts_every_compiled_in_mozilla_root() {
        let pem = mozilla_roots_pem();
        use rustls_pki_types::pem::PemObject;
        let parsed: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .expect("valid PEM");
        assert_eq!(parsed.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(parsed.len() > 100);
        assert_eq!(
            parsed[0].as_ref(),
            webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref()
        );
    }

    #[test]
    fn success_response_is_the_contract() {
        assert_eq!(
            SUCCESS_RESPONSE,
            r#"{"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "Database connection was successful!"}"#
        );
        let v: serde_json::Value = serde_json::from_str(SUCCESS_RESPONSE).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "Database connection was successful!"})
        );
    }

    #[tokio::test]
    async fn a_missing_variable_fails_every_invocation_as_configuration_error() {
        let f = Function::new(config_from_lookup(env(&without("DB_USERNAME")))).await;
        for _ in 0..2 {
            let failure = f.invoke().await.expect_err("config error");
            assert_eq!(failure.error_type, "ConfigurationError");
            assert!(
                failure
                    .error_message
                    .starts_with("environment variable DB_USERNAME is not set"),
                "{}",
                failure.error_message
            );
        }
    }

    #[tokio::test]
    async fn an_unreadable_ca_bundle_is_a_configuration_error() {
        let mut vars = GOOD.to_vec();
        vars.push(("DB_CA_BUNDLE", "/nonexistent/ca.pem"));
        let f = Function::new(config_from_lookup(env(&vars))).await;
        let failure = f.invoke().await.expect_err("config error");
        assert_eq!(failure.error_type, "ConfigurationError");
        assert!(
            failure.error_message.contains("DB_CA_BUNDLE"),
            "{}",
            failure.error_message
        );
    }
}
