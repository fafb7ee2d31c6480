//! TCP relays on 127.0.0.1 that add a one-way delay to everything they carry, in both
//! directions, preserving order: what a client writes reaches the server DELAY later, and the
//! server's answer reaches the client DELAY after that, chunk by chunk.
//!
//! ```text
//! delay-relay sts=127.0.0.1:4566:10 proxy=127.0.0.1:6432:1
//! ```
//!
//! Each `NAME=HOST:PORT:DELAY_MS` starts one relay in front of `HOST:PORT` (the delay may
//! have a fraction); once all listen, one line `NAME 127.0.0.1:PORT` per relay is printed on
//! stdout, then `ready`. Runs until killed.
//!
//! The TCP handshake itself is local (the relay accepts at once), so the relay adds what it
//! would have cost: a client's first bytes are held until one round trip (2 x DELAY) after
//! the connection was accepted, plus the one-way DELAY. Every client here speaks first
//! (HTTP; PostgreSQL's `SSLRequest`), so that is where a real handshake's round trip shows.
//!
//! Plain threads and `thread::sleep` (nanosleep): sub-millisecond timing, where an async
//! runtime's timers round up to whole milliseconds.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Copies `src` to `dst`, each chunk written `delay` after it was read and not before
/// `not_before`, in order; at EOF shuts down `dst`'s write side.
fn pump(mut src: TcpStream, mut dst: TcpStream, delay: Duration, not_before: Instant) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        for (due, data) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if dst.write_all(&data).is_err() {
                return; // the other side is gone: drop the rest
            }
        }
        let _ = dst.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let due = (Instant::now() + delay).max(not_before);
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

fn serve(client: TcpStream, upstream: &str, delay: Duration) {
    let accepted = Instant::now();
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
    }
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || pump(client, server, delay, accepted + 3 * delay));
    pump(server2, client2, delay, accepted);
    let _ = up.join();
}

fn main() {
    let specs: Vec<String> = std::env::args().skip(1).collect();
    if specs.is_empty() {
        eprintln!("usage: delay-relay NAME=HOST:PORT:DELAY_MS...");
        std::process::exit(2);
    }
    for spec in specs {
        let parsed = spec.split_once('=').and_then(|(name, target)| {
            let (addr, ms) = target.rsplit_once(':')?;
            let ms: f64 = ms.parse().ok().filter(|ms: &f64| *ms >= 0.0)?;
            addr.to_socket_addrs().ok()?.next()?;
            Some((
                name.to_owned(),
                addr.to_owned(),
                Duration::from_secs_f64(ms / 1000.0),
            ))
        });
        let Some((name, upstream, delay)) = parsed else {
            eprintln!("delay-relay: {spec:?} is not NAME=HOST:PORT:DELAY_MS");
            std::process::exit(2);
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        println!("{name} {}", listener.local_addr().expect("local address"));
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = upstream.clone();
                thread::spawn(move || serve(client, &upstream, delay));
            }
        });
    }
    println!("ready");
    loop {
        thread::park();
    }
}
