//! One client connection: its opening, the checks, the upstream session through the
//! target's connector, then the byte relay; or a cancel request forwarded upstream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rds_iam_auth::{BackendKey, Connector, Error, Reason};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::frontend::{self, sqlstate, Opening, OpeningError};

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
    open: AtomicUsize,
    all_closed: Notify,
    /// Cancel keys of open sessions and their target: a cancel request is only forwarded
    /// for a key this proxy handed out on that target's listener.
    keys: Mutex<HashMap<BackendKey, usize>>,
}

impl Sessions {
    pub(crate) fn new(targets: Vec<Served>, max_connections: usize) -> Self {
        Self {
            targets,
            max_connections,
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Client sessions open now (logging in or relaying).
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
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

    /// A slot for one more session, unless the limit is reached.
    fn take_slot(&self) -> Option<Slot<'_>> {
        let max = self.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self))
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<BackendKey, usize>> {
        // A panic while holding this lock leaves a plain map behind: still usable.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One open session, counted until dropped.
struct Slot<'a>(&'a Sessions);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
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
    let Some(_slot) = sessions.take_slot() else {
        let text = format!(
            "too many connections to the local proxy: it allows {} (--max-connections)",
            sessions.max_connections
        );
        tracing::warn!(target = %target.name, client = peer, "refused: {text}");
        return frontend::refuse(&mut client, sqlstate::TOO_MANY, &text).await;
    };
    let upstream_parameters = match frontend::upstream_parameters(&parameters, &target.db_user) {
        Ok(p) => p,
        Err((state, text)) => {
            tracing::warn!(target = %target.name, client = peer, "refused: {text}");
            return frontend::refuse(&mut client, state, &text).await;
        }
    };

    let started = Instant::now();
    let upstream = match target.connector.connect_stream(&upstream_parameters).await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::warn!(target = %target.name, client = peer, stage = %e.stage(), error = %e, "upstream session failed");
            return frontend::refuse(&mut client, client_sqlstate(&e), &e.to_string()).await;
        }
    };
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
            tracing::debug!(target = %target.name, client = peer, to_server, to_client, "session closed");
        }
        Err(e) => {
            tracing::debug!(target = %target.name, client = peer, "session ended: {e}");
        }
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
