//! One client connection: its opening, the checks, the upstream session through the
//! target's connector, then the byte relay; or a cancel request forwarded upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rds_iam_auth::{BackendKey, Connector, Error, Reason};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::frontend::{self, sqlstate, Opening, OpeningError};
use crate::metrics::{Metrics, Refusal};
use crate::scram::{ScramError, ScramVerifier, MECHANISM};

/// How long a client may take to send its startup packet (PostgreSQL's
/// `authentication_timeout` default).
const OPENING_TIMEOUT: Duration = Duration::from_secs(60);

/// A target as the sessions see it.
pub(crate) struct Served {
    pub(crate) name: String,
    pub(crate) connector: Connector,
    pub(crate) db_user: String,
}

/// What every session shares.
pub(crate) struct Sessions {
    pub(crate) targets: Vec<Served>,
    /// Most open client sessions over all targets; 0: no limit.
    pub(crate) max_connections: usize,
    /// The password local clients must present, when the operator set one.
    pub(crate) client_password: Option<ScramVerifier>,
    /// Counts, and the number of open sessions the limit applies to.
    pub(crate) metrics: Arc<Metrics>,
    all_closed: Notify,
    /// Cancel keys of open sessions and their target: a cancel request is only forwarded
    /// for a key this proxy handed out on that target's listener.
    keys: Mutex<HashMap<BackendKey, usize>>,
}

impl Sessions {
    pub(crate) fn new(
        targets: Vec<Served>,
        max_connections: usize,
        client_password: Option<ScramVerifier>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            targets,
            max_connections,
            client_password,
            metrics,
            all_closed: Notify::new(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Client sessions open now (logging in or relaying).
    pub(crate) fn open(&self) -> usize {
        self.metrics.open_total()
    }

    /// Waits until no session is open.
    pub(crate) async fn all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// A slot for one more session of target `t`, unless the limit is reached.
    fn take_slot(&self, t: usize) -> Option<Slot<'_>> {
        self.metrics
            .try_open(t, self.max_connections)
            .then_some(Slot(self, t))
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<BackendKey, usize>> {
        // A panic while holding this lock leaves a plain map behind: still usable.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One open session of a target, counted until dropped.
struct Slot<'a>(&'a Sessions, usize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.metrics.closed(self.1);
        if self.0.open() == 0 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// A registered cancel key, removed when the session ends.
struct KeyEntry<'a>(&'a Sessions, Option<BackendKey>);

impl Drop for KeyEntry<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.1 {
            self.0.keys().remove(&key);
        }
    }
}

/// The SQLSTATE a client reads for an upstream failure: the server's when it sent one,
/// else what libpq reports for a connection it could not establish.
pub(crate) fn client_sqlstate(error: &Error) -> &str {
    match (error.sqlstate(), error.reason()) {
        (Some(code), _) => code,
        (None, Reason::IamRefused) => sqlstate::INVALID_PASSWORD,
        (None, _) => sqlstate::CANNOT_CONNECT,
    }
}

/// Serves one client of target `t`, from its first byte to its last.
pub(crate) async fn serve<S>(sessions: &Sessions, t: usize, mut client: S, peer: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = &sessions.targets[t];
    let opening = match tokio::time::timeout(OPENING_TIMEOUT, frontend::read_opening(&mut client))
        .await
    {
        Ok(Ok(opening)) => opening,
        Ok(Err(OpeningError::Refused(state, text))) => {
            tracing::warn!(target = %target.name, client = peer, "refused: {text}");
            return frontend::refuse(&mut client, state, &text).await;
        }
        Ok(Err(OpeningError::Io(e))) => {
            tracing::debug!(target = %target.name, client = peer, "closed before its startup: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(target = %target.name, client = peer, "no startup packet in {OPENING_TIMEOUT:?}");
            return;
        }
    };
    let parameters = match opening {
        Opening::Cancel(key) => return cancel(sessions, t, key).await,
        Opening::Startup(parameters) => parameters,
    };
    let metrics = &sessions.metrics;
    let Some(_slot) = sessions.take_slot(t) else {
        let text = format!(
            "too many connections to the local proxy: it allows {} (--max-connections)",
            sessions.max_connections
        );
        tracing::warn!(target = %target.name, client = peer, "refused: {text}");
        metrics.refused(t, Refusal::MaxConnections);
        return frontend::refuse(&mut client, sqlstate::TOO_MANY, &text).await;
    };
    let upstream_parameters = match frontend::upstream_parameters(&parameters, &target.db_user) {
        Ok(p) => p,
        Err((state, text)) => {
            tracing::warn!(target = %target.name, client = peer, "refused: {text}");
            let reason = if state == sqlstate::AUTH_SPEC {
                Refusal::User
            } else {
                Refusal::Protocol
            };
            metrics.refused(t, reason);
            return frontend::refuse(&mut client, state, &text).await;
        }
    };
    if let Some(verifier) = &sessions.client_password {
        if let Err(e) = authenticate(&mut client, verifier).await {
            let (state, text, reason) = match e {
                AuthError::Scram(e) => {
                    let reason = if e.is_wrong_password() {
                        Refusal::Password
                    } else {
                        Refusal::Protocol
                    };
                    (e.sqlstate(), e.message(&target.db_user), reason)
                }
                AuthError::Opening(OpeningError::Refused(state, text)) => {
                    (state, text, Refusal::Protocol)
                }
                AuthError::Opening(OpeningError::Io(e)) => {
                    tracing::debug!(target = %target.name, client = peer, "closed during authentication: {e}");
                    return;
                }
            };
            tracing::warn!(target = %target.name, client = peer, "refused: {text}");
            metrics.refused(t, reason);
            return frontend::refuse(&mut client, state, &text).await;
        }
    }

    let started = Instant::now();
    let upstream = match target.connector.connect_stream(&upstream_parameters).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::warn!(target = %target.name, client = peer, stage = %e.stage(), error = %e, "upstream session failed");
            metrics.failed(t, e.stage());
            return frontend::refuse(&mut client, client_sqlstate(&e), &e.to_string()).await;
        }
    };
    metrics.connect_time(t, started.elapsed());
    tracing::debug!(target = %target.name, client = peer, took = ?started.elapsed(), "session open");
    let _key = KeyEntry(sessions, upstream.backend_key());
    if let Some(key) = upstream.backend_key() {
        sessions.keys().insert(key, t);
    }
    let mut hello =
        Vec::with_capacity(frontend::AUTHENTICATION_OK.len() + upstream.greeting().len());
    hello.extend_from_slice(&frontend::AUTHENTICATION_OK);
    hello.extend_from_slice(upstream.greeting());
    if client.write_all(&hello).await.is_err() {
        return;
    }
    let mut server = upstream.into_stream();
    match tokio::io::copy_bidirectional(&mut client, &mut server).await {
        Ok((to_server, to_client)) => {
            metrics.bytes(t, to_server, to_client);
            tracing::debug!(target = %target.name, client = peer, to_server, to_client, "session closed");
        }
        Err(e) => {
            tracing::debug!(target = %target.name, client = peer, "session ended: {e}");
        }
    }
}

enum AuthError {
    Opening(OpeningError),
    Scram(ScramError),
}

impl From<OpeningError> for AuthError {
    fn from(e: OpeningError) -> Self {
        AuthError::Opening(e)
    }
}

impl From<std::io::Error> for AuthError {
    fn from(e: std::io::Error) -> Self {
        AuthError::Opening(OpeningError::Io(e))
    }
}

/// The SASL exchange of the local password (SCRAM-SHA-256, as PostgreSQL runs it):
/// `AuthenticationSASL`, the client's first message, `SASLContinue`, the client's proof,
/// `SASLFinal`. `AuthenticationOk` follows once the upstream session is open.
async fn authenticate<S>(client: &mut S, verifier: &ScramVerifier) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    const SASL: u32 = 10;
    const SASL_CONTINUE: u32 = 11;
    const SASL_FINAL: u32 = 12;
    let mut mechanisms = MECHANISM.as_bytes().to_vec();
    mechanisms.extend_from_slice(b"\0\0");
    client
        .write_all(&frontend::authentication(SASL, &mechanisms))
        .await?;

    let mut exchange = verifier.start();
    let body = password_message(client).await?;
    // SASLInitialResponse: mechanism\0, then the length of the data (-1: none), the data.
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(ScramError::Malformed(
            "SASLInitialResponse without a mechanism",
        ))
        .map_err(AuthError::Scram)?;
    let mechanism = String::from_utf8_lossy(&body[..nul]).into_owned();
    let data = body.get(nul + 5..).unwrap_or_default();
    let server_first = exchange
        .client_first(&mechanism, data)
        .map_err(AuthError::Scram)?;
    client
        .write_all(&frontend::authentication(SASL_CONTINUE, &server_first))
        .await?;

    let proof = password_message(client).await?;
    let server_final = exchange.client_final(&proof).map_err(AuthError::Scram)?;
    client
        .write_all(&frontend::authentication(SASL_FINAL, &server_final))
        .await?;
    Ok(())
}

/// The body of the client's next `p` message (password, SASL).
async fn password_message<S: AsyncRead + Unpin>(client: &mut S) -> Result<Vec<u8>, AuthError> {
    match frontend::read_message(client).await? {
        (b'p', body) => Ok(body),
        (tag, _) => Err(AuthError::Opening(OpeningError::Refused(
            sqlstate::PROTOCOL,
            format!(
                "expected a SASL response, got message {:?}",
                char::from(tag)
            ),
        ))),
    }
}

/// Forwards a cancel request for a key this target's sessions hold; others are dropped,
/// as PostgreSQL drops a key it does not know (the client is never told either way).
async fn cancel(sessions: &Sessions, t: usize, key: BackendKey) {
    let target = &sessions.targets[t];
    let known = sessions.keys().get(&key) == Some(&t);
    if !known {
        tracing::debug!(target = %target.name, "cancel request for an unknown key: dropped");
        return;
    }
    match target.connector.cancel(key).await {
        Ok(()) => tracing::info!(target = %target.name, "cancel request forwarded"),
        Err(e) => tracing::warn!(target = %target.name, error = %e, "cancel request not delivered"),
    }
}
