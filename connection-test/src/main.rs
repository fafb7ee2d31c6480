//! Lambda entry point (`bootstrap`): settings, clients and credentials at init, the staged
//! check on every invocation. See the library part of this crate for the contract.

use std::time::{Duration, SystemTime};

use connection_test::Function;
use lambda_runtime::{service_fn, LambdaEvent};
use tracing::Instrument;

/// How long init work may take before it is left to the first invocation (which then
/// waits for the credential fetch still under way, or fetches again if it failed).
const WARM_UP_LIMIT: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    // JSON logs when AWS_LAMBDA_LOG_FORMAT=JSON, level from AWS_LAMBDA_LOG_LEVEL / RUST_LOG.
    connection_test::logs::init();
    let function = Function::from_env().await;

    // Init work: the role's credentials (AssumeRole), the TLS random number generator, the
    // resolver. On an on-demand cold start the event is already waiting, so this runs while
    // the runtime fetches it, and the first invocation's check joins the credential fetch
    // while it opens its connection. An environment initialised ahead of its invocations
    // (provisioned concurrency) finishes it here, before it is frozen.
    let warm_up = tokio::spawn(function.warm_up(WARM_UP_LIMIT));
    // Let it send its first request (the STS connection is opened) before the runtime
    // client starts.
    tokio::task::yield_now().await;
    let on_demand = std::env::var("AWS_LAMBDA_INITIALIZATION_TYPE")
        .map_or(true, |kind| kind.is_empty() || kind == "on-demand");
    if !on_demand {
        let _ = warm_up.await;
    }

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
