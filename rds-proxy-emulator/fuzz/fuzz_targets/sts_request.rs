//! An HTTP request to the STS stand-in: the query string and form body (Query protocol),
//! the SigV4 Authorization header, as the stand-in parses them before and while
//! authenticating the caller.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use rds_proxy_emulator::iam::Iam;
use rds_proxy_emulator::sts::{parse_form, Sts, StsRequest};
use rds_proxy_emulator::StackConfig;

fn sts() -> &'static Sts {
    static STS: OnceLock<Sts> = OnceLock::new();
    STS.get_or_init(|| Sts::new(Arc::new(Iam::new(Arc::new(StackConfig::demo())))))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_form(&text);
    // Split the input into query, Authorization header and body at the first two NULs.
    let mut parts = data.splitn(3, |b| *b == 0);
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let auth = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default().to_vec();
    let request = StsRequest {
        method: "POST".into(),
        path: "/".into(),
        query,
        headers: vec![
            ("host".into(), "127.0.0.1:4566".into()),
            ("x-amz-date".into(), "20261122T000000Z".into()),
            ("authorization".into(), auth),
        ],
        body,
    };
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_779);
    let (status, xml) = sts().handle(&request, now, "fuzz");
    assert!(matches!(status, 200 | 400 | 403 | 413 | 503), "{status}");
    assert!(xml.starts_with('<'));
});
