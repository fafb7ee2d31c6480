//! A Lambda that does nothing but answer the success body: its cold first response under the
//! benchmark's Runtime API emulator is the floor of any Rust `lambda_runtime` function
//! (process start, runtime client, one GET /next and one POST /response).

use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

const SUCCESS_RESPONSE: &str = r#"{"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "Database connection was successful!"}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(|_event: LambdaEvent<Value>| async {
        serde_json::from_str::<Value>(SUCCESS_RESPONSE).map_err(lambda_runtime::Error::from)
    }))
    .await
}
