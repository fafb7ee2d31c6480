//! The relay of an open session: bytes both ways, the pinning watch, half-close and drain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::control::Control;
use crate::pinning::PinWatch;

/// The log line for a session's first pinning condition, in the shape of RDS Proxy's:
/// the endpoint, the session, the reason and a digest of the statement.
///
/// ```
/// use rds_proxy_emulator::pinning::PinReason;
/// let line = rds_proxy_emulator::proxy::pinning_log_line("ro", 7, PinReason::Listen, b"LISTEN\n  jobs");
/// assert_eq!(line, "[ro] The client session was pinned to the database connection [session=7] for the remainder of the session. The proxy can't reuse this connection until the session ends. Reason: SQL listens on a notification channel (LISTEN). Digest: \"LISTEN jobs\"");
/// ```
pub fn pinning_log_line(
    endpoint: &str,
    session: u64,
    reason: crate::pinning::PinReason,
    statement: &[u8],
) -> String {
    let digest: String = String::from_utf8_lossy(statement)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(120)
        .collect();
    format!("[{endpoint}] The client session was pinned to the database connection [session={session}] for the remainder of the session. The proxy can't reuse this connection until the session ends. Reason: {reason}. Digest: \"{digest}\"")
}

/// What the relay needs to know about its session.
pub(super) struct SessionInfo<'a> {
    /// Where pinned sessions are counted.
    pub(super) control: &'a Control,
    /// The endpoint's name, for the log lines.
    pub(super) endpoint: &'a str,
    /// The session's id, for the pinning log line.
    pub(super) session: u64,
}

/// Relay buffer size: large enough that a burst of results moves in few reads.
const RELAY_BUFFER: usize = 64 * 1024;

/// After the client has ended its side, how long the database's last messages (results of
/// what was sent, an error, a FATAL) are still relayed to it.
pub const DRAIN_AFTER_CLIENT_END: Duration = Duration::from_secs(2);

/// How long closing the client's side may take (flushing and TLS close_notify, to a
/// client that may have stopped reading).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the two-way relay stopped.
enum RelayEnd {
    /// The client ended its side (EOF); the backend's write side is shut.
    ClientDone,
    /// The backend ended its side (EOF).
    BackendDone,
    /// Reading from or writing to the client failed.
    ClientError(std::io::Error),
    /// Reading from or writing to the backend failed.
    BackendError(std::io::Error),
    /// The client was idle too long.
    Idle,
    /// The proxy is shutting down.
    Stop,
}

/// Relays a session both ways until it ends, then closes the client's side cleanly.
///
/// When the client ends its side first, the relay half-closes: the backend's write side is
/// shut (PostgreSQL sees the end of the client's input as it would directly), and what the
/// backend still sends is relayed for up to [`DRAIN_AFTER_CLIENT_END`], so replies already
/// on their way and a final error are not lost. However the session ends, the client's side
/// is then shut with a TLS close_notify (bounded by a timeout), so a client can tell a
/// closed session from a cut connection.
pub(super) async fn relay<C: AsyncRead + AsyncWrite + Unpin>(
    client: C,
    backend: TcpStream,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
    info: SessionInfo<'_>,
) {
    let endpoint = info.endpoint;
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = backend.into_split();
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    {
        let c2b = async {
            let mut buf = vec![0u8; RELAY_BUFFER];
            let mut watch = PinWatch::new();
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(n) => n,
                    // A client that closes TCP without a TLS close_notify (libpq does) has
                    // ended its side all the same.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                    Err(e) => return RelayEnd::ClientError(e),
                };
                if n == 0 {
                    return match bw.shutdown().await {
                        Ok(()) => RelayEnd::ClientDone,
                        Err(e) => RelayEnd::BackendError(e),
                    };
                }
                touch();
                if !watch.done() {
                    if let Some(reason) = watch.feed(&buf[..n]) {
                        Control::bump(&info.control.sessions_pinned);
                        tracing::warn!(
                            target: "rds_proxy_emulator::pinning",
                            "{}",
                            pinning_log_line(endpoint, info.session, reason, watch.last_statement())
                        );
                    }
                }
                if let Err(e) = bw.write_all(&buf[..n]).await {
                    return RelayEnd::BackendError(e);
                }
            }
        };
        let b2c = async {
            let mut buf = vec![0u8; RELAY_BUFFER];
            loop {
                let n = match br.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => return RelayEnd::BackendError(e),
                };
                if n == 0 {
                    return RelayEnd::BackendDone;
                }
                touch();
                let sent = async {
                    cw.write_all(&buf[..n]).await?;
                    cw.flush().await
                };
                if let Err(e) = sent.await {
                    return RelayEnd::ClientError(e);
                }
            }
        };
        let idle_watch = async {
            loop {
                let since = Duration::from_millis(last.load(Ordering::Relaxed));
                let quiet = start.elapsed().saturating_sub(since);
                if quiet >= idle {
                    return;
                }
                tokio::time::sleep(idle - quiet).await;
            }
        };
        tokio::pin!(b2c);
        let mut end = tokio::select! {
            r = c2b => r,
            r = &mut b2c => r,
            _ = idle_watch => RelayEnd::Idle,
            _ = stop.wait_for(|s| *s) => RelayEnd::Stop,
        };
        if matches!(end, RelayEnd::ClientDone) {
            end = tokio::select! {
                r = tokio::time::timeout(DRAIN_AFTER_CLIENT_END, &mut b2c) => match r {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::debug!(%endpoint, "the backend did not end its side within {} ms of the client's", DRAIN_AFTER_CLIENT_END.as_millis());
                        RelayEnd::ClientDone
                    }
                },
                _ = stop.wait_for(|s| *s) => RelayEnd::Stop,
            };
        }
        match end {
            RelayEnd::ClientDone | RelayEnd::BackendDone | RelayEnd::Stop => {}
            RelayEnd::ClientError(e) => tracing::debug!(%endpoint, "client side closed: {e}"),
            RelayEnd::BackendError(e) => tracing::debug!(%endpoint, "backend side closed: {e}"),
            RelayEnd::Idle => {
                tracing::info!(%endpoint, "closing idle client connection after {} s", idle.as_secs())
            }
        }
    }
    // Both directions are done (the futures above, which borrow the halves, are dropped):
    // end the client's side with a close_notify, then drop both connections.
    if tokio::time::timeout(CLOSE_TIMEOUT, cw.shutdown())
        .await
        .is_err()
    {
        tracing::debug!(%endpoint, "closing the client's side timed out");
    }
}
