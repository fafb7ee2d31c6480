//! Faults a long-running service meets, injected at the local stack: credentials that
//! expire in seconds, STS hung or refusing, a hundred connects at once. Each test checks
//! what the service sees (connects, their errors, their latency) and what STS sees.

use std::time::{Duration, Instant};

use rds_iam_auth::{Connector, Stage};
use rds_proxy_emulator::control::StsFault;
use rds_proxy_emulator::LocalStack;

mod common;
use common::{config, ro, stack_with};

async fn connector(stack: &LocalStack) -> Connector {
    config(stack, ro(stack))
        .await
        .connect_timeout(Duration::from_secs(30))
        .connector()
        .await
        .expect("connector")
}

/// Connects and runs one query; the error's stage and text on failure.
async fn probe(connector: &Connector) -> Result<(), rds_iam_auth::Error> {
    let client = connector.connect().await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(rds_iam_auth::Error::from_query)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_first_connects_make_one_assume_role_call() {
    let stack = stack_with(|c| c.proxy.max_client_connections = 200).await;
    // A hundred logins at once queue up in the stand-in: give them time.
    let connector = connector(&stack).await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(async move { probe(&connector).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("join").expect("connects");
    }
    let counters = stack.counters();
    assert_eq!(counters.assume_role_calls, 1, "{counters:?}");
    assert_eq!(counters.logins_accepted, 100, "{counters:?}");
}

#[tokio::test]
async fn a_hung_sts_costs_no_connect_anything_while_credentials_are_valid() {
    // 8 s credentials (7 to 8 s once the stand-in drops the fraction of a second): a
    // refresh starts at half their life and hangs; they stay usable until a sixth of
    // their life is left, at 5.8 s at the earliest.
    let stack = stack_with(|c| c.sts.credentials_lifetime_seconds = Some(8)).await;
    let connector = connector(&stack).await;
    let issued = Instant::now();
    probe(&connector).await.expect("first connect");
    stack.set_sts_fault(StsFault::Hang);
    let mut slowest = Duration::ZERO;
    let mut connects = 0;
    while issued.elapsed() < Duration::from_millis(5500) {
        let t = Instant::now();
        probe(&connector)
            .await
            .expect("cached credentials are still valid");
        slowest = slowest.max(t.elapsed());
        connects += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counters = stack.counters();
    assert_eq!(
        counters.assume_role_calls, 2,
        "one refresh, hung: {counters:?}"
    );
    assert_eq!(counters.assume_role_succeeded, 1, "{counters:?}");
    assert!(connects >= 4, "{connects}");
    // Waiting for the hung refresh would take the whole 30 s connect timeout.
    assert!(
        slowest < Duration::from_secs(3),
        "no connect waited for the hung refresh: slowest {slowest:?}"
    );
}

#[tokio::test]
async fn an_sts_outage_fails_connects_only_at_expiry_costs_few_calls_and_heals_quickly() {
    // 8 s credentials: refreshing starts at 4 s; they are used until 8 s less a sixth.
    let stack = stack_with(|c| c.sts.credentials_lifetime_seconds = Some(8)).await;
    let connector = connector(&stack).await;
    let issued = Instant::now();
    probe(&connector).await.expect("first connect");
    let expiry = connector
        .credentials()
        .credentials()
        .await
        .expect("cached")
        .expiry()
        .expect("role credentials expire");
    stack.set_sts_fault(StsFault::Refuse);

    // 14 s of connects every 100 ms while STS answers 503.
    let mut first_failure = None;
    let mut failures = Vec::new();
    while issued.elapsed() < Duration::from_secs(14) {
        let attempt = std::time::SystemTime::now();
        match probe(&connector).await {
            Ok(()) => assert!(
                first_failure.is_none(),
                "a connect worked again after failing during the outage"
            ),
            Err(err) => {
                first_failure.get_or_insert(attempt);
                failures.push(err);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_failure = first_failure.expect("connects fail once the credentials expire");
    // Credentials are used until a sixth of their life is left (1.3 s of 8 s), no earlier.
    let before_expiry = expiry
        .duration_since(first_failure)
        .unwrap_or(Duration::ZERO);
    assert!(
        before_expiry <= Duration::from_millis(1500),
        "a connect failed {before_expiry:?} before the credentials expired"
    );
    for err in &failures {
        assert_eq!(err.stage(), Stage::AssumeRole, "{err}");
        assert!(err.to_string().contains("ServiceUnavailable"), "{err}");
    }
    let calls = stack.counters().assume_role_calls - 1;
    // The SDK's standard retry makes up to 3 HTTP calls per refresh; refreshes back off.
    let per_second = calls as f64 / 10.0;
    assert!(
        per_second <= 1.5,
        "{calls} AssumeRole calls in the 10 s since refreshing started, for {} failed connects",
        failures.len()
    );

    // STS answers again: connects work within 10 s.
    stack.clear_faults();
    let back = Instant::now();
    while probe(&connector).await.is_err() {
        assert!(back.elapsed() < Duration::from_secs(10), "not recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "outage: first failure {before_expiry:?} before expiry, {calls} STS calls, {} failed connects, recovered {:?} after STS returned",
        failures.len(),
        back.elapsed()
    );
}

#[tokio::test]
async fn a_refused_tcp_connect_is_reported_at_once_while_sts_hangs() {
    let stack = stack_with(|_| {}).await;
    stack.set_sts_fault(StsFault::Hang);
    // A port nobody listens on: connects are refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let connector = config(&stack, ro(&stack))
        .await
        .connect_address(closed.to_string())
        .connect_timeout(Duration::from_secs(20))
        .connector()
        .await
        .expect("connector");
    let started = Instant::now();
    let report = connector.check().await;
    let took = started.elapsed();
    let err = report.error.as_ref().expect("fails");
    assert_eq!(err.stage(), Stage::Tcp, "{report}");
    assert!(
        took < Duration::from_secs(5),
        "not held up by the hung STS call: {took:?}\n{report}"
    );
    let assume = report
        .stages
        .iter()
        .find(|s| s.stage == Stage::AssumeRole)
        .expect("the unfinished stage is listed");
    assert_eq!(assume.outcome, rds_iam_auth::Outcome::Skipped, "{report}");
    assert!(assume.detail.contains("tcp failed first"), "{report}");
    eprintln!("{report}");
}
