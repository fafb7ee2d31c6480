//! The database cluster behind the proxy: a writer and hot-standby readers (streaming
//! replication), the [`Topology`] the proxy follows, and failover.
//!
//! Like an Aurora cluster behind RDS Proxy: `READ_WRITE` endpoints reach the writer,
//! `READ_ONLY` endpoints a reader. A failover stops the writer and promotes a reader;
//! database sessions on both end (a promoted Aurora reader restarts too), the proxy lends
//! connections to the new writer as soon as it accepts writes, and a new reader is built
//! from the new writer in the background (the old writer rejoining as a reader, in Aurora
//! terms), so `READ_ONLY` endpoints serve again a few seconds later. What clients see is
//! the proxy's business: idle ones keep their connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::pg::PgServer;
use crate::Error;

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

/// What a server does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    /// Accepts writes (the `READ_WRITE` endpoints' target).
    Writer,
    /// A hot standby (the `READ_ONLY` endpoints' target).
    Reader,
    /// Stopped (a failed-over writer, or the whole database stopped).
    Stopped,
}

impl ServerRole {
    /// `writer`, `reader` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerRole::Writer => "writer",
            ServerRole::Reader => "reader",
            ServerRole::Stopped => "stopped",
        }
    }
}

/// One server as `status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStatus {
    /// `pg-1`, `pg-2`, ...
    pub name: String,
    /// Its TCP address.
    pub addr: SocketAddr,
    /// Its postmaster's process id.
    pub pid: u32,
    /// Its role.
    pub role: ServerRole,
    /// For a reader: WAL bytes the writer has that it has not replayed.
    pub lag_bytes: Option<u64>,
    /// For a reader: PostgreSQL's `replay_lag` (milliseconds; `None` when idle).
    pub replay_lag_ms: Option<f64>,
}

/// What a failover did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverReport {
    /// The writer that was stopped.
    pub old_writer: String,
    /// The reader that was promoted.
    pub new_writer: String,
    /// Client sessions that held a database connection on the old writer or the promoted
    /// reader in a request or a transaction, or pinned, when the failover started: those
    /// the proxy closes (idle clients keep their connection).
    pub sessions_closed: usize,
    /// From the start of the failover until the new writer accepted writes.
    pub took: Duration,
}

struct Node {
    server: Arc<PgServer>,
    role: ServerRole,
}

/// The servers and their roles.
pub(crate) struct Cluster {
    nodes: Mutex<Vec<Node>>,
    topology: watch::Sender<Topology>,
    next_name: AtomicUsize,
    failover_lock: tokio::sync::Mutex<()>,
    /// Readers being built in the background.
    pub(crate) building: AtomicUsize,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("topology", &*self.topology.borrow())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster whose writer is `primary` (no readers yet).
    pub(crate) fn new(primary: Arc<PgServer>) -> Arc<Cluster> {
        let topology = Topology {
            writer: Some(primary.addr()),
            readers: Vec::new(),
        };
        Arc::new(Cluster {
            nodes: Mutex::new(vec![Node {
                server: primary,
                role: ServerRole::Writer,
            }]),
            topology: watch::channel(topology).0,
            next_name: AtomicUsize::new(2),
            failover_lock: tokio::sync::Mutex::new(()),
            building: AtomicUsize::new(0),
        })
    }

    pub(crate) fn topology(&self) -> watch::Receiver<Topology> {
        self.topology.subscribe()
    }

    pub(crate) fn current_topology(&self) -> Topology {
        self.topology.borrow().clone()
    }

    fn publish(&self) {
        let Ok(nodes) = self.nodes.lock() else {
            return;
        };
        let t = Topology {
            writer: nodes
                .iter()
                .find(|n| n.role == ServerRole::Writer)
                .map(|n| n.server.addr()),
            readers: nodes
                .iter()
                .filter(|n| n.role == ServerRole::Reader)
                .map(|n| n.server.addr())
                .collect(),
        };
        self.topology.send_replace(t);
    }

    fn writer(&self) -> Option<Arc<PgServer>> {
        self.nodes.lock().ok().and_then(|n| {
            n.iter()
                .find(|n| n.role == ServerRole::Writer)
                .map(|n| Arc::clone(&n.server))
        })
    }

    /// Every server, in the order they were started.
    pub(crate) fn servers(&self) -> Vec<(Arc<PgServer>, ServerRole)> {
        self.nodes
            .lock()
            .map(|n| n.iter().map(|n| (Arc::clone(&n.server), n.role)).collect())
            .unwrap_or_default()
    }

    /// Builds a reader from the current writer and adds it to the topology.
    pub(crate) async fn add_reader(&self) -> Result<(), Error> {
        let writer = self
            .writer()
            .ok_or_else(|| Error::Postgres("no writer to build a reader from".into()))?;
        let name = format!("pg-{}", self.next_name.fetch_add(1, Ordering::SeqCst));
        let started = Instant::now();
        let standby = writer.start_standby(&name).await?;
        tracing::info!(server = %name, addr = %standby.addr(), "reader ready in {} ms", started.elapsed().as_millis());
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.push(Node {
                server: Arc::new(standby),
                role: ServerRole::Reader,
            });
        }
        self.publish();
        Ok(())
    }

    /// Stops the writer and promotes the first reader (see the module docs). A new reader
    /// is then built in the background on `runtime`. `sessions_on` counts the proxy's client
    /// sessions on the given servers (the proxy is passed as a function because it depends
    /// on this module for its [`Topology`]).
    pub(crate) async fn failover(
        self: Arc<Self>,
        sessions_on: impl Fn(&[SocketAddr]) -> usize + Send,
        runtime: tokio::runtime::Handle,
    ) -> Result<FailoverReport, Error> {
        let _one_at_a_time = self.failover_lock.lock().await;
        let started = Instant::now();
        let (old, promoted) = {
            let nodes = self
                .nodes
                .lock()
                .map_err(|_| Error::Postgres("cluster state poisoned".into()))?;
            let old = nodes
                .iter()
                .find(|n| n.role == ServerRole::Writer)
                .map(|n| Arc::clone(&n.server));
            let reader = nodes
                .iter()
                .find(|n| n.role == ServerRole::Reader)
                .map(|n| Arc::clone(&n.server));
            match (old, reader) {
                (Some(o), Some(r)) => (o, r),
                (None, _) => return Err(Error::Postgres("failover: there is no writer".into())),
                (_, None) => {
                    return Err(Error::Postgres(
                        "failover: there is no reader to promote (a reader is still being built, or [database] replicas is 0)".into(),
                    ))
                }
            }
        };
        tracing::warn!(
            writer = old.name(),
            reader = promoted.name(),
            "failover started"
        );
        // New sessions wait for the new writer; the promoted reader takes no new sessions.
        if let Ok(mut nodes) = self.nodes.lock() {
            for n in nodes.iter_mut() {
                if Arc::ptr_eq(&n.server, &old) || Arc::ptr_eq(&n.server, &promoted) {
                    n.role = ServerRole::Stopped;
                }
            }
        }
        self.publish();
        // The proxy counts each client session it closes (`sessions_closed_by_failover`);
        // the report gives those that hold a connection to these servers now.
        let sessions_closed = sessions_on(&[old.addr(), promoted.addr()]);
        // The writer goes down (its sessions get PostgreSQL's shutdown FATAL, which the
        // proxy passes on), the reader's sessions are ended, then it is promoted.
        let stopping = Arc::clone(&old);
        tokio::task::spawn_blocking(move || stopping.stop())
            .await
            .map_err(|e| Error::Postgres(format!("stopping the writer: {e}")))?;
        promoted.terminate_client_sessions().await?;
        promoted.promote().await?;
        if let Ok(mut nodes) = self.nodes.lock() {
            for n in nodes.iter_mut() {
                if Arc::ptr_eq(&n.server, &promoted) {
                    n.role = ServerRole::Writer;
                }
            }
        }
        self.publish();
        let took = started.elapsed();
        tracing::warn!(
            old_writer = old.name(),
            new_writer = promoted.name(),
            sessions_closed,
            "failover done in {} ms",
            took.as_millis()
        );
        self.spawn_reader(&runtime);
        Ok(FailoverReport {
            old_writer: old.name().to_string(),
            new_writer: promoted.name().to_string(),
            sessions_closed,
            took,
        })
    }

    /// Builds a reader in the background.
    pub(crate) fn spawn_reader(self: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        self.building.fetch_add(1, Ordering::SeqCst);
        let cluster = Arc::clone(self);
        runtime.spawn(async move {
            if let Err(e) = cluster.add_reader().await {
                tracing::error!("building a new reader failed: {e}");
            }
            cluster.building.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Every server with its role and, for readers, its replication lag.
    pub(crate) async fn status(&self) -> Vec<ServerStatus> {
        let servers = self.servers();
        let lags = match self.writer() {
            Some(w) => w.replication().await.unwrap_or_default(),
            None => Vec::new(),
        };
        servers
            .iter()
            .map(|(s, role)| {
                let lag = lags.iter().find(|l| l.name == s.name());
                ServerStatus {
                    name: s.name().to_string(),
                    addr: s.addr(),
                    pid: s.pid(),
                    role: *role,
                    lag_bytes: lag.and_then(|l| l.lag_bytes),
                    replay_lag_ms: lag.and_then(|l| l.replay_lag_ms),
                }
            })
            .collect()
    }

    /// Stops every server (the topology keeps their addresses: logins fail fast).
    pub(crate) fn stop_all(&self) {
        let servers = self.servers();
        // Readers first: a stopping primary waits for its standbys' walreceivers otherwise.
        for (s, _) in servers.iter().rev() {
            s.stop();
        }
        if let Ok(mut nodes) = self.nodes.lock() {
            for n in nodes.iter_mut() {
                n.role = ServerRole::Stopped;
            }
        }
    }

    /// Waits (blocking, bounded) for background reader builds to finish.
    pub(crate) fn wait_for_builds(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.building.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
