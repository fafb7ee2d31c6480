//! Lambda entry point (`bootstrap`): settings and credentials cache at init, the staged
//! check on every invocation. See the library part of this crate for the contract.

use std::time::{Duration, SystemTime};

use connection_test::Function;
use lambda_runtime::{service_fn, LambdaEvent};
use tracing::Instrument;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    // JSON logs when AWS_LAMBDA_LOG_FORMAT=JSON, level from AWS_LAMBDA_LOG_LEVEL / RUST_LOG.
    lambda_runtime::tracing::init_default_subscriber();
    let function = Function::from_env().await;
    let function = &function;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let span = tracing::info_span!("invocation", request_id = %event.context.request_id);
            // The invocation's deadline (Lambda-Runtime-Deadline-Ms): the check ends before it.
            let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(event.context.deadline);
            function.invoke_before(deadline).instrument(span).await
        },
    ))
    .await
}
