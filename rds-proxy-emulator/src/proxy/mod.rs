//! The RDS Proxy stand-in: the PostgreSQL wire protocol with TLS required and IAM
//! authentication, in front of a real PostgreSQL.
//!
//! One connection goes through these steps (the messages are RDS Proxy's, as listed in
//! AWS's "Troubleshooting for RDS Proxy"; they and their SQLSTATEs are in `messages`,
//! e.g. [`MSG_TLS_REQUIRED`], [`msg_iam_failed`], [`SQLSTATE_IAM`]):
//!
//! 1. Plaintext: `SSLRequest` gets `S` and the TLS handshake (certificate for the endpoint
//!    host names); `GSSENCRequest` gets `N`; a `CancelRequest` goes to `cancel` (below);
//!    any startup packet in the clear gets FATAL `This RDS Proxy requires TLS connections.`
//!    Startup packets are read by `wire` ([`parse_startup_packet`]), which also frames
//!    the messages the proxy sends ([`fatal_message`]).
//! 2. Inside TLS, the startup packet is checked: protocol 3.0 only, no replication, only
//!    the startup parameters RDS Proxy accepts ([`ACCEPTED_PARAMETERS`]), a user name;
//!    then the client limit.
//! 3. `AuthenticationCleartextPassword`; the password is the IAM token. One function,
//!    `authorize`, holds every rule for accepting it: the proxy has a secret for the user;
//!    the token verifies ([`crate::token::verify_token`], against the credentials STS
//!    issued and has not revoked); it is younger than `token_lifetime_seconds`; and the
//!    role may `rds-db:connect` on `arn:aws:rds-db:REGION:ACCOUNT:dbuser:prx-ID/USER`.
//!    Every refusal is logged (`tracing`, target `rds_proxy_emulator::proxy`) with its
//!    precise reason; the client sees only the RDS Proxy text.
//!    A db user with `auth = "secret"` (RDS Proxy's `IAMAuth: DISABLED`,
//!    `ClientPasswordAuthType: POSTGRES_SCRAM_SHA_256`) is asked for SCRAM-SHA-256
//!    instead (`AuthenticationSASL`, [`crate::scram`]), checked against the AWSCURRENT
//!    password of its Secrets Manager secret as it is at this login; a wrong password, an
//!    IAM token included, gets PostgreSQL's `password authentication failed for user "X"`
//!    ([`msg_password_failed`]). Its database connections are opened with the secret's
//!    password as it is when each one is opened, so they follow rotations.
//! 4. The greeting: `AuthenticationOk`, the `ParameterStatus` set of the client's pool
//!    (`pool`: one per target role, database user and database) with the client's own
//!    values, a `BackendKeyData` of the proxy's own (`cancel`), `ReadyForQuery`. A login
//!    needs no database connection once its pool has a live one; the first login of a pool
//!    opens one (SCRAM-SHA-256 with the proxy's secret, `backend`), waiting up to the borrow
//!    timeout while no server serves the role.
//! 5. The session (`session`): the client borrows a database connection for each
//!    transaction and gives it back at `ReadyForQuery` idle, unless pinned (`frames` reads
//!    what that decision needs of both message streams, [`crate::pinning`] the conditions;
//!    the first is logged as [`pinning_log_line`] writes it). `relay` pumps the bytes, both
//!    directions in one task. The client's side is always ended with a TLS close_notify;
//!    what the database still sends for a request after the client ended its side is
//!    relayed for up to [`DRAIN_AFTER_CLIENT_END`].
//!
//! The proxy runs on a thread of its own ([`ProxyThread`]). Its gauges and counters carry
//! RDS Proxy's CloudWatch names ([`ProxyMetrics`]). This module runs the steps in order and
//! holds what the endpoints share ([`ProxyShared`]); each step's work is in its own private
//! module named above (`params` holds the session parameters carried between connections),
//! and `endpoint` holds [`EndpointSpec`].

mod authorize;
mod backend;
mod cancel;
mod endpoint;
mod frames;
mod messages;
mod metrics;
mod params;
mod pool;
mod relay;
mod session;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

pub use crate::cluster::Topology;
pub use endpoint::EndpointSpec;
pub use messages::{
    msg_iam_failed, msg_no_credentials, msg_option, msg_password_failed, msg_too_many,
    ACCEPTED_PARAMETERS, MSG_BACKEND_DOWN, MSG_BACKEND_LOST, MSG_BORROW_TIMEOUT, MSG_NO_USER,
    MSG_PROTOCOL, MSG_REPLICATION, MSG_TLS_REQUIRED, SQLSTATE_AUTH_SPEC, SQLSTATE_BACKEND_DOWN,
    SQLSTATE_FEATURE, SQLSTATE_IAM, SQLSTATE_TOO_MANY,
};
pub use metrics::{MetricsSnapshot, ProxyMetrics};
pub use relay::{pinning_log_line, DRAIN_AFTER_CLIENT_END};
pub use wire::{fatal_message, parse_startup_packet, Startup};

/// The relay's framing of both message streams, for the fuzz targets only (`make fuzz`
/// builds with `--cfg fuzzing`); not part of the crate's API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use super::frames::{ClientEvent, ClientScan, ServerScan};
    pub use super::relay::BUFFER;
}

use crate::accept::{accept_with_backoff, Backoff};
use crate::config::{DbAuth, StackConfig};
use crate::control::Control;
use crate::iam::Iam;
use crate::scram::ScramKeys;
use crate::secrets::SecretStore;
use authorize::authorize;
use backend::{send_cancel, BackendPassword};
use cancel::Registry;
use params::SessionParams;
use pool::{BorrowError, PoolKey, Pools, Settings};
use wire::{ask_password, read_startup, sasl_exchange, ConnError};

/// How long a client may take from its first byte to its password.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// State shared by all endpoints of one proxy.
pub struct ProxyShared {
    iam: Arc<Iam>,
    secrets: Arc<SecretStore>,
    config: Arc<StackConfig>,
    pools: Pools,
    cancel_keys: Registry,
    next_session: AtomicU64,
    tls: TlsAcceptor,
    clients: AtomicUsize,
    metrics: Arc<ProxyMetrics>,
    shutdown: watch::Sender<bool>,
    control: Arc<Control>,
}

impl std::fmt::Debug for ProxyShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyShared")
            .field("pools", &self.pools)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

impl ProxyShared {
    /// Shared state for a proxy relaying to the servers of `topology`, obeying `control`'s
    /// faults and counting there; `secrets` holds the passwords of `auth = "secret"` users.
    pub fn new(
        iam: Arc<Iam>,
        secrets: Arc<SecretStore>,
        topology: watch::Receiver<Topology>,
        tls: Arc<rustls::ServerConfig>,
        control: Arc<Control>,
    ) -> Arc<ProxyShared> {
        let config = Arc::new(iam.config().clone());
        let p = &config.proxy;
        let settings = Settings {
            max_connections_percent: p.max_connections_percent,
            max_idle_connections_percent: p.effective_max_idle_connections_percent(),
            borrow_timeout: Duration::from_secs(p.connection_borrow_timeout_seconds.max(1)),
            connect_timeout: Duration::from_secs(p.backend_connect_timeout_seconds.max(1)),
        };
        let metrics = Arc::new(ProxyMetrics::default());
        Arc::new(ProxyShared {
            iam,
            secrets,
            pools: Pools::new(settings, topology, Arc::clone(&metrics)),
            config,
            cancel_keys: Registry::default(),
            next_session: AtomicU64::new(1),
            tls: TlsAcceptor::from(tls),
            clients: AtomicUsize::new(0),
            metrics,
            shutdown: watch::channel(false).0,
            control,
        })
    }

    /// Number of client connections open now.
    pub fn client_connections(&self) -> usize {
        self.clients.load(Ordering::SeqCst)
    }

    /// Client sessions holding a database connection on any of `servers` in a request or a
    /// transaction, or pinned to it: those a failover of these servers closes.
    pub fn sessions_on(&self, servers: &[SocketAddr]) -> usize {
        self.cancel_keys.busy_on(servers)
    }

    /// The metrics now, with CloudWatch's names.
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut m = self.metrics.snapshot();
        m.client_connections = self.client_connections() as u64;
        m
    }

    /// Closes every client connection and stops the listeners.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.pools.shutdown();
    }
}

/// The thread the proxy's endpoints and client sessions run on: a runtime of one thread
/// of its own. Every session is I/O between two sockets, with little work between reads;
/// on one thread, a session woken by the I/O driver runs right there, where a
/// multi-threaded runtime keeps waking its other worker to share the work (about a fifth of
/// the proxy's CPU time, per transaction, in the profile of `make bench-pgbench`). STS and
/// the cluster's operations stay on the stack's own runtime.
#[derive(Debug)]
pub struct ProxyThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyThread {
    /// Starts the thread and its runtime.
    pub fn start() -> Result<ProxyThread, crate::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::Error::io("starting the proxy's runtime", e))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("rds-proxy-emulator-proxy".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Sessions told to stop (ProxyShared::shutdown) get a moment to close TLS.
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(|e| crate::Error::io("starting the proxy's thread", e))?;
        Ok(ProxyThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The runtime to serve endpoints on ([`serve_endpoint`] spawns there).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for ProxyThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
            // The span covers the login (its log lines name the peer); the session's own
            // lines name the session, which "session started" ties to the peer. Entering a
            // span on every poll of a relay costs more than the relay's own work.
            let span = tracing::info_span!("proxy", %peer);
            tokio::spawn(handle_client(shared, spec, stream, span));
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

/// Sends a CancelRequest on to the database connection the client with that key holds
/// now, with that connection's own key; unknown keys and idle clients are ignored.
async fn forward_cancel(shared: &ProxyShared, packet: &[u8]) {
    let Some(key) = packet.get(8..16) else {
        return;
    };
    match shared.cancel_keys.cancel_target(key) {
        Some((addr, backend_key)) => {
            tracing::info!(backend = %addr, "cancel request forwarded");
            send_cancel(addr, backend_key).await;
        }
        None => tracing::debug!("cancel request for no running request: ignored"),
    }
}

/// An authenticated login, ready for its greeting.
struct Admitted {
    user: String,
    database: String,
    params: SessionParams,
    password: BackendPassword,
}

async fn handle_client(
    shared: Arc<ProxyShared>,
    spec: Arc<EndpointSpec>,
    mut tcp: TcpStream,
    span: tracing::Span,
) {
    let login_span = span.clone();
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
                    ProxyMetrics::add(&shared.metrics.client_connections_no_tls, 1);
                    ProxyMetrics::bump(&shared.metrics.client_connections_setup_failed_auth);
                    refuse(&shared, &mut tcp, SQLSTATE_AUTH_SPEC, MSG_TLS_REQUIRED).await;
                    ProxyMetrics::add(&shared.metrics.client_connections_no_tls, -1);
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
            Some(admitted) => Ok(Some((tls, admitted))),
            None => Ok(None),
        }
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(LOGIN_TIMEOUT, handshake).instrument(login_span.clone()) => r,
        _ = stop.wait_for(|s| *s) => return,
    };
    let greeted = async {
        let (mut tls, admitted) = match outcome {
            Ok(Ok(Some(ok))) => ok,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %spec.name, "connection closed during login: {e}");
                return None;
            }
            Err(_) => {
                tracing::info!(endpoint = %spec.name, "login timed out");
                return None;
            }
        };
        let key = PoolKey {
            role: spec.target_role,
            user: admitted.user.as_str().into(),
            database: admitted.database.as_str().into(),
        };
        let pool = shared.pools.pool(&key);
        let greeting = tokio::select! {
            g = shared.pools.greeting(pool, &admitted.params, &admitted.password) => g,
            _ = stop.wait_for(|s| *s) => return None,
        };
        let greeting = match greeting {
            Ok(g) => g,
            Err(BorrowError::Timeout) => {
                tracing::error!(endpoint = %spec.name, role = %spec.target_role, "no {} database connection within {} s", spec.target_role, shared.pools.borrow_timeout().as_secs());
                refuse(&shared, &mut tls, SQLSTATE_BACKEND_DOWN, MSG_BORROW_TIMEOUT).await;
                return None;
            }
            Err(BorrowError::Refused(error_message)) => {
                // PostgreSQL's own refusal (e.g. unknown database): pass it on.
                tracing::warn!(endpoint = %spec.name, user = %admitted.user, "the database refused the session");
                Control::bump(&shared.control.logins_refused);
                let _ = tls.write_all(&error_message).await;
                let _ = tls.flush().await;
                let _ = tls.shutdown().await;
                return None;
            }
            Err(BorrowError::Unreachable(why)) => {
                tracing::error!(endpoint = %spec.name, "database unreachable: {why}");
                refuse(&shared, &mut tls, SQLSTATE_BACKEND_DOWN, MSG_BACKEND_DOWN).await;
                return None;
            }
        };
        let registered = shared.cancel_keys.register();
        let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
        // AuthenticationOk, the pool's ParameterStatus set, the client's own key, idle.
        let mut hello = Vec::with_capacity(greeting.len() + 40);
        hello.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        hello.extend_from_slice(&greeting);
        hello.extend_from_slice(&[b'K', 0, 0, 0, 12]);
        hello.extend_from_slice(&registered.key);
        hello.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        if tls.write_all(&hello).await.is_err() || tls.flush().await.is_err() {
            return None;
        }
        Control::bump(&shared.control.logins_accepted);
        tracing::info!(endpoint = %spec.name, user = %admitted.user, session, "session started");
        Some((tls, admitted, pool, registered, session))
    }
    .instrument(login_span)
    .await;
    let Some((tls, admitted, pool, registered, session)) = greeted else {
        return;
    };
    let idle = Duration::from_secs(shared.config.proxy.idle_client_timeout_seconds.max(1));
    session::run(
        tls,
        session::Context {
            pools: &shared.pools,
            pool,
            params: admitted.params,
            password: &admitted.password,
            slot: &registered.slot,
            control: &shared.control,
            metrics: &shared.metrics,
            endpoint: &spec.name,
            session,
            idle,
        },
        stop,
    )
    .await;
    tracing::info!(endpoint = %spec.name, user = %admitted.user, session, "session ended");
}

/// Validates the startup packet and authenticates the token.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &ProxyShared,
    spec: &EndpointSpec,
    tls: &mut S,
    params: Vec<(String, String)>,
    count: usize,
) -> Result<Option<Admitted>, ConnError> {
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

    let password_user = shared
        .config
        .proxy
        .db_users
        .iter()
        .find(|u| u.name == user && u.auth == DbAuth::Secret);
    if let Some(secret) = password_user.and_then(|u| u.secret.clone()) {
        let Some(password) = shared.secrets.current_password(&secret) else {
            tracing::warn!(endpoint = %spec.name, %user, "refused: secret {secret} holds no password");
            refuse(shared, tls, SQLSTATE_IAM, &msg_no_credentials(&user)).await;
            return Ok(None);
        };
        if let Err(e) = sasl_exchange(tls, ScramKeys::new(&password)).await? {
            tracing::warn!(endpoint = %spec.name, %user, "refused: password authentication failed: {e}");
            ProxyMetrics::bump(&shared.metrics.client_connections_setup_failed_auth);
            refuse(shared, tls, SQLSTATE_IAM, &msg_password_failed(&user)).await;
            return Ok(None);
        }
        tracing::info!(endpoint = %spec.name, %user, "password authentication succeeded");
        return Ok(Some(Admitted {
            password: BackendPassword::Secret(Arc::clone(&shared.secrets), secret),
            params: SessionParams::from_startup(&params),
            user,
            database,
        }));
    }
    let token = ask_password(tls).await?;
    let now = time::OffsetDateTime::now_utc();
    let accepted = match authorize(&shared.config, &shared.iam, spec, &user, &token, now) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            tracing::warn!(endpoint = %spec.name, %user, "refused: {}", refusal.reason);
            ProxyMetrics::bump(&shared.metrics.client_connections_setup_failed_auth);
            refuse(shared, tls, refusal.sqlstate, &refusal.message).await;
            return Ok(None);
        }
    };
    tracing::info!(endpoint = %spec.name, %user, principal = %accepted.caller.arn, "IAM authentication succeeded");
    Ok(Some(Admitted {
        password: BackendPassword::Fixed(accepted.db_user.backend_password.clone()),
        params: SessionParams::from_startup(&params),
        user,
        database,
    }))
}
