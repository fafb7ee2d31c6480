//! The local stack and a configuration for it, shared by the end-to-end test files.
#![allow(dead_code)] // each test file uses a part

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use rds_iam_auth::{CaBundle, Config};
use rds_proxy_emulator::{Endpoint, LocalStack, StackConfig};

pub async fn stack() -> LocalStack {
    stack_with(|_| {}).await
}

/// A stack whose demo configuration `edit` changed first.
pub async fn stack_with(edit: impl FnOnce(&mut StackConfig)) -> LocalStack {
    let mut config = StackConfig::demo();
    edit(&mut config);
    LocalStack::start(config).await.expect("local stack starts")
}

/// The SDK configuration of the application (or of `principal`), pointed at the STS stand-in.
pub async fn sdk_config(stack: &LocalStack, principal: Option<&str>) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(stack.region().to_owned()))
        .endpoint_url(stack.sts_endpoint_url())
        .credentials_provider(keys(stack, principal))
        .load()
        .await
}

/// The long-term keys of the application's principal (or of `principal`).
fn keys(stack: &LocalStack, principal: Option<&str>) -> Credentials {
    let (akid, secret) = match principal {
        Some(arn) => stack.principal_credentials(arn).expect("known principal"),
        None => stack.app_credentials(),
    };
    Credentials::from_keys(akid, secret, None)
}

pub fn ro(stack: &LocalStack) -> &Endpoint {
    stack.endpoint("READ_ONLY").expect("READ_ONLY endpoint")
}

/// The configuration the Lambda builds from `stack.env`.
pub async fn config(stack: &LocalStack, endpoint: &Endpoint) -> Config {
    config_without_ca(stack, endpoint)
        .await
        .ca_bundle(CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("stack CA"))
}

/// The same, trusting only the built-in roots (which do not hold the stack's CA).
pub async fn config_without_ca(stack: &LocalStack, endpoint: &Endpoint) -> Config {
    Config::new()
        .hostname(&endpoint.hostname)
        .port(endpoint.port)
        .user(stack.db_user())
        .database(stack.db_name())
        .assume_role(stack.role_arn())
        .external_id(stack.external_id())
        .connect_address(endpoint.listen.to_string())
        .connect_timeout(Duration::from_secs(20))
        .sdk_config(sdk_config(stack, None).await)
}

/// A connector for `endpoint` with [`config`]'s settings.
pub async fn connector_for(stack: &LocalStack, endpoint: &Endpoint) -> rds_iam_auth::Connector {
    config(stack, endpoint)
        .await
        .connector()
        .await
        .expect("connector")
}

/// Each stand-in's endpoint URL, as the SDK's per-service `AWS_ENDPOINT_URL_*` variables
/// give them, but without touching the process environment (tests run side by side).
#[derive(Debug)]
struct StandIns {
    sts: String,
    secrets_manager: String,
    ssm: String,
}

impl aws_types::service_config::LoadServiceConfig for StandIns {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        if key.profile() != "endpoint_url" {
            return None;
        }
        match key.service_id() {
            "STS" => Some(self.sts.clone()),
            "Secrets Manager" => Some(self.secrets_manager.clone()),
            "SSM" => Some(self.ssm.clone()),
            _ => None,
        }
    }
}

/// The SDK configuration of the application (or of `principal`), with STS, Secrets
/// Manager and Parameter Store each at its stand-in.
pub async fn sdk_config_all(stack: &LocalStack, principal: Option<&str>) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(stack.region().to_owned()))
        .credentials_provider(keys(stack, principal))
        .load()
        .await
        .into_builder()
        .service_config(StandIns {
            sts: stack.sts_endpoint_url(),
            secrets_manager: stack.secrets_endpoint_url(),
            ssm: stack.ssm_endpoint_url(),
        })
        .build()
}

/// The password user's configuration: the secret (read with the database account's role)
/// fills endpoint, port, user and database; the dial address and the stack's CA are given.
pub async fn secret_config(stack: &LocalStack) -> Config {
    Config::new()
        .secret_arn(stack.secret_arn().expect("the stack seeds a secret"))
        .assume_role(stack.role_arn())
        .external_id(stack.external_id())
        .connect_address(stack.app_endpoint().listen.to_string())
        .ca_bundle(CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("stack CA"))
        .connect_timeout(Duration::from_secs(20))
        .sdk_config(sdk_config_all(stack, None).await)
}
