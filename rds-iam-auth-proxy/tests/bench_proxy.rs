//! The timing and memory part of `make bench-proxy` (bench/proxy/run), which starts a stack
//! and the proxy, then runs this with their environment. Ignored by the test run: it
//! needs both running and takes its settings from the environment:
//!
//! - the stack's `stack.env` (the variables the Lambda and the proxy read): the library's
//!   own connects are built from it, as the proxy builds its target;
//! - `PROXY_BENCH_PORT`, `PROXY_BENCH_PID`: the proxy's TCP listener and process;
//! - `CONNECTS` (200): connects timed on each side; `MEM_STEPS` ("100 1000"): idle
//!   connections held when the proxy's RSS is read.
//!
//! It prints `bench-proxy key=value` lines for the script's table.

use std::time::{Duration, Instant};

use rds_iam_auth::Config;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number(name: &str, default: &str) -> usize {
    let text = setting(name, default);
    text.parse()
        .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The proxy's resident set, from /proc (KiB).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e} (is the proxy running?)"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// What a refused session says: the server's own message when there is one (the error's
/// Display alone says "db error").
fn why(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// A session through the proxy, as a client without TLS or password opens it.
async fn through_proxy(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by bench/proxy/run (make bench-proxy) against a running stack and proxy"]
async fn measure() {
    let port: u16 = number("PROXY_BENCH_PORT", "0") as u16;
    let pid = number("PROXY_BENCH_PID", "0") as u32;
    assert!(
        port != 0 && pid != 0,
        "PROXY_BENCH_PORT and PROXY_BENCH_PID must be set: run bench/proxy/run"
    );
    let connects = number("CONNECTS", "200").max(1);
    let steps: Vec<usize> = setting("MEM_STEPS", "100 1000")
        .split_whitespace()
        .map(|s| s.parse().expect("MEM_STEPS: whole numbers"))
        .collect();

    let library = Config::from_env()
        .expect("the stack's environment (source stack.env)")
        .connector()
        .await
        .expect("connector");
    let mut proxy = tokio_postgres::Config::new();
    proxy
        .host("127.0.0.1")
        .port(port)
        .user(std::env::var("DB_USERNAME").expect("DB_USERNAME"))
        .dbname(std::env::var("DBNAME").expect("DBNAME"))
        .ssl_mode(SslMode::Disable)
        .connect_timeout(Duration::from_secs(20));

    // Connect start to the first query's answer. The same work on both sides (cached
    // credentials, a fresh token, TLS, login), plus on the proxy's side the local TCP
    // connection, the startup packet and the relay. Warm both first; then alternate, in
    // ABBA order: the second of a pair meets the stand-in still closing the first's
    // session, which would otherwise bias one side.
    for _ in 0..10 {
        let c = library.connect().await.expect("library connect");
        c.simple_query("SELECT 1").await.expect("query");
        let c = through_proxy(&proxy)
            .await
            .expect("connect through the proxy");
        c.simple_query("SELECT 1").await.expect("query");
    }
    let (mut ours, mut lib) = (Vec::with_capacity(connects), Vec::with_capacity(connects));
    for i in 0..connects {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for via_proxy in order {
            let t = Instant::now();
            if via_proxy {
                let c = through_proxy(&proxy)
                    .await
                    .expect("connect through the proxy");
                c.simple_query("SELECT 1").await.expect("query");
                ours.push(t.elapsed());
            } else {
                let c = library.connect().await.expect("library connect");
                c.simple_query("SELECT 1").await.expect("query");
                lib.push(t.elapsed());
            }
        }
    }
    let (ours, lib) = (median(ours), median(lib));
    println!("bench-proxy connects={connects}");
    println!("bench-proxy connect_proxy_us={}", ours.as_micros());
    println!("bench-proxy connect_library_us={}", lib.as_micros());

    // Idle sessions, each logged in and answered once, then held.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kib(pid);
    println!("bench-proxy rss_baseline_kib={baseline}");
    let mut held = Vec::new();
    let mut refused = None;
    'steps: for &step in &steps {
        while held.len() < step {
            match through_proxy(&proxy).await {
                Ok(c) => match c.simple_query("SELECT 1").await {
                    Ok(_) => held.push(c),
                    Err(e) => {
                        refused = Some(why(&e));
                        break;
                    }
                },
                Err(e) => {
                    refused = Some(why(&e));
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = held.len();
        println!(
            "bench-proxy rss_step={step} held={n} rss_kib={}",
            rss_kib(pid)
        );
        if let Some(why) = &refused {
            println!(
                "bench-proxy refused_at={} why={}",
                n + 1,
                why.replace('\n', " ")
            );
            break 'steps;
        }
    }
    drop(held);
}
