//! The local forwarder that lets sqlx verify the endpoint name over a `connect_address`
//! override (feature `sqlx`, Unix).
//!
//! sqlx verifies the server certificate against the host it dials and has no separate TLS
//! name. But when [`PgConnectOptions::socket`](::sqlx::postgres::PgConnectOptions::socket)
//! is set, it connects to the Unix socket `DIR/.s.PGSQL.PORT` and still sends the
//! SSLRequest and runs its rustls handshake there, with the options' `host` as the server
//! name. So over an override the options carry host = the endpoint name, port = the
//! endpoint port and socket = the directory of a [`Forwarder`]: a Unix socket whose every
//! accepted stream is connected by TCP to the override address (the connector's own dialing:
//! DNS, every address in turn, `TCP_NODELAY`, keepalive) and copied both ways. The
//! forwarder only moves ciphertext; sqlx verifies the chain and the endpoint name end to
//! end.
//!
//! # Where the socket lives
//!
//! A directory of its own, created `0700` (the socket file in it `0600`), under
//! `$XDG_RUNTIME_DIR` when set, else the temporary directory, named
//! `rds-iam-auth-sqlx-<pid>-<random>` so that a stale one (a process that ended while its
//! forwarder ran) is recognisable. It is removed when the forwarder shuts down. A new
//! forwarder removes stale ones of the same user in the background: only directories with
//! that name, over a minute old, holding nothing but sockets that refuse connections
//! (nothing listens: a process that shares the directory but not the process table, as in
//! another container, is never mistaken for a dead one).
//!
//! # Lifetime
//!
//! One forwarder per dial target (override address, endpoint port, keepalive and connect
//! timeout) per process, shared by every pool and every [`connect_options`] call with that
//! target: a registry holds it weakly. Each runs on a thread of its own with a small
//! current-thread Tokio runtime, not on the caller's runtime, because a sqlx pool and the
//! options it holds outlive the runtime that built them in practice (a `#[tokio::test]`
//! runtime is dropped while another runtime's pool still dials through the same socket;
//! a task on the first runtime would die with it). One thread per dial target, not per
//! pool, so a service that builds many pools costs one thread.
//!
//! It stays up while something may still dial it:
//! - the pool's refresh task holds it (through the settings) for as long as it runs;
//! - every set of options signed for it keeps it up until that token has expired (plus a
//!   minute): options from [`connect_options`], or the last ones of a pool whose refresh
//!   task ended, cannot log in after that anyway;
//! - connections already forwarded are copied until either side closes them, also after
//!   the forwarder stopped accepting.
//!
//! When none of these hold it, it stops accepting, removes its directory, lets its open
//! connections finish, and its thread ends. A later pool for the same target starts a new
//! one (with a new directory).
//!
//! [`connect_options`]: crate::sqlx::connect_options

use std::fs::{self, DirBuilder};
use std::hash::BuildHasher;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::net::{DialTarget, Keepalive};
use crate::runner::Deadline;
use crate::stage::Stage;
use crate::Connector;

/// The start of every socket directory's name (then the process id and a random part).
const DIR_PREFIX: &str = "rds-iam-auth-sqlx-";

/// The forwarder threads' name (at most 15 bytes: Linux keeps no more).
const THREAD_NAME: &str = "rds-iam-forward";

/// How long a forwarder stays up after the token of options signed for it expired.
const LINGER_AFTER_TOKEN: Duration = Duration::from_secs(60);

/// What makes two forwarders interchangeable.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    host: String,
    port: u16,
    /// The port in the socket's name (`.s.PGSQL.PORT`): sqlx takes it from the options,
    /// which carry the endpoint's.
    endpoint_port: u16,
    keepalive: Option<(Duration, Duration, u32)>,
    connect_timeout: Duration,
}

/// What every forwarded connection dials, and what the forwarder's thread shares.
struct Shared {
    target: DialTarget,
    keepalive: Option<Keepalive>,
    connect_timeout: Duration,
    shutdown: Notify,
    /// The last failed dial, for the error a failed pool build returns.
    failure: Mutex<Option<(Instant, Error)>>,
}

/// A running forwarder; it shuts down when the last `Arc` is dropped.
pub(crate) struct Forwarder {
    dir: PathBuf,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    /// Until when signed options keep it up (`None`: no linger task runs).
    kept_until: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The forwarder for the connector's dial target: the running one, or a new one.
pub(crate) fn for_connector(connector: &Connector) -> io::Result<Arc<Forwarder>> {
    static REGISTRY: Mutex<Vec<(Key, Weak<Forwarder>)>> = Mutex::new(Vec::new());
    let i = &*connector.inner;
    let key = Key {
        host: i.dial.host.clone(),
        port: i.dial.port,
        endpoint_port: i.token_params.port(),
        keepalive: i.keepalive.map(|k| (k.idle, k.interval, k.retries)),
        connect_timeout: i.connect_timeout,
    };
    let mut registry = lock(&REGISTRY);
    registry.retain(|(_, f)| f.strong_count() > 0);
    if let Some(running) = registry
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, f)| f.upgrade())
    {
        return Ok(running);
    }
    let shared = Arc::new(Shared {
        target: i.dial.clone(),
        keepalive: i.keepalive,
        connect_timeout: i.connect_timeout,
        shutdown: Notify::new(),
        failure: Mutex::new(None),
    });
    let forwarder = Arc::new(Forwarder::start(shared, key.endpoint_port)?);
    registry.push((key, Arc::downgrade(&forwarder)));
    Ok(forwarder)
}

impl Forwarder {
    fn start(shared: Arc<Shared>, endpoint_port: u16) -> io::Result<Forwarder> {
        let dir = SocketDir::create(endpoint_port)?;
        let listener = std::os::unix::net::UnixListener::bind(dir.socket())?;
        fs::set_permissions(dir.socket(), fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let handle = runtime.handle().clone();
        let path = dir.path.clone();
        runtime.spawn(remove_stale(base_dir(), path.clone()));
        // The forwarder logs where the code that started it logs (the global subscriber,
        // or a scoped one such as a test's).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                let _logging = tracing::dispatcher::set_default(&dispatch);
                runtime.block_on(serve(listener, thread_shared, dir));
            })?;
        tracing::debug!(
            socket_dir = %path.display(),
            dial = %format_args!("{}:{}", shared.target.host, shared.target.port),
            "sqlx: local forwarder started"
        );
        Ok(Forwarder {
            dir: path,
            shared,
            runtime: handle,
            kept_until: Mutex::new(None),
        })
    }

    /// The directory to give sqlx (`PgConnectOptions::socket`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps the forwarder up for options whose token expires after `token_life`.
    pub(crate) fn keep_for(self: &Arc<Self>, token_life: Duration) {
        self.keep_until(Instant::now() + token_life + LINGER_AFTER_TOKEN);
    }

    fn keep_until(self: &Arc<Self>, until: Instant) {
        let mut kept = lock(&self.kept_until);
        let lingering = kept.is_some();
        if !matches!(*kept, Some(k) if k >= until) {
            *kept = Some(until);
        }
        if !lingering {
            // One task at a time holds it, re-reading the time it is kept until.
            self.runtime.spawn(linger(self.clone()));
        }
    }

    /// The dial failure recorded at or after `since`, as an error of its stage.
    pub(crate) fn failure_since(&self, since: Instant) -> Option<Error> {
        let failure = lock(&self.shared.failure);
        failure
            .as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, error)| error.clone())
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // A permit is stored if the thread is not waiting right now.
        self.shared.shutdown.notify_one();
    }
}

/// Holds `forwarder` until the time it is kept until has passed.
async fn linger(forwarder: Arc<Forwarder>) {
    loop {
        let until = {
            let mut kept = lock(&forwarder.kept_until);
            match *kept {
                Some(until) if until > Instant::now() => until,
                _ => {
                    *kept = None;
                    break;
                }
            }
        };
        tokio::time::sleep_until(until.into()).await;
    }
}

/// Accepts until shut down, then removes the socket and waits for open connections.
async fn serve(listener: std::os::unix::net::UnixListener, shared: Arc<Shared>, dir: SocketDir) {
    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "sqlx: the local forwarder cannot listen");
            return;
        }
    };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.notified() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(forward(stream, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::debug!(error = %e, "sqlx forwarder: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    drop(dir);
    tracing::debug!(
        open_connections = connections.len(),
        "sqlx: local forwarder stopped accepting"
    );
    while connections.join_next().await.is_some() {}
}

/// One connection: dial the target, then copy both ways until both sides are done.
async fn forward(mut local: UnixStream, shared: Arc<Shared>) {
    let mut remote = match dial(&shared).await {
        Ok(remote) => remote,
        Err(error) => {
            tracing::warn!(
                stage = %error.stage(),
                cause = %error.cause(),
                hint = error.hint().unwrap_or("-"),
                "sqlx forwarder: cannot reach {}:{}; closing the connection sqlx opened",
                shared.target.host,
                shared.target.port
            );
            *lock(&shared.failure) = Some((Instant::now(), error));
            // Dropping `local` closes it: sqlx fails at once instead of waiting.
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut local, &mut remote).await {
        Ok((up, down)) => {
            tracing::trace!(up, down, "sqlx forwarder: connection done");
        }
        Err(e) => tracing::debug!(error = %e, "sqlx forwarder: connection ended"),
    }
}

/// DNS (unless the host is an address) and TCP, under the connector's connect timeout.
async fn dial(shared: &Shared) -> Result<tokio::net::TcpStream, Error> {
    let deadline = Deadline::after(shared.connect_timeout);
    let target = &shared.target;
    let addresses = match target.literal() {
        Some(address) => vec![address],
        None => deadline.limit(Stage::Dns, target.resolve()).await?,
    };
    let dial = target.dial(&addresses, deadline, shared.keepalive);
    deadline.limit(Stage::Tcp, dial).await
}

/// The private directory of one forwarder's socket; removed on drop.
struct SocketDir {
    path: PathBuf,
    socket: PathBuf,
}

impl SocketDir {
    fn create(endpoint_port: u16) -> io::Result<SocketDir> {
        let base = base_dir();
        let mut last = None;
        for _ in 0..16 {
            let name = format!("{DIR_PREFIX}{}-{:08x}", std::process::id(), random32());
            let path = base.join(name);
            // Created with no permissions for others from the start; set exactly after,
            // whatever the umask.
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let dir = SocketDir {
                        socket: path.join(format!(".s.PGSQL.{endpoint_port}")),
                        path,
                    };
                    fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))?;
                    return Ok(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free socket directory name")))
    }

    fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.socket);
        if let Err(e) = fs::remove_dir(&self.path) {
            tracing::debug!(dir = %self.path.display(), error = %e, "sqlx forwarder: socket directory not removed");
        }
    }
}

/// Removes the socket directories under `base` that forwarders of ended processes left:
/// only this user's, named with [`DIR_PREFIX`], over a minute old, and holding nothing but
/// sockets nothing listens on.
async fn remove_stale(base: PathBuf, own: PathBuf) {
    let Ok(uid) = fs::metadata(&own).map(|m| m.uid()) else {
        return;
    };
    let Ok(entries) = fs::read_dir(&base) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if !ours || path == own {
            continue;
        }
        // Not a link, this user's, untouched for a minute (binding a socket touches it).
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if !meta.is_dir() || meta.uid() != uid || !old {
            continue;
        }
        if is_stale(&path).await {
            let removed = fs::read_dir(&path)
                .into_iter()
                .flatten()
                .flatten()
                .try_for_each(|f| fs::remove_file(f.path()))
                .and_then(|()| fs::remove_dir(&path));
            tracing::debug!(dir = %path.display(), outcome = ?removed, "sqlx forwarder: stale socket directory");
        }
    }
}

/// Whether every entry of `dir` is a forwarder socket that refuses connections.
async fn is_stale(dir: &Path) -> bool {
    let Ok(files) = fs::read_dir(dir) else {
        return false;
    };
    for file in files {
        let Ok(file) = file else {
            return false;
        };
        let socket = file
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(".s.PGSQL."));
        if !socket {
            return false;
        }
        let connect = UnixStream::connect(file.path());
        match tokio::time::timeout(Duration::from_secs(1), connect).await {
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            _ => return false,
        }
    }
    true
}

/// `$XDG_RUNTIME_DIR` (per user, emptied at logout) when set, else the temporary
/// directory; `/tmp` when the socket path would not fit a Unix socket address (about 104
/// bytes: macOS's temporary directories are long).
fn base_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    // The longest socket path under `base`: prefix, pid, random part, socket name.
    let longest = base.as_os_str().len() + 1 + DIR_PREFIX.len() + 10 + 1 + 8 + 1 + 15;
    if longest > 100 {
        PathBuf::from("/tmp")
    } else {
        base
    }
}

/// A random-enough directory name part (exclusive creation makes it safe either way).
fn random32() -> u32 {
    let hash = std::hash::RandomState::new().hash_one(SystemTime::now());
    (hash ^ (hash >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(5), "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn shared(target: DialTarget) -> Arc<Shared> {
        Arc::new(Shared {
            target,
            keepalive: Some(Keepalive::default()),
            connect_timeout: Duration::from_secs(2),
            shutdown: Notify::new(),
            failure: Mutex::new(None),
        })
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_the_directory_goes_with_the_last_holder() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let target = DialTarget {
            host: "localhost".to_owned(),
            port: addr.port(),
        };
        let forwarder = Arc::new(Forwarder::start(shared(target), 5432).expect("starts"));
        let dir = forwarder.dir().to_owned();
        let socket = dir.join(".s.PGSQL.5432");
        let mode = fs::metadata(&dir).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let mut client = UnixStream::connect(&socket).await.expect("connects");
        client.write_all(b"ciphertext").await.expect("write");
        let mut back = [0u8; 10];
        client.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"ciphertext");

        // Options signed for it keep it up after the last holder is gone; then it stops:
        // the directory goes, the open connection still works, then ends cleanly.
        let kept = Instant::now() + Duration::from_millis(500);
        forwarder.keep_until(kept);
        forwarder.keep_until(Instant::now());
        drop(forwarder);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(socket.exists(), "kept until the token expires");
        UnixStream::connect(&socket).await.expect("still accepting");
        wait_for("the directory to be removed", || !dir.exists()).await;
        assert!(Instant::now() >= kept);
        client.write_all(b"more").await.expect("write");
        let mut more = [0u8; 4];
        client.read_exact(&mut more).await.expect("still forwarded");
        assert_eq!(&more, b"more");
        client.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("clean end");
        assert!(rest.is_empty());
    }

    /// A directory like a forwarder's, with a socket, made to look `age` old.
    fn fake_dir(
        base: &Path,
        name: &str,
        listening: bool,
        age: Duration,
    ) -> (PathBuf, Option<std::os::unix::net::UnixListener>) {
        let dir = base.join(name);
        DirBuilder::new().mode(0o700).create(&dir).expect("dir");
        let listener =
            std::os::unix::net::UnixListener::bind(dir.join(".s.PGSQL.5432")).expect("bind");
        let listener = listening.then_some(listener);
        fs::File::open(&dir)
            .and_then(|d| d.set_modified(SystemTime::now() - age))
            .expect("mtime");
        (dir, listener)
    }

    #[tokio::test]
    async fn only_old_directories_of_ended_forwarders_are_removed() {
        let base = tempfile::tempdir().expect("tempdir");
        let old = Duration::from_secs(3600);
        let own = base.path().join(format!("{DIR_PREFIX}1-own"));
        DirBuilder::new().mode(0o700).create(&own).expect("own");
        let (dead, _) = fake_dir(base.path(), &format!("{DIR_PREFIX}2-dead"), false, old);
        let (live, _listener) = fake_dir(base.path(), &format!("{DIR_PREFIX}3-live"), true, old);
        let (young, _) = fake_dir(
            base.path(),
            &format!("{DIR_PREFIX}4-young"),
            false,
            Duration::ZERO,
        );
        let (other, _) = fake_dir(base.path(), "someone-else", false, old);
        let (extra, _) = fake_dir(base.path(), &format!("{DIR_PREFIX}5-extra"), false, old);
        fs::write(extra.join("notes"), "kept").expect("file");
        fs::File::open(&extra)
            .and_then(|d| d.set_modified(SystemTime::now() - old))
            .expect("mtime");

        remove_stale(base.path().to_owned(), own.clone()).await;
        assert!(!dead.exists(), "nothing listened there");
        for kept in [&own, &live, &young, &other, &extra] {
            assert!(kept.exists(), "{}", kept.display());
        }
    }

    #[tokio::test]
    async fn a_failed_dial_closes_the_stream_and_is_kept_as_a_tcp_error() {
        use tokio::io::AsyncReadExt;
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let target = DialTarget {
            host: "127.0.0.1".to_owned(),
            port: refused.port(),
        };
        let forwarder = Forwarder::start(shared(target), 5432).expect("starts");
        let started = Instant::now();
        let mut client = UnixStream::connect(forwarder.dir().join(".s.PGSQL.5432"))
            .await
            .expect("connects");
        let mut buf = Vec::new();
        let read = client.read_to_end(&mut buf).await;
        assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let err = forwarder.failure_since(started).expect("kept");
        assert_eq!(err.stage(), Stage::Tcp, "{err}");
        assert!(err.to_string().contains(&refused.to_string()), "{err}");
        assert!(forwarder.failure_since(Instant::now()).is_none());
    }
}
