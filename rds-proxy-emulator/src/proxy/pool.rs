//! The connection pools: database connections opened once and lent to clients one
//! transaction at a time, as RDS Proxy's ("RDS Proxy concepts and terminology",
//! "Configuring connection settings").
//!
//! - One pool per target role (the writer; the readers), database user and database.
//!   Connections of one pool are never lent to a client of another.
//! - Per server, the connections of all pools together are capped at
//!   `max_connections × max_connections_percent / 100` (`max_connections` is read from the
//!   server on its first connection); idle ones beyond
//!   `max_connections × max_idle_connections_percent / 100` are closed when given back.
//! - A borrow takes an idle connection (the most recently used, preferring one whose
//!   tracked parameters already match), else opens one if the cap allows, else waits in
//!   line for one given back, up to `connection_borrow_timeout_seconds`. It also waits
//!   while the topology has no server for the role (a failover, a reader being built).
//! - Idle connections on a server that left the role (a stopped writer) or that look dead
//!   are closed when met.
//! - The `ParameterStatus` set a client is greeted with comes from the pool's connections:
//!   the set of the pool's first login, with the client's own values for the tracked
//!   parameters (as PostgreSQL reported them once a connection was given those values,
//!   else as the client sent them). A login needs no connection of its own once the pool
//!   has one that is alive.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::backend::{BackendConn, BackendPassword, OpenError};
use super::frames::header;
use super::metrics::ProxyMetrics;
use super::params::SessionParams;
use super::wire::{message, ConnError};
use crate::cluster::Topology;
use crate::config::TargetRole;

/// The pools' knobs.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// `MaxConnectionsPercent`.
    pub(super) max_connections_percent: u32,
    /// `MaxIdleConnectionsPercent`.
    pub(super) max_idle_connections_percent: u32,
    /// `ConnectionBorrowTimeout`.
    pub(super) borrow_timeout: Duration,
    /// How long opening one database connection may take.
    pub(super) connect_timeout: Duration,
}

/// Which pool: target role, database user, database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    pub(super) role: TargetRole,
    pub(super) user: Arc<str>,
    pub(super) database: Arc<str>,
}

/// A pool, as the sessions and connections of the pool name it (no hashing per borrow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PoolId {
    index: usize,
    role: TargetRole,
}

/// Why no connection was lent.
#[derive(Debug)]
pub(super) enum BorrowError {
    /// None became available within `ConnectionBorrowTimeout`.
    Timeout,
    /// PostgreSQL refused the session: its `ErrorResponse`, to pass on.
    Refused(Vec<u8>),
    /// The database could not be reached.
    Unreachable(String),
}

/// The pools of one proxy.
#[derive(Clone)]
pub(super) struct Pools {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

struct Shared {
    settings: Settings,
    topology: watch::Receiver<Topology>,
    metrics: Arc<ProxyMetrics>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    servers: HashMap<SocketAddr, Server>,
    /// By [`PoolId::index`].
    pools: Vec<Pool>,
    index: HashMap<PoolKey, usize>,
    /// Borrowers waiting in line, per target role (the writer's, the readers').
    waiters: [VecDeque<Waiter>; 2],
    next_reader: usize,
    closed: bool,
}

#[derive(Default)]
struct Server {
    /// Connections open or being opened, all pools.
    open: usize,
    /// Of which idle in a pool.
    idle: usize,
    /// Read on the first connection.
    max_connections: Option<u32>,
}

struct Pool {
    key: PoolKey,
    /// Most recently used last.
    idle: Vec<Backend>,
    /// Connections open or being opened.
    open: usize,
    /// The `ParameterStatus` set of a login without tracked parameters.
    base: Option<Arc<[u8]>>,
    /// The set as PostgreSQL reported it with given tracked parameters, learned when a
    /// connection was given them.
    exact: HashMap<SessionParams, Arc<[u8]>>,
}

struct Waiter {
    pool: PoolId,
    tx: oneshot::Sender<Grant>,
}

enum Grant {
    /// A connection of the waiter's pool, given back by another client.
    Conn(Backend),
    /// Room to open one.
    Slot(Reservation),
}

fn role_index(role: TargetRole) -> usize {
    match role {
        TargetRole::ReadWrite => 0,
        TargetRole::ReadOnly => 1,
    }
}

fn candidates(t: &Topology, role: TargetRole) -> &[SocketAddr] {
    match role {
        TargetRole::ReadWrite => t.writer.as_slice(),
        TargetRole::ReadOnly => &t.readers,
    }
}

fn role_of(t: &Topology, addr: SocketAddr) -> Option<TargetRole> {
    if t.writer == Some(addr) {
        Some(TargetRole::ReadWrite)
    } else if t.readers.contains(&addr) {
        Some(TargetRole::ReadOnly)
    } else {
        None
    }
}

impl Server {
    fn cap(&self, pct: u32) -> Option<usize> {
        self.max_connections
            .map(|m| ((m as usize * pct as usize) / 100).max(1))
    }

    /// Whether one more connection may be opened. Until `max_connections` is known, one
    /// at a time: the first connection reads it.
    fn has_room(&self, pct: u32) -> bool {
        match self.cap(pct) {
            Some(cap) => self.open < cap,
            None => self.open == 0,
        }
    }
}

/// Room for one connection on a server, counted against its cap until dropped (or turned
/// into a [`Backend`]).
pub(super) struct Reservation {
    addr: SocketAddr,
    pool: PoolId,
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.shared.closed(self.addr, self.pool);
        }
    }
}

/// A database connection of a pool, counted against its server's cap until dropped (which
/// closes it). Dereferences to the connection.
pub(super) struct Backend {
    conn: BackendConn,
    pool: PoolId,
    shared: Arc<Shared>,
    borrowed: bool,
    pinned: bool,
    in_transaction: bool,
}

impl std::ops::Deref for Backend {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        &self.conn
    }
}

impl std::ops::DerefMut for Backend {
    fn deref_mut(&mut self) -> &mut BackendConn {
        &mut self.conn
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.set_borrowed(false);
        self.set_pinned(false);
        self.set_in_transaction(false);
        ProxyMetrics::add(&self.shared.metrics.database_connections, -1);
        self.shared.closed(self.conn.addr, self.pool);
    }
}

impl Backend {
    fn set_flag(
        metrics: &ProxyMetrics,
        flag: &mut bool,
        on: bool,
        gauge: fn(&ProxyMetrics) -> &std::sync::atomic::AtomicI64,
    ) {
        if *flag != on {
            *flag = on;
            ProxyMetrics::add(gauge(metrics), if on { 1 } else { -1 });
        }
    }

    fn set_borrowed(&mut self, on: bool) {
        Backend::set_flag(&self.shared.metrics, &mut self.borrowed, on, |m| {
            &m.borrowed
        });
    }

    /// Counts the connection as kept by its client for the rest of the session
    /// (`DatabaseConnectionsCurrentlySessionPinned`).
    pub(super) fn set_pinned(&mut self, on: bool) {
        Backend::set_flag(&self.shared.metrics, &mut self.pinned, on, |m| {
            &m.session_pinned
        });
    }

    /// Counts the connection as in a transaction block
    /// (`DatabaseConnectionsCurrentlyInTransaction`).
    pub(super) fn set_in_transaction(&mut self, on: bool) {
        Backend::set_flag(&self.shared.metrics, &mut self.in_transaction, on, |m| {
            &m.in_transaction
        });
    }

    /// The target role of its pool.
    pub(super) fn role(&self) -> TargetRole {
        self.pool.role
    }
}

impl Shared {
    /// A connection (or a reservation) on `addr` of pool `key` is gone: its room goes to
    /// the first borrower waiting for that server's role.
    fn closed(self: &Arc<Shared>, addr: SocketAddr, pool: PoolId) {
        let mut orphans = Vec::new();
        if let Ok(mut st) = self.state.lock() {
            if let Some(s) = st.servers.get_mut(&addr) {
                s.open = s.open.saturating_sub(1);
            }
            if let Some(p) = st.pools.get_mut(pool.index) {
                p.open = p.open.saturating_sub(1);
            }
            self.grant_room(&mut st, addr, &mut orphans);
        }
        // Grants whose waiter left are dropped here, outside the lock.
        drop(orphans);
    }

    /// Hands room on `addr` to waiters for the server's role while there is some.
    fn grant_room(self: &Arc<Shared>, st: &mut State, addr: SocketAddr, orphans: &mut Vec<Grant>) {
        if st.closed {
            return;
        }
        let Some(role) = role_of(&self.topology.borrow(), addr) else {
            return;
        };
        let pct = self.settings.max_connections_percent;
        while st.servers.get(&addr).is_some_and(|s| s.has_room(pct)) {
            let Some(w) = st.waiters[role_index(role)].pop_front() else {
                return;
            };
            if w.tx.is_closed() {
                continue;
            }
            st.servers.entry(addr).or_default().open += 1;
            st.pools[w.pool.index].open += 1;
            let r = Reservation {
                addr,
                pool: w.pool,
                shared: Arc::clone(self),
                armed: true,
            };
            if let Err(g) = w.tx.send(Grant::Slot(r)) {
                // Gone meanwhile: dropped outside the lock, which gives the room back.
                orphans.push(g);
                return;
            }
        }
    }

    /// Takes room on a server of `candidates` for `pool`, if one has some (readers in
    /// turn).
    fn reserve(
        self: &Arc<Shared>,
        st: &mut State,
        pool: PoolId,
        cands: &[SocketAddr],
    ) -> Option<Reservation> {
        let pct = self.settings.max_connections_percent;
        let n = cands.len();
        let start = st.next_reader;
        st.next_reader = st.next_reader.wrapping_add(1);
        let addr = (0..n)
            .map(|i| cands[(start + i) % n])
            .find(|a| st.servers.entry(*a).or_default().has_room(pct))?;
        st.servers.entry(addr).or_default().open += 1;
        st.pools[pool.index].open += 1;
        Some(Reservation {
            addr,
            pool,
            shared: Arc::clone(self),
            armed: true,
        })
    }

    /// Takes the best idle connection of `pool` on a server of `cands`: the most
    /// recently used one with `params`, else the most recently used. Connections on other
    /// servers, or that look dead, are moved to `dead`.
    fn take_idle(
        st: &mut State,
        pool: PoolId,
        cands: &[SocketAddr],
        params: &SessionParams,
        dead: &mut Vec<Backend>,
    ) -> Option<Backend> {
        let State { pools, servers, .. } = st;
        let pool = pools.get_mut(pool.index)?;
        let mut i = pool.idle.len();
        while i > 0 {
            i -= 1;
            let b = &pool.idle[i];
            if !cands.contains(&b.conn.addr) || !b.conn.looks_alive() {
                let b = pool.idle.remove(i);
                if let Some(s) = servers.get_mut(&b.conn.addr) {
                    s.idle -= 1;
                }
                dead.push(b);
            }
        }
        let pick = pool
            .idle
            .iter()
            .rposition(|b| b.conn.params == *params)
            .or_else(|| pool.idle.len().checked_sub(1))?;
        let b = pool.idle.remove(pick);
        if let Some(s) = servers.get_mut(&b.conn.addr) {
            s.idle -= 1;
        }
        Some(b)
    }
}

impl Reservation {
    /// Opens the connection this reservation has room for.
    async fn open(mut self, password: &BackendPassword) -> Result<Backend, BorrowError> {
        // Read now, not at the client's login: a rotated secret's new password is the one
        // PostgreSQL takes.
        let password = password.current().ok_or_else(|| {
            BorrowError::Unreachable("the db user's secret has no password".into())
        })?;
        let shared = Arc::clone(&self.shared);
        ProxyMetrics::bump(&shared.metrics.database_connection_requests);
        let key = shared
            .state
            .lock()
            .map_err(|_| BorrowError::Unreachable("pool state poisoned".into()))?
            .pools[self.pool.index]
            .key
            .clone();
        let opened = tokio::time::timeout(
            shared.settings.connect_timeout,
            BackendConn::open(self.addr, &key.user, &key.database, &password),
        )
        .await;
        let mut conn = match opened {
            Ok(Ok(conn)) => conn,
            Ok(Err(OpenError::Refused(m))) => return Err(BorrowError::Refused(m)),
            Ok(Err(OpenError::Failed(e))) => {
                return Err(BorrowError::Unreachable(format!("{}: {e}", self.addr)))
            }
            Err(_) => {
                return Err(BorrowError::Unreachable(format!(
                    "{}: no session within {} s",
                    self.addr,
                    shared.settings.connect_timeout.as_secs()
                )))
            }
        };
        let learn = shared
            .state
            .lock()
            .map(|st| {
                st.servers
                    .get(&self.addr)
                    .is_some_and(|s| s.max_connections.is_none())
            })
            .unwrap_or(false);
        if learn {
            let max = conn
                .max_connections()
                .await
                .map_err(|e| BorrowError::Unreachable(format!("{}: {e}", self.addr)))?;
            shared.learned(self.addr, max);
        }
        self.armed = false;
        ProxyMetrics::add(&shared.metrics.database_connections, 1);
        let mut b = Backend {
            conn,
            pool: self.pool,
            shared,
            borrowed: false,
            pinned: false,
            in_transaction: false,
        };
        b.set_borrowed(true);
        Ok(b)
    }
}

impl Shared {
    /// A server's `max_connections` is known: its cap applies, waiters get the room.
    fn learned(self: &Arc<Shared>, addr: SocketAddr, max_connections: u32) {
        let mut orphans = Vec::new();
        if let Ok(mut st) = self.state.lock() {
            st.servers.entry(addr).or_default().max_connections = Some(max_connections);
            let t = self.topology.borrow().clone();
            let pct = self.settings.max_connections_percent;
            let allowed: usize = t
                .all()
                .iter()
                .filter_map(|a| st.servers.get(a).and_then(|s| s.cap(pct)))
                .sum();
            self.metrics
                .max_allowed
                .store(allowed as i64, std::sync::atomic::Ordering::Relaxed);
            self.grant_room(&mut st, addr, &mut orphans);
        }
        drop(orphans);
    }
}

impl Pools {
    /// Pools following `topology`.
    pub(super) fn new(
        settings: Settings,
        topology: watch::Receiver<Topology>,
        metrics: Arc<ProxyMetrics>,
    ) -> Pools {
        Pools {
            shared: Arc::new(Shared {
                settings,
                topology,
                metrics,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The pool for `key` (created on first use).
    pub(super) fn pool(&self, key: &PoolKey) -> PoolId {
        let mut st = match self.shared.state.lock() {
            Ok(st) => st,
            Err(p) => p.into_inner(),
        };
        let index = match st.index.get(key) {
            Some(i) => *i,
            None => {
                let i = st.pools.len();
                st.pools.push(Pool {
                    key: key.clone(),
                    idle: Vec::new(),
                    open: 0,
                    base: None,
                    exact: HashMap::new(),
                });
                st.index.insert(key.clone(), i);
                i
            }
        };
        PoolId {
            index,
            role: key.role,
        }
    }

    /// The borrow timeout.
    pub(super) fn borrow_timeout(&self) -> Duration {
        self.shared.settings.borrow_timeout
    }

    /// Whether `addr` still serves `role` (a failover moves the writer).
    pub(super) fn serves(&self, addr: SocketAddr, role: TargetRole) -> bool {
        role_of(&self.shared.topology.borrow(), addr) == Some(role)
    }

    /// Lends a connection of `pool`, its tracked parameters not yet restored to `params`
    /// (see [`Pools::restore`]); `password` gives the proxy's secret for opening one.
    pub(super) async fn borrow(
        &self,
        pool: PoolId,
        params: &SessionParams,
        password: &BackendPassword,
    ) -> Result<Backend, BorrowError> {
        let shared = &self.shared;
        let deadline = Instant::now() + shared.settings.borrow_timeout;
        let mut topology = shared.topology.clone();
        loop {
            enum Next {
                Lent(Backend),
                Open(Reservation),
                Wait(oneshot::Receiver<Grant>),
                NoServer,
            }
            let mut dead = Vec::new();
            let next = {
                let mut st = shared
                    .state
                    .lock()
                    .map_err(|_| BorrowError::Unreachable("pool state poisoned".into()))?;
                if st.closed {
                    return Err(BorrowError::Unreachable(
                        "the proxy is shutting down".into(),
                    ));
                }
                let t = topology.borrow_and_update();
                let cands = candidates(&t, pool.role);
                if cands.is_empty() {
                    Next::NoServer
                } else if let Some(b) = Shared::take_idle(&mut st, pool, cands, params, &mut dead) {
                    Next::Lent(b)
                } else if let Some(r) = shared.reserve(&mut st, pool, cands) {
                    Next::Open(r)
                } else {
                    let (tx, rx) = oneshot::channel();
                    st.waiters[role_index(pool.role)].push_back(Waiter { pool, tx });
                    Next::Wait(rx)
                }
            };
            drop(dead);
            let grant = match next {
                Next::Lent(mut b) => {
                    b.set_borrowed(true);
                    return Ok(b);
                }
                Next::Open(r) => return r.open(password).await,
                Next::Wait(mut rx) => {
                    tokio::select! {
                        g = &mut rx => g.ok(),
                        _ = topology.changed() => rx.try_recv().ok(),
                        _ = tokio::time::sleep_until(deadline) => match rx.try_recv() {
                            Ok(g) => Some(g),
                            Err(_) => {
                                ProxyMetrics::bump(&shared.metrics.borrow_timeouts);
                                return Err(BorrowError::Timeout);
                            }
                        },
                    }
                }
                Next::NoServer => {
                    tokio::select! {
                        _ = topology.changed() => None,
                        _ = tokio::time::sleep_until(deadline) => {
                            ProxyMetrics::bump(&shared.metrics.borrow_timeouts);
                            return Err(BorrowError::Timeout);
                        }
                    }
                }
            };
            match grant {
                Some(Grant::Conn(mut b)) => {
                    b.set_borrowed(true);
                    return Ok(b);
                }
                // The role may have moved while the waiter waited.
                Some(Grant::Slot(r)) if self.serves(r.addr, pool.role) => {
                    return r.open(password).await;
                }
                Some(Grant::Slot(_)) | None => {}
            }
            if Instant::now() >= deadline {
                ProxyMetrics::bump(&shared.metrics.borrow_timeouts);
                return Err(BorrowError::Timeout);
            }
        }
    }

    /// Gives a connection back (its client's transaction is over and it holds nothing the
    /// next client could see): to the first borrower waiting for it, else to the idle
    /// connections, else (over the idle cap, on a server that left the role) it is closed.
    pub(super) fn release(&self, mut b: Backend) {
        b.set_pinned(false);
        b.set_in_transaction(false);
        b.set_borrowed(false);
        let shared = &self.shared;
        let mut orphans = Vec::new();
        let mut close = None;
        if let Ok(mut st) = shared.state.lock() {
            let role = role_of(&shared.topology.borrow(), b.conn.addr);
            if st.closed || role != Some(b.pool.role) {
                close = Some(b);
            } else {
                let q = role_index(b.pool.role);
                let mut b = Some(b);
                while let Some(conn) = b.take() {
                    let Some(w) = st.waiters[q].pop_front() else {
                        b = Some(conn);
                        break;
                    };
                    if w.tx.is_closed() {
                        b = Some(conn);
                        continue;
                    }
                    if w.pool == conn.pool {
                        match w.tx.send(Grant::Conn(conn)) {
                            Ok(()) => {}
                            Err(Grant::Conn(back)) => b = Some(back),
                            Err(other) => orphans.push(other),
                        }
                    } else {
                        // Another pool waits for room on this server: this connection
                        // makes way for one of that pool.
                        st.waiters[q].push_front(w);
                        close = Some(conn);
                    }
                }
                if let Some(conn) = b {
                    let pct = shared.settings.max_idle_connections_percent;
                    let server = st.servers.entry(conn.conn.addr).or_default();
                    let idle_cap = server
                        .max_connections
                        .map(|m| (m as usize * pct as usize) / 100)
                        .unwrap_or(0);
                    if server.idle < idle_cap {
                        server.idle += 1;
                        st.pools[conn.pool.index].idle.push(conn);
                    } else {
                        close = Some(conn);
                    }
                }
            }
        }
        drop(orphans);
        drop(close);
    }

    /// Gives a borrowed connection the client's tracked parameters, learning how
    /// PostgreSQL reports them.
    pub(super) async fn restore(
        &self,
        b: &mut Backend,
        params: &SessionParams,
    ) -> Result<(), ConnError> {
        if b.restore(params).await? {
            let g: Arc<[u8]> = b.greeting().into();
            if let Ok(mut st) = self.shared.state.lock() {
                if let Some(p) = st.pools.get_mut(b.pool.index) {
                    if p.exact.len() < 1024 {
                        p.exact.insert(params.clone(), g);
                    }
                }
            }
        }
        Ok(())
    }

    /// The `ParameterStatus` messages a client of pool `key` with `params` is greeted
    /// with. Served from what the pool knows when it has a live connection; otherwise a
    /// connection is borrowed first (opened if need be, which also proves the database is
    /// reachable).
    pub(super) async fn greeting(
        &self,
        pool: PoolId,
        params: &SessionParams,
        password: &BackendPassword,
    ) -> Result<Arc<[u8]>, BorrowError> {
        let shared = &self.shared;
        let mut dead = Vec::new();
        let known = shared.state.lock().ok().and_then(|mut st| {
            let t = shared.topology.borrow();
            let cands = candidates(&t, pool.role);
            let State { pools, servers, .. } = &mut *st;
            let pool = pools.get_mut(pool.index)?;
            let base = pool.base.clone()?;
            let mut i = pool.idle.len();
            while i > 0 {
                i -= 1;
                let b = &pool.idle[i];
                if !cands.contains(&b.conn.addr) || !b.conn.looks_alive() {
                    let b = pool.idle.remove(i);
                    if let Some(s) = servers.get_mut(&b.conn.addr) {
                        s.idle -= 1;
                    }
                    dead.push(b);
                }
            }
            // Connections dropped above are still counted in `open` until `dead` goes.
            (pool.open > dead.len()).then(|| (base, pool.exact.get(params).cloned()))
        });
        drop(dead);
        let (base, exact) = match known {
            Some(k) => k,
            None => {
                let b = self.borrow(pool, params, password).await?;
                let base: Arc<[u8]> = b.login_greeting().into();
                let exact = shared.state.lock().ok().and_then(|mut st| {
                    let p = st.pools.get_mut(pool.index)?;
                    p.base = Some(Arc::clone(&base));
                    p.exact.get(params).cloned()
                });
                self.release(b);
                (base, exact)
            }
        };
        Ok(match exact {
            Some(g) => g,
            None if *params == SessionParams::default() => base,
            None => compose(&base, params).into(),
        })
    }

    /// Closes the idle connections and turns borrowers away (the proxy is stopping).
    pub(super) fn shutdown(&self) {
        let mut idle = Vec::new();
        if let Ok(mut st) = self.shared.state.lock() {
            st.closed = true;
            for p in st.pools.iter_mut() {
                idle.append(&mut p.idle);
            }
            for q in &mut st.waiters {
                q.clear();
            }
        }
        drop(idle);
    }
}

/// `base` (`ParameterStatus` messages) with the values of the tracked parameters `params`
/// sets, as the client wrote them.
fn compose(base: &[u8], params: &SessionParams) -> Vec<u8> {
    let mut out = Vec::with_capacity(base.len() + 64);
    let mut rest = base;
    while let Some(Ok((_, len))) = header(rest) {
        let Some(m) = rest.get(..len) else { break };
        let body = &m[5..];
        let name = body.split(|b| *b == 0).next().unwrap_or_default();
        match params.get(name) {
            Some(v) => {
                let mut b = name.to_vec();
                b.push(0);
                b.extend_from_slice(v.as_bytes());
                b.push(0);
                out.extend_from_slice(&message(b'S', &b));
            }
            None => out.extend_from_slice(m),
        }
        rest = &rest[len..];
    }
    out
}
