//! The RDS Proxy stand-in: the PostgreSQL wire protocol with TLS required and IAM
//! authentication, in front of a real PostgreSQL.
//!
//! One connection goes through these steps (the messages are RDS Proxy's, as listed in
//! AWS's "Troubleshooting for RDS Proxy"):
//!
//! 1. Plaintext: `SSLRequest` gets `S` and the TLS handshake (certificate for the endpoint
//!    host names); `GSSENCRequest` gets `N`; a `CancelRequest` is forwarded to PostgreSQL;
//!    any startup packet in the clear gets FATAL `This RDS Proxy requires TLS connections.`
//! 2. Inside TLS, the startup packet is checked: protocol 3.0 only, no replication, only
//!    the startup parameters RDS Proxy accepts, a user name; then the client limit.
//! 3. `AuthenticationCleartextPassword`; the password is the IAM token, checked by
//!    [`crate::token::verify_token`] against the credentials STS issued, then the role's
//!    `rds-db:connect` permission on `arn:aws:rds-db:REGION:ACCOUNT:dbuser:prx-ID/USER`.
//!    Every refusal is logged (`tracing`, target `rds_proxy_emulator::proxy`) with its
//!    precise reason; the client sees only the RDS Proxy text.
//! 4. A backend session is opened as the db user with the proxy's secret (SCRAM-SHA-256),
//!    on the writer for `READ_WRITE` endpoints and on a reader (a hot standby, round robin)
//!    for `READ_ONLY` ones, following the [`Topology`] (which a failover changes). While
//!    no suitable server is available the login waits, up to
//!    `backend_connect_timeout_seconds`.
//! 5. The traffic is relayed both ways until either side closes or the client is idle too
//!    long. A client that ends its side first is half-closed: PostgreSQL sees the end of
//!    its input, and what it still sends (results, a final FATAL) is relayed for up to
//!    [`DRAIN_AFTER_CLIENT_END`]. The client's side is always ended with a TLS
//!    close_notify. Client-to-database bytes are watched for pinning conditions
//!    ([`crate::pinning`]) until the first one; nothing else is parsed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::accept::{accept_with_backoff, Backoff};
use crate::config::{StackConfig, TargetRole};
use crate::control::Control;
use crate::iam::Iam;
use crate::pinning::PinWatch;
use crate::token::{verify_token, Expected};

/// SQLSTATE of IAM authentication failures.
pub const SQLSTATE_IAM: &str = "28P01";
/// SQLSTATE of the TLS-required refusal and of a missing user.
pub const SQLSTATE_AUTH_SPEC: &str = "28000";
/// SQLSTATE of unsupported protocol features.
pub const SQLSTATE_FEATURE: &str = "0A000";
/// SQLSTATE of the client-limit refusal.
pub const SQLSTATE_TOO_MANY: &str = "53300";
/// SQLSTATE when PostgreSQL cannot be reached.
pub const SQLSTATE_BACKEND_DOWN: &str = "08006";

/// `This RDS Proxy requires TLS connections.`
pub const MSG_TLS_REQUIRED: &str = "This RDS Proxy requires TLS connections.";
/// Protocol other than 3.0.
pub const MSG_PROTOCOL: &str =
    "Feature not supported: RDS Proxy supports only version 3.0 of the PostgreSQL messaging protocol.";
/// Replication mode.
pub const MSG_REPLICATION: &str =
    "Feature not supported: RDS Proxy currently doesn't support streaming replication mode.";
/// No user in the startup packet.
pub const MSG_NO_USER: &str =
    "A user name is missing from the connection startup packet. Provide a user name for this connection.";
/// No server of the endpoint's role became available in time (RDS Proxy's borrow timeout).
pub const MSG_BORROW_TIMEOUT: &str = "Timed-out waiting to acquire database connection.";
/// The message sent when PostgreSQL cannot be reached (not an AWS text: RDS Proxy would
/// time out waiting for a database connection).
pub const MSG_BACKEND_DOWN: &str =
    "RDS Proxy could not open a connection to the database: the database is not reachable.";

/// `The IAM authentication failed for the role USER. ...`
pub fn msg_iam_failed(user: &str) -> String {
    format!("The IAM authentication failed for the role {user}. Check the IAM token for this role and try again.")
}
/// `This RDS proxy has no credentials for the role USER. ...`
pub fn msg_no_credentials(user: &str) -> String {
    format!("This RDS proxy has no credentials for the role {user}. Check the credentials for this role and try again.")
}
/// `Feature not supported: RDS Proxy currently doesn't support the option OPTION.`
pub fn msg_option(option: &str) -> String {
    format!("Feature not supported: RDS Proxy currently doesn't support the option {option}.")
}
/// `The maximum number of client connections to the proxy exceeded N.`
pub fn msg_too_many(n: usize) -> String {
    format!("The maximum number of client connections to the proxy exceeded {n}.")
}

/// Startup parameters RDS Proxy accepts.
pub const ACCEPTED_PARAMETERS: &[&str] = &[
    "user",
    "database",
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
    "search_path",
];

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u32 = 196_608;
const MAX_STARTUP: usize = 10_000;
const MAX_PASSWORD: usize = 16_384;
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a proxy endpoint serves, as the proxy sees it.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    /// Endpoint name.
    pub name: String,
    /// Host name signed into tokens.
    pub hostname: String,
    /// Advertised port signed into tokens.
    pub port: u16,
    /// Target role.
    pub target_role: TargetRole,
}

/// Where the proxy sends sessions: the database cluster as the proxy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// The writer (for `READ_WRITE` endpoints); `None` while a failover is under way.
    pub writer: Option<SocketAddr>,
    /// The readers (for `READ_ONLY` endpoints, round robin); empty while none is ready.
    pub readers: Vec<SocketAddr>,
}

impl Topology {
    /// Every server address, writer first.
    pub fn all(&self) -> Vec<SocketAddr> {
        self.writer
            .iter()
            .chain(self.readers.iter())
            .copied()
            .collect()
    }
}

/// State shared by all endpoints of one proxy.
pub struct ProxyShared {
    iam: Arc<Iam>,
    config: Arc<StackConfig>,
    topology: watch::Receiver<Topology>,
    next_reader: AtomicUsize,
    sessions: std::sync::Mutex<std::collections::HashMap<u64, SocketAddr>>,
    next_session: AtomicU64,
    tls: TlsAcceptor,
    clients: AtomicUsize,
    shutdown: watch::Sender<bool>,
    control: Arc<Control>,
}

impl std::fmt::Debug for ProxyShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyShared")
            .field("topology", &*self.topology.borrow())
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

impl ProxyShared {
    /// Shared state for a proxy relaying to the servers of `topology`, obeying `control`'s
    /// faults and counting there.
    pub fn new(
        iam: Arc<Iam>,
        topology: watch::Receiver<Topology>,
        tls: Arc<rustls::ServerConfig>,
        control: Arc<Control>,
    ) -> Arc<ProxyShared> {
        let config = Arc::new(iam.config().clone());
        Arc::new(ProxyShared {
            iam,
            config,
            topology,
            next_reader: AtomicUsize::new(0),
            sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_session: AtomicU64::new(1),
            tls: TlsAcceptor::from(tls),
            clients: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
            control,
        })
    }

    /// Number of client connections open now.
    pub fn client_connections(&self) -> usize {
        self.clients.load(Ordering::SeqCst)
    }

    /// Number of client sessions relayed to any of `servers` now.
    pub fn sessions_on(&self, servers: &[SocketAddr]) -> usize {
        self.sessions
            .lock()
            .map(|s| s.values().filter(|a| servers.contains(a)).count())
            .unwrap_or(0)
    }

    /// A server for `role`, waiting up to `limit` for one to be available.
    async fn pick_server(&self, role: TargetRole, limit: Duration) -> Option<SocketAddr> {
        let pick = |t: &Topology, n: usize| match role {
            TargetRole::ReadWrite => t.writer,
            TargetRole::ReadOnly if t.readers.is_empty() => None,
            TargetRole::ReadOnly => Some(t.readers[n % t.readers.len()]),
        };
        let n = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let mut rx = self.topology.clone();
        let ready = tokio::time::timeout(limit, rx.wait_for(|t| pick(t, n).is_some())).await;
        match ready {
            Ok(Ok(t)) => pick(&t, n),
            _ => None,
        }
    }

    /// Closes every client connection and stops the listeners.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Binds an endpoint's listener and serves it in the background.
pub async fn serve_endpoint(
    shared: Arc<ProxyShared>,
    spec: EndpointSpec,
    listen: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), crate::Error> {
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        crate::Error::io(
            format!("binding proxy endpoint {} on {listen}", spec.name),
            e,
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| crate::Error::io("proxy listener address", e))?;
    let spec = Arc::new(spec);
    let mut stop = shared.shutdown.subscribe();
    let task = tokio::spawn(async move {
        let what = format!("proxy endpoint {}", spec.name);
        let mut backoff = Backoff::new();
        loop {
            let (stream, peer) = tokio::select! {
                a = accept_with_backoff(&what, &mut backoff, || listener.accept()) => a,
                _ = stop.wait_for(|s| *s) => break,
            };
            let _ = stream.set_nodelay(true);
            let shared = Arc::clone(&shared);
            let spec = Arc::clone(&spec);
            let span = tracing::info_span!("proxy", %peer);
            tokio::spawn(handle_client(shared, spec, stream).instrument(span));
        }
    });
    Ok((addr, task))
}

struct ClientSlot<'a>(&'a AtomicUsize);
impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A startup-phase packet, as the proxy reads it from an untrusted client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// `SSLRequest`.
    Ssl,
    /// `GSSENCRequest`.
    GssEnc,
    /// `CancelRequest` (the whole packet, to forward).
    Cancel(Vec<u8>),
    /// A protocol 3.0 `StartupMessage` and its parameters.
    V3(Vec<(String, String)>),
    /// Another protocol version.
    Other(u32),
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

async fn read_startup<S: AsyncRead + Unpin>(s: &mut S) -> Result<Startup, ConnError> {
    let len = s.read_u32().await? as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(ConnError::Protocol(format!("startup packet length {len}")));
    }
    let mut packet = vec![0u8; len];
    packet[..4].copy_from_slice(&(len as u32).to_be_bytes());
    s.read_exact(&mut packet[4..]).await?;
    parse_startup_packet(&packet).map_err(ConnError::Protocol)
}

/// Parses one startup-phase packet (length prefix included), as sent by a client.
///
/// ```
/// use rds_proxy_emulator::proxy::{parse_startup_packet, Startup};
/// assert!(parse_startup_packet(&[0, 0, 0, 8, 4, 210, 22, 47]) == Ok(Startup::Ssl));
/// assert!(parse_startup_packet(&[0, 0, 0, 9, 0, 3, 0, 0, b'x']).is_err());
/// let v3 = parse_startup_packet(&[0, 0, 0, 15, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'a', 0]);
/// assert!(v3.is_err()); // no terminating NUL after the parameters
/// let v3 = parse_startup_packet(&[0, 0, 0, 16, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'a', 0, 0]);
/// assert!(v3 == Ok(Startup::V3(vec![("user".into(), "a".into())])));
/// ```
pub fn parse_startup_packet(packet: &[u8]) -> Result<Startup, String> {
    if packet.len() < 8 || packet.len() > MAX_STARTUP {
        return Err(format!("startup packet of {} bytes", packet.len()));
    }
    let len = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]) as usize;
    if len != packet.len() {
        return Err(format!(
            "startup packet length {len}, {} bytes given",
            packet.len()
        ));
    }
    let body = &packet[4..];
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    Ok(match code {
        SSL_REQUEST => Startup::Ssl,
        GSSENC_REQUEST => Startup::GssEnc,
        CANCEL_REQUEST => Startup::Cancel(packet.to_vec()),
        PROTOCOL_3 => {
            // key\0value\0 ... \0: NUL-terminated strings, an empty key ends the list.
            let mut params = Vec::new();
            let mut rest = &body[4..];
            let next = |rest: &mut &[u8]| -> Result<String, String> {
                let end = rest
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(|| "unterminated startup packet".to_string())?;
                let field = String::from_utf8_lossy(&rest[..end]).into_owned();
                *rest = &rest[end + 1..];
                Ok(field)
            };
            loop {
                let k = next(&mut rest)?;
                if k.is_empty() {
                    if !rest.is_empty() {
                        return Err("data after the end of the startup parameters".into());
                    }
                    break;
                }
                let v = next(&mut rest)?;
                params.push((k, v));
            }
            Startup::V3(params)
        }
        other => Startup::Other(other),
    })
}

/// An `ErrorResponse` with severity FATAL.
pub fn fatal_message(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(tag);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Sends a FATAL refusal and counts it.
async fn refuse<S: AsyncWrite + Unpin>(
    shared: &ProxyShared,
    s: &mut S,
    sqlstate: &str,
    message: &str,
) {
    Control::bump(&shared.control.logins_refused);
    send_fatal(s, sqlstate, message).await;
}

async fn send_fatal<S: AsyncWrite + Unpin>(s: &mut S, sqlstate: &str, message: &str) {
    let _ = s.write_all(&fatal_message(sqlstate, message)).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// Forwards a CancelRequest to every server (only the one holding the key acts on it).
async fn forward_cancel(shared: &ProxyShared, packet: &[u8]) {
    let servers = shared.topology.borrow().all();
    for backend in servers {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(backend)).await
        {
            let _ = s.write_all(packet).await;
            let _ = s.shutdown().await;
        }
    }
}

async fn handle_client(shared: Arc<ProxyShared>, spec: Arc<EndpointSpec>, mut tcp: TcpStream) {
    let count = shared.clients.fetch_add(1, Ordering::SeqCst) + 1;
    let _slot = ClientSlot(&shared.clients);
    let mut stop = shared.shutdown.subscribe();
    if shared.control.proxy_stall() {
        tracing::warn!(endpoint = %spec.name, "proxy fault: stalling a new connection");
        let drain = async {
            let mut sink = [0u8; 1024];
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            _ = drain => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        return;
    }
    let handshake = async {
        loop {
            match read_startup(&mut tcp).await? {
                Startup::Ssl => {
                    tcp.write_all(b"S").await?;
                    break;
                }
                Startup::GssEnc => tcp.write_all(b"N").await?,
                Startup::Cancel(packet) => {
                    forward_cancel(&shared, &packet).await;
                    return Ok(None);
                }
                Startup::V3(_) | Startup::Other(_) => {
                    tracing::warn!(endpoint = %spec.name, "refused: startup packet without TLS");
                    refuse(&shared, &mut tcp, SQLSTATE_AUTH_SPEC, MSG_TLS_REQUIRED).await;
                    return Ok(None);
                }
            }
        }
        let mut tls = shared.tls.accept(tcp).await?;
        let params = match read_startup(&mut tls).await? {
            Startup::V3(params) => params,
            Startup::Cancel(packet) => {
                forward_cancel(&shared, &packet).await;
                return Ok(None);
            }
            Startup::Other(version) => {
                tracing::warn!(endpoint = %spec.name, "refused: protocol {}.{}", version >> 16, version & 0xffff);
                refuse(&shared, &mut tls, SQLSTATE_FEATURE, MSG_PROTOCOL).await;
                return Ok(None);
            }
            Startup::Ssl | Startup::GssEnc => {
                return Err(ConnError::Protocol("encryption request inside TLS".into()));
            }
        };
        match login(&shared, &spec, &mut tls, params, count).await? {
            Some(session) => Ok(Some((tls, session))),
            None => Ok(None),
        }
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(LOGIN_TIMEOUT, handshake) => r,
        _ = stop.wait_for(|s| *s) => return,
    };
    let (tls, (backend, db_user, server)) = match outcome {
        Ok(Ok(Some(ok))) => ok,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(endpoint = %spec.name, "connection closed during login: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(endpoint = %spec.name, "login timed out");
            return;
        }
    };
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let _registered = SessionEntry::register(&shared, session, server);
    tracing::info!(endpoint = %spec.name, user = %db_user, session, %server, "session started");
    let idle = Duration::from_secs(shared.config.proxy.idle_client_timeout_seconds.max(1));
    relay(
        tls,
        backend,
        idle,
        stop,
        SessionInfo {
            shared: &shared,
            endpoint: &spec.name,
            session,
        },
    )
    .await;
    tracing::info!(endpoint = %spec.name, user = %db_user, session, "session ended");
}

/// A session's entry in the registry (removed on drop).
struct SessionEntry<'a> {
    shared: &'a ProxyShared,
    id: u64,
}

impl<'a> SessionEntry<'a> {
    fn register(shared: &'a ProxyShared, id: u64, server: SocketAddr) -> SessionEntry<'a> {
        if let Ok(mut s) = shared.sessions.lock() {
            s.insert(id, server);
        }
        SessionEntry { shared, id }
    }
}

impl Drop for SessionEntry<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.sessions.lock() {
            s.remove(&self.id);
        }
    }
}

/// Validates the startup packet, authenticates the token, opens the backend session.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &ProxyShared,
    spec: &EndpointSpec,
    tls: &mut S,
    params: Vec<(String, String)>,
    count: usize,
) -> Result<Option<(TcpStream, String, SocketAddr)>, ConnError> {
    let max = shared.config.proxy.max_client_connections;
    if params.iter().any(|(k, _)| k == "replication") {
        tracing::warn!(endpoint = %spec.name, "refused: replication requested");
        refuse(shared, tls, SQLSTATE_FEATURE, MSG_REPLICATION).await;
        return Ok(None);
    }
    if let Some((k, _)) = params
        .iter()
        .find(|(k, _)| !ACCEPTED_PARAMETERS.contains(&k.as_str()))
    {
        tracing::warn!(endpoint = %spec.name, "refused: unsupported startup option {k}");
        refuse(shared, tls, SQLSTATE_FEATURE, &msg_option(k)).await;
        return Ok(None);
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(user) = get("user").filter(|u| !u.is_empty()).map(str::to_string) else {
        tracing::warn!(endpoint = %spec.name, "refused: no user in the startup packet");
        refuse(shared, tls, SQLSTATE_AUTH_SPEC, MSG_NO_USER).await;
        return Ok(None);
    };
    if count > max {
        tracing::warn!(endpoint = %spec.name, "refused: {count} client connections, limit {max}");
        refuse(shared, tls, SQLSTATE_TOO_MANY, &msg_too_many(max)).await;
        return Ok(None);
    }
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();

    // AuthenticationCleartextPassword.
    tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    tls.flush().await?;
    let tag = tls.read_u8().await?;
    let len = tls.read_u32().await? as usize;
    if tag != b'p' || !(5..=MAX_PASSWORD).contains(&len) {
        return Err(ConnError::Protocol(format!(
            "expected a password message, got {:?} ({len} bytes)",
            char::from(tag)
        )));
    }
    let mut password = vec![0u8; len - 4];
    tls.read_exact(&mut password).await?;
    if password.last() == Some(&0) {
        password.pop();
    }
    let token = String::from_utf8_lossy(&password).into_owned();

    let Some(db_user) = shared.config.proxy.db_users.iter().find(|u| u.name == user) else {
        tracing::warn!(endpoint = %spec.name, %user, "refused: no secret (credentials) for this db user");
        refuse(shared, tls, SQLSTATE_IAM, &msg_no_credentials(&user)).await;
        return Ok(None);
    };
    let expected = Expected {
        hostname: &spec.hostname,
        port: spec.port,
        region: &shared.config.region,
        db_user: &user,
        now: time::OffsetDateTime::now_utc(),
        max_clock_skew: time::Duration::seconds(i64::from(
            shared.config.proxy.max_clock_skew_seconds,
        )),
    };
    let mut caller = None;
    let verified = verify_token(&token, &expected, |akid| {
        shared.iam.lookup(akid).map(|(known, c)| {
            caller = Some(c);
            known
        })
    });
    let lifetime = time::Duration::seconds(i64::from(shared.config.proxy.token_lifetime_seconds));
    let refusal = match (&verified, &caller) {
        (Err(reason), _) => Some(reason.to_string()),
        (Ok(t), _) if expected.now - t.signed_at >= lifetime => Some(format!(
            "token signed at {} is older than token_lifetime_seconds ({} s)",
            t.signed_at,
            lifetime.whole_seconds()
        )),
        (Ok(_), Some(c)) => {
            let resource = shared.config.dbuser_arn(&user);
            if shared.iam.may_connect(c, &resource) {
                None
            } else {
                Some(format!(
                    "{} is not allowed rds-db:connect on {resource}",
                    c.arn
                ))
            }
        }
        (Ok(_), None) => Some("no caller for the access key".to_string()),
    };
    if let Some(reason) = refusal {
        tracing::warn!(endpoint = %spec.name, %user, "refused: IAM authentication failed: {reason}");
        refuse(shared, tls, SQLSTATE_IAM, &msg_iam_failed(&user)).await;
        return Ok(None);
    }
    if let Some(c) = &caller {
        tracing::info!(endpoint = %spec.name, %user, principal = %c.arn, "IAM authentication succeeded");
    }

    let forwarded: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "user" | "database"))
        .cloned()
        .collect();
    let timeout = Duration::from_secs(shared.config.proxy.backend_connect_timeout_seconds.max(1));
    let Some(server) = shared.pick_server(spec.target_role, timeout).await else {
        tracing::error!(endpoint = %spec.name, role = %spec.target_role, "no {} server available within {} s", spec.target_role, timeout.as_secs());
        refuse(shared, tls, SQLSTATE_BACKEND_DOWN, MSG_BORROW_TIMEOUT).await;
        return Ok(None);
    };
    match tokio::time::timeout(
        timeout,
        backend_login(
            server,
            &user,
            &database,
            &db_user.backend_password,
            &forwarded,
        ),
    )
    .await
    {
        Ok(Ok(BackendLogin::Ready(stream))) => {
            // AuthenticationOk; the backend's ParameterStatus, BackendKeyData and
            // ReadyForQuery follow through the relay.
            tls.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).await?;
            tls.flush().await?;
            Control::bump(&shared.control.logins_accepted);
            Ok(Some((stream, user, server)))
        }
        Ok(Ok(BackendLogin::Refused(error_message))) => {
            // PostgreSQL's own refusal (e.g. unknown database): pass it on.
            tracing::warn!(endpoint = %spec.name, %user, "backend refused the session");
            Control::bump(&shared.control.logins_refused);
            let _ = tls.write_all(&error_message).await;
            let _ = tls.flush().await;
            let _ = tls.shutdown().await;
            Ok(None)
        }
        Ok(Err(e)) => {
            tracing::error!(endpoint = %spec.name, backend = %server, "backend unreachable: {e}");
            refuse(shared, tls, SQLSTATE_BACKEND_DOWN, MSG_BACKEND_DOWN).await;
            Ok(None)
        }
        Err(_) => {
            tracing::error!(endpoint = %spec.name, backend = %server, "backend login timed out");
            refuse(shared, tls, SQLSTATE_BACKEND_DOWN, MSG_BACKEND_DOWN).await;
            Ok(None)
        }
    }
}

enum BackendLogin {
    Ready(TcpStream),
    Refused(Vec<u8>),
}

async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> Result<(u8, Vec<u8>), ConnError> {
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    if !(4..=1 << 20).contains(&len) {
        return Err(ConnError::Protocol(format!("backend message length {len}")));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

async fn backend_login(
    addr: SocketAddr,
    user: &str,
    database: &str,
    password: &str,
    params: &[(String, String)],
) -> Result<BackendLogin, ConnError> {
    let mut s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)]
        .into_iter()
        .chain(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    s.write_all(&startup).await?;

    let mut scram: Option<ScramSha256> = None;
    loop {
        let (tag, body) = read_message(&mut s).await?;
        match tag {
            b'E' => return Ok(BackendLogin::Refused(message(b'E', &body))),
            b'R' if body.len() >= 4 => {
                let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let data = &body[4..];
                match code {
                    0 => return Ok(BackendLogin::Ready(s)),
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
                                "backend offers no SCRAM-SHA-256".into(),
                            ));
                        }
                        let sc =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
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
                        sc.update(data)?;
                        let m = sc.message().to_vec();
                        s.write_all(&message(b'p', &m)).await?;
                    }
                    12 => {
                        let sc = scram
                            .as_mut()
                            .ok_or_else(|| ConnError::Protocol("SASLFinal before SASL".into()))?;
                        sc.finish(data)?;
                    }
                    other => {
                        return Err(ConnError::Protocol(format!(
                            "unsupported backend auth request {other}"
                        )))
                    }
                }
            }
            b'N' => {} // NoticeResponse during startup: ignore.
            other => {
                return Err(ConnError::Protocol(format!(
                    "unexpected backend message {:?} during login",
                    char::from(other)
                )))
            }
        }
    }
}

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
struct SessionInfo<'a> {
    shared: &'a ProxyShared,
    endpoint: &'a str,
    session: u64,
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
async fn relay<C: AsyncRead + AsyncWrite + Unpin>(
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
                        Control::bump(&info.shared.control.sessions_pinned);
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
