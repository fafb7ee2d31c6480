//! Init work against the local stack: the role's credentials fetched before the first
//! invocation (one `AssumeRole` for the life of the process), what the first invocation
//! answers when that fetch failed or hangs, and that the second invocation of a process
//! costs no more than the later ones.

use std::time::{Duration, Instant, SystemTime};

use rds_proxy_emulator::{LocalStack, StsFault};

mod common;
use common::{function, stack};

fn assume_role_calls(stack: &LocalStack) -> u64 {
    stack.counters().assume_role_calls
}

#[tokio::test]
async fn credentials_fetched_at_init_serve_every_invocation() {
    let stack = stack().await;
    let f = function(&stack, &[]).await;
    let connector = f.connector().expect("configured").clone();
    connector
        .warm_up(Duration::from_secs(5))
        .await
        .expect("credentials fetched at init");
    assert_eq!(assume_role_calls(&stack), 1);
    for _ in 0..3 {
        f.invoke().await.expect("success");
    }
    assert_eq!(
        assume_role_calls(&stack),
        1,
        "the invocations used the init's credentials"
    );
    assert_eq!(connector.credentials().refresh_count(), 1);
}

#[tokio::test]
async fn the_first_invocation_joins_a_fetch_still_under_way() {
    let stack = stack().await;
    let f = function(&stack, &[]).await;
    // As the Lambda does it: init work spawned and let to send its request, the first event
    // handled at once.
    let warm_up = tokio::spawn(f.warm_up(Duration::from_secs(5)));
    tokio::task::yield_now().await;
    f.invoke().await.expect("success");
    warm_up.await.expect("warm-up task");
    f.invoke().await.expect("success");
    assert_eq!(assume_role_calls(&stack), 1, "one AssumeRole, shared");
}

#[tokio::test]
async fn a_failed_fetch_at_init_lets_the_first_invocation_try_again_and_name_its_stage() {
    let stack = stack().await;
    let f = function(&stack, &[("EXTERNAL_ID", Some("wrong-id"))]).await;
    let connector = f.connector().expect("configured").clone();
    let err = connector
        .warm_up(Duration::from_secs(5))
        .await
        .expect_err("refused");
    assert_eq!(err.stage(), rds_iam_auth::Stage::AssumeRole, "{err}");
    assert_eq!(assume_role_calls(&stack), 1);

    // No backoff inherited from init: the invocation makes its own attempt.
    let failure = f.invoke().await.expect_err("still refused");
    assert_eq!(failure.error_type, "AssumeRoleFailed");
    assert!(
        failure.error_message.contains("AccessDenied"),
        "{}",
        failure.error_message
    );
    assert_eq!(
        assume_role_calls(&stack),
        2,
        "the first invocation called STS itself"
    );
}

#[tokio::test]
async fn a_hung_sts_at_init_is_the_first_invocations_stage_error_before_its_deadline() {
    let stack = stack().await;
    stack.set_sts_fault(StsFault::Hang);
    let f = function(&stack, &[]).await;
    let connector = f.connector().expect("configured").clone();
    let started = Instant::now();
    let err = connector
        .warm_up(Duration::from_millis(300))
        .await
        .expect_err("no answer");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded: {:?}",
        started.elapsed()
    );
    assert_eq!(err.stage(), rds_iam_auth::Stage::AssumeRole, "{err}");

    // The invocation waits for the same fetch, until its own deadline.
    let started = Instant::now();
    let deadline = SystemTime::now() + Duration::from_millis(2500);
    let failure = f.invoke_before(deadline).await.expect_err("still hung");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        failure.error_type, "AssumeRoleFailed",
        "{}",
        failure.error_message
    );
    assert!(
        failure
            .error_message
            .starts_with("assume-role: timed out after"),
        "{}",
        failure.error_message
    );
    assert_eq!(assume_role_calls(&stack), 1, "joined, not a second call");

    // STS answers again: the fetch under way completes and the next invocation works.
    stack.clear_faults();
    f.invoke().await.expect("success once STS answers");
}

/// The second invocation of a process must cost what the later ones cost: nothing may be
/// left over from the first (a refresh in the background, a client built lazily, a stalled
/// socket). Timed against the same process's later invocations, with a generous bound; and
/// no invocation after the first may call STS.
#[tokio::test]
async fn the_second_invocation_is_as_fast_as_the_later_ones() {
    let stack = stack().await;
    let mut excess = Vec::new();
    for _ in 0..3 {
        let f = function(&stack, &[]).await;
        let calls = assume_role_calls(&stack);
        tokio::spawn(f.warm_up(Duration::from_secs(5)));
        f.invoke().await.expect("first invocation");
        let mut times = Vec::new();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let started = Instant::now();
            f.invoke().await.expect("warm invocation");
            times.push(started.elapsed());
        }
        assert_eq!(
            assume_role_calls(&stack),
            calls + 1,
            "one AssumeRole per process"
        );
        let second = times[0];
        let mut later = times[1..].to_vec();
        later.sort();
        excess.push(second.saturating_sub(later[later.len() / 2]));
    }
    excess.sort();
    let median = excess[1];
    assert!(
        median < Duration::from_millis(25),
        "the second invocation took {median:?} longer than the later ones (per process: {excess:?})"
    );
}
