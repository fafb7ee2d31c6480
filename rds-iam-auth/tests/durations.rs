//! Every duration setting takes any value without a panic: `Duration::MAX`, zero, or the
//! largest `connect_timeout` a conninfo string can hold. (Before, adding such a value to
//! the clock overflowed.) Each case runs the connector's real path against a local
//! listener that accepts and hangs up, so the deadline, TCP keepalive and TLS code all run.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use proptest::prelude::*;
use rds_iam_auth::{AssumeRole, Config, Keepalive, Stage};

const HOST: &str = "db.proxy-abc.us-east-1.rds.amazonaws.com";

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::MAX),
        Just(Duration::ZERO),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::from_secs(i64::MAX as u64)),
        (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..120).prop_map(Duration::from_secs),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A listener that accepts every connection and closes it at once.
async fn hang_up_listener() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    addr
}

fn base(address: std::net::SocketAddr) -> Config {
    let sdk = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .build();
    Config::new()
        .hostname(HOST)
        .port(5432)
        .user("app_user")
        .connect_address(address.to_string())
        .sdk_config(sdk)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::from_keys(
            "AKIDDURATIONS",
            "secret",
            None,
        )))
}

/// Runs the staged check and a warm-up; both must end (with an error: nothing speaks
/// PostgreSQL there) without a panic. Settings may instead be refused, naming the setting.
async fn exercise(config: Config, warm_up: Duration) {
    let connector = match config.connector().await {
        Ok(connector) => connector,
        Err(refused) => {
            let text = refused.to_string();
            assert!(
                text.contains("connect_timeout") || text.contains("keepalive"),
                "a refusal names the setting: {text}"
            );
            return;
        }
    };
    connector
        .warm_up(warm_up)
        .await
        .expect("static credentials");
    let report = connector.check().await;
    let error = report.error.expect("nothing speaks PostgreSQL there");
    assert!(
        matches!(
            error.stage(),
            Stage::Tls | Stage::Tcp | Stage::Credentials | Stage::Token | Stage::Dns
        ),
        "{error}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn connect_timeout_keepalive_and_warm_up_take_any_duration(
        timeout in any_duration(),
        idle in any_duration(),
        interval in any_duration(),
        warm_up in any_duration(),
    ) {
        runtime().block_on(async {
            let address = hang_up_listener().await;
            let keepalive = Keepalive::new(idle, interval, 3);
            let config = base(address).connect_timeout(timeout).keepalive(Some(keepalive));
            exercise(config, warm_up).await;
        });
    }

    #[test]
    fn a_conninfo_connect_timeout_of_any_size_is_taken(seconds in prop_oneof![Just(i64::MAX), any::<i64>(), 0i64..100]) {
        let conninfo = format!("host={HOST} port=5432 user=app_user connect_timeout={seconds}");
        let Ok(pg) = conninfo.parse::<tokio_postgres::Config>() else {
            return Ok(()); // tokio-postgres refuses it: nothing of ours runs
        };
        runtime().block_on(async {
            let address = hang_up_listener().await;
            let config = Config::from_pg_config(&pg).expect("taken over");
            let config = config
                .connect_address(address.to_string())
                .sdk_config(SdkConfig::builder()
                    .behavior_version(BehaviorVersion::latest())
                    .region(Region::new("us-east-1"))
                    .build())
                .credentials_provider(SharedCredentialsProvider::new(Credentials::from_keys("AKID", "secret", None)));
            exercise(config, Duration::from_secs(1)).await;
        });
    }

    #[test]
    fn a_role_session_length_out_of_range_is_refused_by_name(duration in any_duration()) {
        let role = AssumeRole::new("arn:aws:iam::222222222222:role/r").expect("role");
        match role.with_duration(duration) {
            Ok(role) => prop_assert!((900..=43_200).contains(&role.duration().as_secs())),
            Err(e) => prop_assert!(e.to_string().contains("role_duration"), "{}", e),
        }
    }
}
