//! The proxy's framing of the database's stream to a client (`ServerScan`): it counts the
//! `ReadyForQuery` messages that settle what the client asked, keeps the last status, and
//! notices an error arriving when nothing is owed. Fed as the relay feeds it, the stream
//! cut into reads of sizes the input chooses; whatever the cut, it must see the same.
//!
//! Input: the `ReadyForQuery` messages owed, flags (1: an extended-protocol batch is open,
//! 2: errors at rest stop the scan), then the read sizes ([`reads::read_sizes`]), then the
//! database's stream.
#![no_main]

mod reads;

use libfuzzer_sys::fuzz_target;
use rds_proxy_emulator::proxy::fuzzing::{ClientScan, ServerScan};

/// Where a scan ended and what it knows then.
#[derive(Debug, PartialEq)]
struct Seen {
    committed: usize,
    /// The stream offset of an error that arrived at rest (the scan stops there).
    error_at_rest: Option<usize>,
    status: u8,
    error_relayed: bool,
    at_boundary: bool,
    expected_rfq: u32,
    settled: bool,
}

/// Scans `stream` as the relay does: reads of `sizes` bytes appended to a buffer, one
/// `scan` per read, the committed bytes dropped; an error at rest ends it (the relay gives
/// the connection up).
fn scan_in_reads(
    stream: &[u8],
    sizes: &[usize],
    mut requests: ClientScan,
    stop_at_rest_errors: bool,
) -> Seen {
    let mut scan = ServerScan::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut committed = 0;
    let mut error_at_rest = None;
    for read in reads::reads(stream, sizes) {
        buf.extend_from_slice(read);
        let (n, stopped) = scan.scan(&buf, &mut requests, stop_at_rest_errors);
        assert!(n <= buf.len(), "committed {n} of {} bytes", buf.len());
        buf.drain(..n);
        committed += n;
        if stopped {
            assert!(stop_at_rest_errors && requests.settled());
            assert_eq!(
                buf.first(),
                Some(&b'E'),
                "stopped elsewhere than at an error"
            );
            error_at_rest = Some(committed);
            break;
        }
    }
    Seen {
        committed,
        error_at_rest,
        status: scan.status,
        error_relayed: scan.error_relayed,
        at_boundary: scan.at_boundary(),
        expected_rfq: requests.expected_rfq,
        settled: requests.settled(),
    }
}

fuzz_target!(|data: &[u8]| {
    let [owed, flags, rest @ ..] = data else {
        return;
    };
    let Some((sizes, stream)) = reads::read_sizes(rest) else {
        return;
    };
    let requests = || {
        let mut r = ClientScan::new();
        r.expected_rfq = u32::from(*owed);
        r.extended_open = flags & 1 != 0;
        r
    };
    let stop_at_rest_errors = flags & 2 != 0;

    let whole = scan_in_reads(
        stream,
        &[stream.len().max(1)],
        requests(),
        stop_at_rest_errors,
    );
    let split = scan_in_reads(stream, &sizes, requests(), stop_at_rest_errors);
    assert_eq!(whole, split, "the scan depends on the reads {sizes:?}");
});
