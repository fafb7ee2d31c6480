//! Token signing: rds-iam-auth against the official `aws-sdk-rds` `AuthTokenGenerator`, on
//! the same inputs (a proxy endpoint, session credentials with a ~600-character token), in
//! the same run. Prints both medians and the ratio at the end.
//!
//! Run from the repository root: `cargo bench --bench token` (or `make bench`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sdk_rds::auth_token::{AuthTokenGenerator, Config as SdkTokenConfig};
use aws_smithy_async::time::{SharedTimeSource, StaticTimeSource};
use aws_types::region::Region;
use aws_types::SdkConfig;
use criterion::{criterion_group, Criterion};
use futures_util::FutureExt;
use rds_iam_auth::token::{sign, TokenParams};

const HOST: &str =
    "application-db-endpoint-read-only.endpoint.proxy-c8bk2x1example.us-east-1.rds.amazonaws.com";
const PORT: u16 = 5432;
const USER: &str = "app_reader";
const REGION: &str = "us-east-1";

fn session_token() -> String {
    // The shape of a real STS session token: ~600 base64 characters with '/', '+' and '='.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::from("IQoJb3JpZ2luX2VjE");
    let mut x: u32 = 0x9e37_79b9;
    while s.len() < 620 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s.push(alphabet[(x % 64) as usize] as char);
    }
    s.push_str("==");
    s
}

fn credentials() -> Credentials {
    Credentials::from_keys(
        "ASIAZEXAMPLEKEY12345",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        Some(session_token()),
    )
}

fn at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_740_800)
}

fn bench(c: &mut Criterion) {
    let creds = credentials();
    let params = TokenParams::new(HOST, PORT, USER, Some(REGION)).expect("valid params");

    let generator = AuthTokenGenerator::new(
        SdkTokenConfig::builder()
            .hostname(HOST)
            .port(u64::from(PORT))
            .username(USER)
            .region(Region::new(REGION))
            .credentials(creds.clone())
            .build()
            .expect("sdk config"),
    );
    let sdk_config = SdkConfig::builder()
        .time_source(SharedTimeSource::new(StaticTimeSource::new(at())))
        .build();
    // The official generator's future is ready at once (static credentials): poll it once.
    let sdk_token = || {
        generator
            .auth_token(&sdk_config)
            .now_or_never()
            .expect("ready future")
            .expect("sdk token")
    };

    // Same inputs, same signed content: the comparison is fair. (The SDK lists
    // X-Amz-Security-Token after the signature; the AWS CLI, and so this crate, before it.)
    let sorted = |t: &str| {
        let mut parts: Vec<String> = t.split('&').map(str::to_owned).collect();
        parts.sort();
        parts
    };
    assert_eq!(
        sorted(sign(&params, &creds, at()).as_str()),
        sorted(sdk_token().as_str())
    );

    let mut group = c.benchmark_group("token");
    group.bench_function("rds-iam-auth", |b| b.iter(|| sign(&params, &creds, at())));
    group.bench_function("aws-sdk-rds", |b| b.iter(sdk_token));
    group.finish();
}

criterion_group!(benches, bench);

/// The median criterion wrote for `function` during this run (`since`): none in `--test`
/// mode, which measures nothing, and an earlier run's file is not this run's figure.
fn median_ns(dir: &Path, function: &str, since: SystemTime) -> Option<f64> {
    let path = dir
        .join("token")
        .join(function)
        .join("new")
        .join("estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn main() {
    let started = SystemTime::now();
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    // Criterion writes to <target>/criterion; report the ratio of this run's medians.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("criterion");
    match (
        median_ns(&dir, "rds-iam-auth", started),
        median_ns(&dir, "aws-sdk-rds", started),
    ) {
        (Some(ours), Some(sdk)) => println!(
            "\ntoken summary: rds-iam-auth {:.2} us, aws-sdk-rds {:.2} us per token: {:.1}x faster",
            ours / 1000.0,
            sdk / 1000.0,
            sdk / ours
        ),
        _ => println!(
            "\ntoken summary: no estimates from this run under {} (none are written in --test mode)",
            dir.display()
        ),
    }
}
