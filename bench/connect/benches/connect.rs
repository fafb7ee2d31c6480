//! Connect latency and pool throughput: this crate against what a user would otherwise
//! write given a token (tokio-postgres + tokio-postgres-rustls; deadpool-postgres), through
//! the same RDS Proxy stand-in of the local stack, in the same run. Prints medians, rates
//! and ratios.
//!
//! Run from the repository root: `make bench-connect` (or `cargo bench --bench connect`).
//! `CONNECTS=300 POOL_SECONDS=5` set the sizes.

use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use rds_iam_auth::{CaBundle, Config, Connector};
use rds_proxy_emulator::{LocalStack, StackConfig};
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a whole number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The rival's TLS: the same roots (the stack's CA), aws-lc-rs, verified against the
/// endpoint name.
fn rival_tls(stack: &LocalStack) -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(stack.ca_pem().as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::aws_lc_rs::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

/// A pool to run `SELECT 1` on: take a client, query, give it back.
trait SelectOne: Send + Sync + 'static {
    fn select_one(&self) -> impl std::future::Future<Output = ()> + Send;
}

impl SelectOne for deadpool_postgres::Pool {
    async fn select_one(&self) {
        let client = self.get().await.expect("pooled");
        client.simple_query("SELECT 1").await.expect("query");
    }
}

/// 32 tasks running `SELECT 1` through `pool` for `seconds`: how many queries completed.
async fn saturate<P: SelectOne + Clone>(pool: impl Fn() -> P, seconds: u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let pool = pool();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    pool.select_one().await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("join");
    }
    total
}

#[tokio::main]
async fn main() {
    let connects = env_number("CONNECTS", 300) as usize;
    let pool_seconds = env_number("POOL_SECONDS", 5);

    let stack = LocalStack::start(StackConfig::demo())
        .await
        .expect("local stack");
    let ep = stack
        .endpoint("READ_ONLY")
        .expect("READ_ONLY endpoint")
        .clone();
    let (akid, secret) = stack.app_credentials();
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(stack.region().to_owned()))
        .endpoint_url(stack.sts_endpoint_url())
        .credentials_provider(Credentials::from_keys(akid, secret, None))
        .load()
        .await;
    let connector: Connector = Config::new()
        .hostname(&ep.hostname)
        .port(ep.port)
        .user(stack.db_user())
        .database(stack.db_name())
        .assume_role(stack.role_arn())
        .external_id(stack.external_id())
        .connect_address(ep.listen.to_string())
        .ca_bundle(CaBundle::from_pem(stack.ca_pem().as_bytes()).expect("CA"))
        .sdk_config(sdk)
        .connector()
        .await
        .expect("connector");

    // The rival gets a token signed once, up front: it does no credentials work at all.
    let token = connector.token().await.expect("token");
    let mut rival = tokio_postgres::Config::new();
    rival
        .host(&ep.hostname)
        .hostaddr(ep.listen.ip())
        .port(ep.listen.port())
        .user(stack.db_user())
        .dbname(stack.db_name())
        .password(token.as_str())
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = rival_tls(&stack);

    // Warm both paths (credentials cached, TLS session state, the stand-in's backends).
    for _ in 0..10 {
        drop(connector.connect().await.expect("connect"));
        let (client, conn) = rival.connect(tls.clone()).await.expect("rival connect");
        tokio::spawn(conn);
        drop(client);
    }

    // Connect latency, alternating so drift hits both alike, and in ABBA order: whichever
    // runs second in a pair meets the stand-in still closing the first one's session (a
    // backend exiting), so a fixed order would bias the figure by a few percent.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..connects {
        for ours_turn in if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            let t = Instant::now();
            if ours_turn {
                let client = connector.connect().await.expect("connect");
                ours.push(t.elapsed());
                drop(client);
            } else {
                let (client, conn) = rival.connect(tls.clone()).await.expect("rival connect");
                theirs.push(t.elapsed());
                tokio::spawn(conn);
                drop(client);
            }
        }
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!(
        "connect (warm credentials), median of {connects}: rds-iam-auth {:.2} ms, tokio-postgres-rustls with a precomputed token {:.2} ms: overhead {:+.1}%",
        ms(ours),
        ms(theirs),
        (ours.as_secs_f64() / theirs.as_secs_f64() - 1.0) * 100.0
    );

    // Pool throughput: 32 tasks, SELECT 1, 8 connections, verified recycling on both.
    // Both are deadpool-postgres pools: ours opens connections through the connector (and
    // adds the recycle timeout and maximum lifetime hook), the rival with a fixed token.
    let verified = deadpool_postgres::ManagerConfig {
        recycling_method: deadpool_postgres::RecyclingMethod::Verified,
    };
    let ours_pool = rds_iam_auth::pool::builder(&connector, verified)
        .max_size(8)
        .build()
        .expect("pool");
    let rival_pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::from_config(
        rival.clone(),
        tls.clone(),
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Verified,
        },
    ))
    .max_size(8)
    .build()
    .expect("rival pool");

    // Two rounds each, alternating.
    let (mut q_ours, mut q_theirs) = (0, 0);
    for _ in 0..2 {
        let pool = ours_pool.clone();
        q_ours += saturate(move || pool.clone(), pool_seconds).await;
        let pool = rival_pool.clone();
        q_theirs += saturate(move || pool.clone(), pool_seconds).await;
    }
    let seconds = (2 * pool_seconds) as f64;
    let (r_ours, r_theirs) = (q_ours as f64 / seconds, q_theirs as f64 / seconds);
    println!(
        "pool throughput (32 tasks, 8 connections, SELECT 1): rds-iam-auth {r_ours:.0}/s, deadpool-postgres with a precomputed token {r_theirs:.0}/s: {:.2}x",
        r_ours / r_theirs
    );
    stack.shutdown().await;
}
