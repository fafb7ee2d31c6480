//! What the proxy reads from a logged-in client: the message stream it watches for
//! pinning conditions (message framing, Query/Parse text, the SQL tokenizer), split at
//! arbitrary points.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rds_proxy_emulator::pinning::{pinning_reason_bytes, PinWatch};

fuzz_target!(|data: &[u8]| {
    let _ = pinning_reason_bytes(data);
    // The first byte chooses how the stream is cut into reads.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut).max(1);
    let mut whole = PinWatch::new();
    let at_once = whole.feed(stream);
    let mut split = PinWatch::new();
    let mut found = None;
    for part in stream.chunks(chunk) {
        if let Some(r) = split.feed(part) {
            found = Some(r);
            break;
        }
    }
    // The verdict cannot depend on how the bytes arrived.
    assert_eq!(at_once, found);
});
