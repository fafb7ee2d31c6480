//! The local stack and the function as deployed against it, shared by the test files.
#![allow(dead_code)] // each test file uses a part

use std::collections::HashMap;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use connection_test::{config_from_lookup, Function};
use rds_proxy_emulator::{LocalStack, StackConfig};

pub async fn stack() -> LocalStack {
    LocalStack::start(StackConfig::demo())
        .await
        .expect("local stack")
}

/// The function as deployed against this stack: its variables from `stack.env()` with
/// `changes` applied (`None` removes one), and the SDK pointed at the STS stand-in.
pub async fn function(stack: &LocalStack, changes: &[(&str, Option<&str>)]) -> Function {
    let mut env: HashMap<String, String> = stack.env().into_iter().collect();
    for (key, value) in changes {
        match value {
            Some(v) => env.insert(key.to_string(), v.to_string()),
            None => env.remove(*key),
        };
    }
    let config = config_from_lookup(|k| env.get(k).cloned()).expect("valid settings");
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(env["AWS_REGION"].clone()))
        .endpoint_url(&env["AWS_ENDPOINT_URL_STS"])
        .credentials_provider(Credentials::from_keys(
            &env["AWS_ACCESS_KEY_ID"],
            &env["AWS_SECRET_ACCESS_KEY"],
            None,
        ))
        .load()
        .await;
    Function::with_config(config.sdk_config(sdk)).await
}
