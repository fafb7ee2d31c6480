//! The proxy's framing of a logged-in client's stream (`ClientScan`): what decides when a
//! borrowed database connection may go back to its pool, and which prepared statements the
//! client holds. Fed as the relay feeds it, the stream cut into reads of sizes the input
//! chooses; whatever the cut, the scan must see the same messages.
//!
//! Input: `room`, then the read sizes ([`reads::read_sizes`]), then the client's stream.
#![no_main]

mod reads;

use libfuzzer_sys::fuzz_target;
use rds_proxy_emulator::proxy::fuzzing::{ClientEvent, ClientScan, BUFFER};

/// What a scan of a whole stream observed: its events, and the bytes committed in all
/// (where a `Terminate` or a protocol violation stopped it).
///
/// Where a `Pin` is reported is not compared: a statement too large to read pins at its
/// header, and the part of its body already read is committed with it.
#[derive(Debug, PartialEq)]
struct Seen {
    events: Vec<ClientEvent>,
    committed: usize,
}

/// Scans `stream` as the relay does: reads of `sizes` bytes appended to a buffer,
/// `scan(&buf, room)` until it asks for more, the committed bytes dropped. Stops at
/// `Terminate` (nothing after it is read) and at a protocol violation (the session ends).
fn scan_in_reads(stream: &[u8], sizes: &[usize], room: usize) -> (ClientScan, Seen) {
    let mut scan = ClientScan::new();
    let mut seen = Seen {
        events: Vec::new(),
        committed: 0,
    };
    let mut buf: Vec<u8> = Vec::new();
    for read in reads::reads(stream, sizes) {
        buf.extend_from_slice(read);
        loop {
            let (n, event) = scan.scan(&buf, room);
            assert!(n <= buf.len(), "committed {n} of {} bytes", buf.len());
            buf.drain(..n);
            seen.committed += n;
            match event {
                ClientEvent::More => break,
                ClientEvent::Pin(..) => {
                    seen.events.push(event);
                    // A session pins once; after that no body is read again.
                    assert_eq!(seen.events.len(), 1, "{:?}", seen.events);
                }
                ClientEvent::Terminate | ClientEvent::Protocol(_) => {
                    seen.events.push(event);
                    return (scan, seen);
                }
            }
        }
    }
    (scan, seen)
}

/// The scan's state that the session decides with.
#[derive(Debug, PartialEq)]
struct State {
    expected_rfq: u32,
    extended_open: bool,
    at_boundary: bool,
    settled: bool,
    holds_statements: bool,
    replayable: bool,
    replay: Vec<Vec<u8>>,
}

fn state(scan: &ClientScan) -> State {
    let mut replay: Vec<Vec<u8>> = scan.replay().map(<[u8]>::to_vec).collect();
    // The statements are kept by name, in no particular order.
    replay.sort();
    State {
        expected_rfq: scan.expected_rfq,
        extended_open: scan.extended_open,
        at_boundary: scan.at_boundary(),
        settled: scan.settled(),
        holds_statements: scan.holds_statements(),
        replayable: scan.replayable(),
        replay,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((room, rest)) = data.split_first() else {
        return;
    };
    // The relay's buffer, or one small enough that statements overflow it.
    let room = if *room < 0x80 {
        BUFFER
    } else {
        usize::from(*room)
    };
    let Some((sizes, stream)) = reads::read_sizes(rest) else {
        return;
    };

    let (whole, whole_seen) = scan_in_reads(stream, &[stream.len().max(1)], room);
    let (split, split_seen) = scan_in_reads(stream, &sizes, room);
    assert_eq!(
        whole_seen, split_seen,
        "events depend on the reads {sizes:?}"
    );
    let whole_state = state(&whole);
    assert_eq!(
        whole_state,
        state(&split),
        "state depends on the reads {sizes:?}"
    );

    // What is prepared again on another connection is the client's own Parse messages,
    // each whole.
    for m in &whole_state.replay {
        assert_eq!(m.first(), Some(&b'P'), "{m:?}");
        let len = m
            .get(1..5)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
        assert_eq!(len, Some(m.len() - 1), "{m:?}");
    }
    if whole_state.holds_statements && whole_state.replayable {
        assert!(!whole_state.replay.is_empty());
    }
});
