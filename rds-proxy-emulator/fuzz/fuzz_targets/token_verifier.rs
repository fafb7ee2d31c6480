//! The IAM token a client presents as its password, checked by the proxy's verifier.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rds_proxy_emulator::token::{verify_token, Expected, KnownCredential};
use time::macros::datetime;

fuzz_target!(|data: &[u8]| {
    // The proxy turns the password bytes into text lossily, as here.
    let token = String::from_utf8_lossy(data);
    let expected = Expected {
        hostname: "prod-instance.us-east-1.rds.amazonaws.com",
        port: 3306,
        region: "us-east-1",
        db_user: "someusername",
        now: datetime!(2016-11-07 17:40:00 UTC),
        max_clock_skew: time::Duration::minutes(5),
    };
    let verdict = verify_token(&token, &expected, |akid| {
        (akid == "akid").then(|| KnownCredential {
            secret_access_key: "skid".into(),
            session_token: None,
            expires_at: None,
        })
    });
    if let Ok(v) = verdict {
        // Only a correctly signed token for these inputs can pass.
        assert_eq!(v.access_key_id, "akid");
        assert!(token.contains("X-Amz-Signature="));
    }
});
