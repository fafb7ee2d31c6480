//! The first bytes a client sends the proxy: SSLRequest, GSSENCRequest, CancelRequest or a
//! StartupMessage, parsed before any authentication.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rds_proxy_emulator::proxy::{parse_startup_packet, Startup};

fuzz_target!(|data: &[u8]| {
    // As read from the wire: the length prefix is the client's; the proxy reads that many
    // bytes. Feed the input both as-is and with a consistent prefix.
    let _ = parse_startup_packet(data);
    let mut packet = ((data.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(data);
    if let Ok(Startup::V3(params)) = parse_startup_packet(&packet) {
        for (k, v) in params {
            assert!(!k.is_empty());
            assert!(!k.contains('\0') && !v.contains('\0'));
        }
    }
});
