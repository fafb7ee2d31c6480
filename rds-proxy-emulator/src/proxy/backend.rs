//! One database connection: opened and logged in with the proxy's secret, and the few
//! exchanges the proxy has on it itself (restoring a client's session parameters,
//! preparing a client's statements again, reading `max_connections`, a cancel request).

use std::net::SocketAddr;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frames::header;
use super::params::SessionParams;
use super::wire::{message, ConnError, PROTOCOL_3};

/// A `ParameterStatus` message by its parameter name.
type Reported = (Box<[u8]>, Box<[u8]>);

/// Largest message read during the proxy's own exchanges.
const MAX_MESSAGE: usize = 1 << 20;

/// A logged-in database session, between client requests (its last `ReadyForQuery` said
/// idle).
#[derive(Debug)]
pub(super) struct BackendConn {
    pub(super) stream: TcpStream,
    pub(super) addr: SocketAddr,
    /// The server's `BackendKeyData` (process id and secret), for cancel requests.
    pub(super) key: [u8; 8],
    /// The tracked parameters as this session has them.
    pub(super) params: SessionParams,
    /// The `ParameterStatus` messages this session would greet a client with now, by name.
    reported: Vec<Reported>,
    /// Those it was greeted with at login (no tracked parameter set).
    login_greeting: Vec<u8>,
}

/// Why a database connection could not be opened.
#[derive(Debug)]
pub(super) enum OpenError {
    /// PostgreSQL refused the session: its `ErrorResponse`, to pass on.
    Refused(Vec<u8>),
    /// The server could not be reached or broke the protocol.
    Failed(ConnError),
}

impl From<ConnError> for OpenError {
    fn from(e: ConnError) -> OpenError {
        OpenError::Failed(e)
    }
}

impl From<std::io::Error> for OpenError {
    fn from(e: std::io::Error) -> OpenError {
        OpenError::Failed(ConnError::Io(e))
    }
}

/// Reads whole messages from a stream the proxy talks to itself.
struct Reader {
    buf: Vec<u8>,
    pos: usize,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            buf: Vec::with_capacity(4096),
            pos: 0,
        }
    }

    async fn next(&mut self, s: &mut TcpStream) -> Result<(u8, Vec<u8>), ConnError> {
        loop {
            if let Some(h) = header(&self.buf[self.pos..]) {
                let (tag, len) = h.map_err(ConnError::Protocol)?;
                if len > MAX_MESSAGE {
                    return Err(ConnError::Protocol(format!(
                        "database message of {len} bytes"
                    )));
                }
                if self.buf.len() - self.pos >= len {
                    let body = self.buf[self.pos + 5..self.pos + len].to_vec();
                    self.pos += len;
                    if self.pos == self.buf.len() {
                        self.buf.clear();
                        self.pos = 0;
                    }
                    return Ok((tag, body));
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.drain(..self.pos);
                self.pos = 0;
                self.buf.reserve(4096);
            }
            let n = s.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Nothing read and not consumed: the exchange ended on a message boundary with no
    /// message after it.
    fn drained(&self) -> bool {
        self.pos == self.buf.len()
    }
}

impl BackendConn {
    /// Opens a session on `addr` as `user` on `database` with the proxy's secret
    /// `password` (SCRAM-SHA-256, MD5 or cleartext, as the server asks), and reads its
    /// greeting. No tracked parameter is set at login: a value given there would become
    /// the session's default, which `RESET` returns to, so clients' values are applied
    /// afterwards ([`BackendConn::restore`]).
    pub(super) async fn open(
        addr: SocketAddr,
        user: &str,
        database: &str,
        password: &str,
    ) -> Result<BackendConn, OpenError> {
        let mut s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", database)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        s.write_all(&startup).await?;

        let mut r = Reader::new();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = r.next(&mut s).await?;
            match tag {
                b'E' => return Err(OpenError::Refused(message(b'E', &body))),
                b'R' if body.len() >= 4 => {
                    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    match code {
                        0 => break,
                        3 => {
                            let mut p = password.as_bytes().to_vec();
                            p.push(0);
                            s.write_all(&message(b'p', &p)).await?;
                        }
                        5 if data.len() >= 4 => {
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                password.as_bytes(),
                                [data[0], data[1], data[2], data[3]],
                            );
                            let mut p = hash.into_bytes();
                            p.push(0);
                            s.write_all(&message(b'p', &p)).await?;
                        }
                        10 => {
                            let mechanisms: Vec<&[u8]> = data.split(|b| *b == 0).collect();
                            if !mechanisms.iter().any(|m| *m == b"SCRAM-SHA-256") {
                                return Err(ConnError::Protocol(
                                    "the database offers no SCRAM-SHA-256".into(),
                                )
                                .into());
                            }
                            let sc = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let first = sc.message().to_vec();
                            let mut p = b"SCRAM-SHA-256\0".to_vec();
                            p.extend_from_slice(&(first.len() as u32).to_be_bytes());
                            p.extend_from_slice(&first);
                            s.write_all(&message(b'p', &p)).await?;
                            scram = Some(sc);
                        }
                        11 => {
                            let sc = scram.as_mut().ok_or_else(|| {
                                ConnError::Protocol("SASLContinue before SASL".into())
                            })?;
                            sc.update(data).map_err(ConnError::Io)?;
                            let m = sc.message().to_vec();
                            s.write_all(&message(b'p', &m)).await?;
                        }
                        12 => {
                            let sc = scram.as_mut().ok_or_else(|| {
                                ConnError::Protocol("SASLFinal before SASL".into())
                            })?;
                            sc.finish(data).map_err(ConnError::Io)?;
                        }
                        other => {
                            return Err(ConnError::Protocol(format!(
                                "unsupported database auth request {other}"
                            ))
                            .into())
                        }
                    }
                }
                b'N' => {} // NoticeResponse during startup.
                other => {
                    return Err(ConnError::Protocol(format!(
                        "unexpected database message {:?} during login",
                        char::from(other)
                    ))
                    .into())
                }
            }
        }
        // The greeting: ParameterStatus, BackendKeyData, ReadyForQuery.
        let mut conn = BackendConn {
            stream: s,
            addr,
            key: [0; 8],
            params: SessionParams::default(),
            reported: Vec::new(),
            login_greeting: Vec::new(),
        };
        loop {
            let (tag, body) = r.next(&mut conn.stream).await?;
            match tag {
                b'S' => conn.report(body),
                b'K' if body.len() == 8 => conn.key.copy_from_slice(&body),
                b'Z' => break,
                b'N' => {}
                b'E' => return Err(OpenError::Refused(message(b'E', &body))),
                other => {
                    return Err(ConnError::Protocol(format!(
                        "unexpected database message {:?} in the greeting",
                        char::from(other)
                    ))
                    .into())
                }
            }
        }
        if !r.drained() {
            return Err(ConnError::Protocol("database data after ReadyForQuery".into()).into());
        }
        conn.login_greeting = conn.greeting();
        Ok(conn)
    }

    /// The `ParameterStatus` messages of the session's login (no tracked parameter set).
    pub(super) fn login_greeting(&self) -> &[u8] {
        &self.login_greeting
    }

    fn report(&mut self, body: Vec<u8>) {
        let name_len = body.iter().position(|b| *b == 0).unwrap_or(body.len());
        let name: Box<[u8]> = body[..name_len].into();
        let m: Box<[u8]> = message(b'S', &body).into();
        match self.reported.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = m,
            None => self.reported.push((name, m)),
        }
    }

    /// The `ParameterStatus` messages a client of this session is greeted with.
    pub(super) fn greeting(&self) -> Vec<u8> {
        self.reported
            .iter()
            .flat_map(|(_, m)| m.iter())
            .copied()
            .collect()
    }

    /// Runs `sql` (simple protocol) and reads every answer up to `ReadyForQuery`, keeping
    /// reported parameter changes; the first error's text is returned as an error.
    async fn run(&mut self, sql: &str) -> Result<Vec<Vec<u8>>, ConnError> {
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        self.stream.write_all(&message(b'Q', &q)).await?;
        let mut r = Reader::new();
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, body) = r.next(&mut self.stream).await?;
            match tag {
                b'S' => self.report(body),
                b'D' => rows.push(body),
                b'E' => {
                    error.get_or_insert_with(|| String::from_utf8_lossy(&body).into_owned());
                }
                b'Z' => break,
                _ => {}
            }
        }
        if !r.drained() {
            return Err(ConnError::Protocol(
                "database data after ReadyForQuery".into(),
            ));
        }
        match error {
            Some(e) => Err(ConnError::Protocol(format!(
                "the database refused {sql:?}: {}",
                e.replace('\0', " ")
            ))),
            None => Ok(rows),
        }
    }

    /// Gives the session `wanted`'s tracked parameters; whether anything had to change.
    pub(super) async fn restore(&mut self, wanted: &SessionParams) -> Result<bool, ConnError> {
        match self.params.restore_sql(wanted) {
            Some(sql) => {
                self.run(&sql).await?;
                self.params = wanted.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Prepares statements again (each `Parse` message followed by a `Sync`, its answers
    /// read and dropped). A statement the database refuses now is left out: the client
    /// sees the error when it uses it, as it would on its first connection.
    pub(super) async fn replay<'a>(
        &mut self,
        parses: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), ConnError> {
        let mut out = Vec::new();
        let mut n = 0;
        for p in parses {
            out.extend_from_slice(p);
            out.extend_from_slice(&[b'S', 0, 0, 0, 4]);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        self.stream.write_all(&out).await?;
        let mut r = Reader::new();
        while n > 0 {
            let (tag, _) = r.next(&mut self.stream).await?;
            if tag == b'Z' {
                n -= 1;
            }
        }
        Ok(())
    }

    /// Drops every prepared statement of the session (`DEALLOCATE ALL`), for a connection
    /// going back to the pool from a client that held some.
    pub(super) async fn deallocate_all(&mut self) -> Result<(), ConnError> {
        self.run("DEALLOCATE ALL").await.map(|_| ())
    }

    /// The server's `max_connections`.
    pub(super) async fn max_connections(&mut self) -> Result<u32, ConnError> {
        let rows = self.run("SHOW max_connections").await?;
        rows.first()
            .and_then(|row| {
                // One column: count (2 bytes), length (4 bytes), text.
                let text = row.get(6..)?;
                std::str::from_utf8(text).ok()?.trim().parse().ok()
            })
            .ok_or_else(|| ConnError::Protocol("unreadable max_connections".into()))
    }

    /// Whether the session still looks usable without a round trip: a session between
    /// requests sends nothing, so anything readable (the FATAL of a server shutting down,
    /// the end of the stream) means it is gone.
    pub(super) fn looks_alive(&self) -> bool {
        let mut b = [0u8; 64];
        matches!(self.stream.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Sends a `CancelRequest` for the session `key` to the server at `addr`.
pub(super) async fn send_cancel(addr: SocketAddr, key: [u8; 8]) {
    let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    packet.extend_from_slice(&key);
    let sent = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&packet).await?;
        s.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(5), sent)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(%addr, "cancel request not delivered: {e}");
    }
}

/// Where the password of a db user's database connections comes from: the configuration
/// (`auth = "iam"` users), or the user's secret, read each time a connection is opened so
/// that connections opened after a rotation use the new password (those already open stay
/// valid: PostgreSQL checks a password at login only).
#[derive(Clone)]
pub(super) enum BackendPassword {
    /// A fixed password.
    Fixed(String),
    /// The AWSCURRENT password of the named secret.
    Secret(std::sync::Arc<crate::secrets::SecretStore>, String),
}

impl BackendPassword {
    /// The password to log in with now (`None`: the secret has none).
    pub(super) fn current(&self) -> Option<String> {
        match self {
            BackendPassword::Fixed(p) => Some(p.clone()),
            BackendPassword::Secret(store, name) => store.current_password(name),
        }
    }
}

impl std::fmt::Debug for BackendPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendPassword::Fixed(_) => f.write_str("Fixed(<redacted>)"),
            BackendPassword::Secret(_, name) => f.debug_tuple("Secret").field(name).finish(),
        }
    }
}
