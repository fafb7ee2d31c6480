//! The relay of one client session: both directions pumped by one task, through two
//! buffers, with the framing of [`super::frames`] deciding what may go where.
//!
//! One poll function reads what each side has (one read per readiness, into a 64 KiB
//! buffer), writes what the other side can take (everything read so far in one write),
//! and stops at the points where the session has something to decide: a request arrived
//! and no database connection is held ([`Step::NeedBackend`]), every answer owed was
//! delivered ([`Step::AtRest`]), a pinning condition, either side ending. The state lives in
//! [`Relay`], so the session may drop a pending `run` (a timer, shutdown) and call it again.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::frames::{header, ClientEvent, ClientScan, ServerScan};
use super::metrics::ProxyMetrics;
use crate::pinning::PinReason;

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

/// After the client has ended its side, how long the database's last messages (results of
/// what was sent, an error, a FATAL) are still relayed to it.
pub const DRAIN_AFTER_CLIENT_END: Duration = Duration::from_secs(2);

/// Each direction's buffer: a whole statement up to the 16 KB pinning limit fits, and a
/// burst of results moves in few reads and one write.
pub const BUFFER: usize = 64 * 1024;

/// A one-way buffer: `[sent, scanned)` is committed and not yet written, `[scanned, end)`
/// read and not yet framed.
struct Buf {
    data: Box<[u8]>,
    sent: usize,
    scanned: usize,
    end: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            data: vec![0u8; BUFFER].into_boxed_slice(),
            sent: 0,
            scanned: 0,
            end: 0,
        }
    }

    /// Free space at the end, moving the unsent bytes to the front when that makes room.
    fn space(&mut self) -> &mut [u8] {
        if self.sent == self.end {
            self.sent = 0;
            self.scanned = 0;
            self.end = 0;
        } else if self.end == self.data.len() && self.sent > 0 {
            self.data.copy_within(self.sent..self.end, 0);
            self.scanned -= self.sent;
            self.end -= self.sent;
            self.sent = 0;
        }
        &mut self.data[self.end..]
    }

    fn unsent(&self) -> &[u8] {
        &self.data[self.sent..self.scanned]
    }

    fn unscanned(&self) -> &[u8] {
        &self.data[self.scanned..self.end]
    }

    fn is_empty(&self) -> bool {
        self.sent == self.end
    }
}

/// Where the relay stopped.
#[derive(Debug)]
pub(super) enum Step {
    /// A request arrived and no database connection is held.
    NeedBackend,
    /// A request arrived on the connection the client keeps (asked for with
    /// [`Relay::stop_at_next_request`]).
    RequestStart,
    /// Every answer owed was delivered, the database's stream is between two messages, and
    /// nothing new came from the client.
    AtRest,
    /// The message just committed meets a pinning condition.
    Pinned(PinReason, Vec<u8>),
    /// The client ended its side (end of stream, `Terminate`) or failed.
    ClientGone(Option<io::Error>),
    /// The database connection ended, failed, or (at rest, when told to watch for it)
    /// sent an error: it is going away.
    BackendGone(Option<io::Error>),
    /// The client's stream is not PostgreSQL messages.
    Protocol(String),
}

/// The relay state of one session.
pub(super) struct Relay {
    up: Buf,
    down: Buf,
    /// The client-to-database framing.
    pub(super) scan: ClientScan,
    /// The database-to-client framing: the last `ReadyForQuery` status, whether an error
    /// was relayed since.
    pub(super) server: ServerScan,
    client_eof: bool,
    client_eof_reported: bool,
    client_error: Option<io::Error>,
    backend_eof: Option<Option<io::Error>>,
    client_unflushed: bool,
    /// Nothing owed, nothing new from the client since [`Step::AtRest`] was reported.
    resting: bool,
    rest_since: Instant,
    stop_at_request: bool,
    /// An error message from the database while nothing is owed means it is going away:
    /// not relayed, [`Step::BackendGone`] instead.
    watch_backend_errors: bool,
    /// When the request now owed was written to the database (for the response latency).
    sent_at: Option<Instant>,
}

impl Relay {
    pub(super) fn new() -> Relay {
        Relay {
            up: Buf::new(),
            down: Buf::new(),
            scan: ClientScan::new(),
            server: ServerScan::new(),
            client_eof: false,
            client_eof_reported: false,
            client_error: None,
            backend_eof: None,
            client_unflushed: false,
            resting: true,
            rest_since: Instant::now(),
            stop_at_request: false,
            watch_backend_errors: false,
            sent_at: None,
        }
    }

    /// Nothing is owed and the client sent nothing new: the client is idle (in a
    /// transaction or not), since [`Relay::rest_since`].
    pub(super) fn resting(&self) -> bool {
        self.resting
    }

    /// When the client last came to rest.
    pub(super) fn rest_since(&self) -> Instant {
        self.rest_since
    }

    /// Stop with [`Step::RequestStart`] when the next request arrives.
    pub(super) fn stop_at_next_request(&mut self, on: bool) {
        self.stop_at_request = on;
    }

    /// Treat an error message from the database while nothing is owed as its end.
    pub(super) fn watch_backend_errors(&mut self, on: bool) {
        self.watch_backend_errors = on;
    }

    /// A new database connection: nothing of the old one's stream is kept.
    pub(super) fn new_backend(&mut self) {
        self.server.new_connection();
        self.backend_eof = None;
        // Bytes of the old connection not yet framed are dropped (a partial message
        // cannot be completed by another connection).
        self.down.end = self.down.scanned;
    }

    /// Pumps both directions until the session has something to decide.
    pub(super) async fn run<C: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        mut backend: Option<&mut TcpStream>,
        metrics: &ProxyMetrics,
    ) -> Step {
        poll_fn(|cx| self.poll(cx, client, backend.as_deref_mut(), metrics)).await
    }

    /// Reads what the client sends while its request waits for a database connection
    /// (kept, for the connection it gets), and returns when the client has ended its side
    /// (`Ok`) or its connection failed (`Err`), so that the session can take it out of the
    /// line for a connection.
    pub(super) async fn wait_for_client_end<C: AsyncRead + Unpin>(
        &mut self,
        client: &mut C,
    ) -> io::Result<()> {
        poll_fn(|cx| loop {
            if let Some(e) = self.client_error.take() {
                return Poll::Ready(Err(e));
            }
            if self.client_eof {
                return Poll::Ready(Ok(()));
            }
            // A full buffer is read again once the request is relayed.
            std::task::ready!(self.poll_client_read(cx, client));
        })
        .await
    }

    /// One read of the client's bytes into the client-to-database buffer. `Ready` once
    /// something happened (bytes read, the end of the client's side, or an error in
    /// `client_error`); `Pending` when nothing is there or the buffer is full.
    fn poll_client_read<C: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
    ) -> Poll<()> {
        let space = self.up.space();
        if space.is_empty() {
            return Poll::Pending;
        }
        let mut rb = ReadBuf::new(space);
        match std::task::ready!(Pin::new(&mut *client).poll_read(cx, &mut rb)) {
            Ok(()) => match rb.filled().len() {
                0 => self.client_eof = true,
                n => self.up.end += n,
            },
            // A client that closes TCP without a TLS close_notify (libpq does) has ended
            // its side all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.client_eof = true,
            Err(e) => self.client_error = Some(e),
        }
        Poll::Ready(())
    }

    /// Writes what is committed for the client and flushes it (the session's last words).
    pub(super) async fn flush_client<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
    ) -> io::Result<()> {
        poll_fn(|cx| {
            while !self.down.unsent().is_empty() {
                let n =
                    std::task::ready!(Pin::new(&mut *client).poll_write(cx, self.down.unsent()))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.down.sent += n;
            }
            Pin::new(&mut *client).poll_flush(cx)
        })
        .await
    }

    fn poll<C: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        mut backend: Option<&mut TcpStream>,
        metrics: &ProxyMetrics,
    ) -> Poll<Step> {
        loop {
            let mut progress = false;

            // The client's bytes in.
            if !self.client_eof
                && self.client_error.is_none()
                && self.poll_client_read(cx, client).is_ready()
            {
                progress = true;
            }
            if let Some(e) = self.client_error.take() {
                return Poll::Ready(Step::ClientGone(Some(e)));
            }

            // Frame them; a request may need a connection first.
            if !self.up.unscanned().is_empty() {
                let starting = self.scan.at_boundary() && self.scan.settled();
                let stop =
                    starting && (backend.is_none() || (self.stop_at_request && self.resting));
                if stop {
                    match header(self.up.unscanned()) {
                        Some(Ok((b'X', _))) => {
                            self.client_eof = true;
                            self.up.end = self.up.scanned;
                        }
                        Some(_) => {
                            if backend.is_none() {
                                return Poll::Ready(Step::NeedBackend);
                            }
                            self.stop_at_request = false;
                            return Poll::Ready(Step::RequestStart);
                        }
                        None if self.client_eof => {
                            // A partial message and the end of the stream: nothing to send.
                            self.up.end = self.up.scanned;
                        }
                        None => {}
                    }
                } else if backend.is_some() {
                    let (n, event) = self.scan.scan(self.up.unscanned(), BUFFER);
                    if n > 0 {
                        self.up.scanned += n;
                        self.resting = false;
                        progress = true;
                    }
                    match event {
                        ClientEvent::More => {}
                        ClientEvent::Pin(reason, text) => {
                            return Poll::Ready(Step::Pinned(reason, text))
                        }
                        ClientEvent::Terminate => {
                            // Nothing after Terminate is read; it is not forwarded.
                            self.client_eof = true;
                            self.up.end = self.up.scanned;
                        }
                        ClientEvent::Protocol(e) => return Poll::Ready(Step::Protocol(e)),
                    }
                }
            }

            if let Some(b) = backend.as_deref_mut() {
                // Committed client bytes out to the database.
                if !self.up.unsent().is_empty() {
                    match Pin::new(&mut *b).poll_write(cx, self.up.unsent()) {
                        Poll::Ready(Ok(n)) => {
                            self.up.sent += n;
                            if self.sent_at.is_none() {
                                self.sent_at = Some(Instant::now());
                            }
                            progress = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Step::BackendGone(Some(e))),
                        Poll::Pending => {}
                    }
                }
                // The database's bytes in.
                if self.backend_eof.is_none() {
                    let space = self.down.space();
                    if !space.is_empty() {
                        let mut rb = ReadBuf::new(space);
                        match Pin::new(&mut *b).poll_read(cx, &mut rb) {
                            Poll::Ready(Ok(())) => {
                                let n = rb.filled().len();
                                if n == 0 {
                                    self.backend_eof = Some(None);
                                } else {
                                    self.down.end += n;
                                    if let Some(t) = self.sent_at.take() {
                                        metrics.latency(t.elapsed().as_micros() as u64);
                                    }
                                }
                                progress = true;
                            }
                            Poll::Ready(Err(e)) => {
                                self.backend_eof = Some(Some(e));
                                progress = true;
                            }
                            Poll::Pending => {}
                        }
                    }
                }
            }

            // Frame the database's bytes.
            if let Some(step) = self.scan_down() {
                return Poll::Ready(step);
            }

            // Committed database bytes out to the client.
            if !self.down.unsent().is_empty() {
                match Pin::new(&mut *client).poll_write(cx, self.down.unsent()) {
                    Poll::Ready(Ok(n)) => {
                        self.down.sent += n;
                        self.client_unflushed = true;
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Step::ClientGone(Some(e))),
                    Poll::Pending => {}
                }
            }
            if self.client_unflushed && self.down.unsent().is_empty() {
                match Pin::new(&mut *client).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.client_unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Step::ClientGone(Some(e))),
                    Poll::Pending => {}
                }
            }
            let delivered = self.down.unsent().is_empty() && !self.client_unflushed;

            if delivered && self.backend_eof.is_some() && backend.is_some() {
                let e = self.backend_eof.take().flatten();
                return Poll::Ready(Step::BackendGone(e));
            }
            if backend.is_some()
                && !self.resting
                && delivered
                && self.up.is_empty()
                && self.down.is_empty()
                && self.scan.settled()
                && self.scan.at_boundary()
                && self.server.at_boundary()
            {
                self.resting = true;
                self.rest_since = Instant::now();
                return Poll::Ready(Step::AtRest);
            }
            if self.client_eof && !self.client_eof_reported && self.up.unscanned().is_empty() {
                self.client_eof_reported = true;
                return Poll::Ready(Step::ClientGone(None));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Frames what the database sent; returns a step when an error message arrives at
    /// rest and the session watches for those.
    fn scan_down(&mut self) -> Option<Step> {
        let (n, error_at_rest) = self.server.scan(
            self.down.unscanned(),
            &mut self.scan,
            self.watch_backend_errors,
        );
        self.down.scanned += n;
        error_at_rest.then_some(Step::BackendGone(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::wire::message as msg;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A database connection that goes back to its pool with part of a message unread
    /// would hand the rest to the next client that borrows it: the relay comes to rest
    /// only between the database's messages.
    #[tokio::test]
    async fn comes_to_rest_only_between_the_databases_messages() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut backend = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut database, _) = listener.accept().await.unwrap();
        let (mut client, mut client_end) = tokio::io::duplex(BUFFER);
        let metrics = ProxyMetrics::default();
        let mut relay = Relay::new();

        let query = msg(b'Q', b"SELECT 1\0");
        client_end.write_all(&query).await.unwrap();
        let notice = msg(b'N', b"SNOTICE\0Mafter the answer\0\0");
        let (head, tail) = notice.split_at(9);
        let answer = [&msg(b'Z', b"I")[..], head].concat();
        let serve = async {
            let mut got = vec![0u8; query.len()];
            database.read_exact(&mut got).await.unwrap();
            database.write_all(&answer).await.unwrap();
        };
        let relayed = tokio::time::timeout(
            Duration::from_millis(500),
            relay.run(&mut client, Some(&mut backend), &metrics),
        );
        let (step, ()) = tokio::join!(relayed, serve);
        assert!(
            step.is_err(),
            "at rest in the middle of a message: {step:?}"
        );
        let mut seen = vec![0u8; answer.len()];
        client_end.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, answer, "what came is relayed all the same");

        database.write_all(tail).await.unwrap();
        let step = tokio::time::timeout(
            Duration::from_secs(10),
            relay.run(&mut client, Some(&mut backend), &metrics),
        )
        .await;
        assert!(matches!(step, Ok(Step::AtRest)), "{step:?}");
    }
}
