//! The barest relay there is, as the floor for `make bench-pgbench`: every connection
//! accepted on LISTEN is joined to a new connection to TARGET and the bytes are copied both
//! ways (`tokio::io::copy_bidirectional`), with no TLS, no parsing and no pooling. The
//! RDS Proxy stand-in's proxy runs the same way (one thread, `TCP_NODELAY` on both sides),
//! so the two differ only in what the stand-in does between the reads and the writes.
//!
//! ```text
//! relay-floor 127.0.0.1:0 127.0.0.1:5432
//! ```
//!
//! Prints `listening 127.0.0.1:PORT` once it accepts, then runs until killed.

use std::io::Write;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, target] = args.as_slice() else {
        eprintln!("usage: relay-floor LISTEN_ADDR TARGET_ADDR");
        std::process::exit(2);
    };
    if let Err(e) = run(listen, target) {
        eprintln!("relay-floor: {e}");
        std::process::exit(1);
    }
}

fn run(listen: &str, target: &str) -> Result<(), String> {
    let parse = |what: &str, s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| format!("{what} {s:?} is not an IP:PORT address: {e}"))
    };
    let (listen, target) = (parse("LISTEN_ADDR", listen)?, parse("TARGET_ADDR", target)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("binding {listen}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("the listener's address: {e}"))?;
        println!("listening {bound}");
        let _ = std::io::stdout().flush();
        loop {
            let (mut client, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("relay-floor: accept: {e}");
                    continue;
                }
            };
            tokio::spawn(async move {
                let mut server = match TcpStream::connect(target).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("relay-floor: connecting to {target}: {e}");
                        return;
                    }
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}
