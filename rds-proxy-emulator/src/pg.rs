//! A throwaway PostgreSQL server: `initdb` in a temp dir, a free port on 127.0.0.1, the
//! Unix socket inside the temp dir, SCRAM-SHA-256 for TCP logins, a seeded database.
//!
//! As root the server runs as the `postgres` OS user (PostgreSQL refuses to run as root).
//! The server is a direct child of this process; [`PgServer::stop`] (also run on drop)
//! shuts it down (fast shutdown, then SIGKILL after 10 s) and the directory is removed.
//! It never uses a server that happens to be running already.
//!
//! `initdb` takes about a second; with [`PgOptions::template_cache`] set, its output is kept
//! there once (per PostgreSQL version) and copied for each new server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rds_proxy_emulator::Error> {
//! use rds_proxy_emulator::pg::{PgOptions, PgServer};
//!
//! let pg = PgServer::start(PgOptions {
//!     users: vec![("app_user".into(), "secret".into())],
//!     ..PgOptions::default()
//! })
//! .await?;
//! println!("postgres://app_user:secret@{}/example_db", pg.addr());
//! pg.stop();
//! # Ok(())
//! # }
//! ```

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Error;

/// The example tables of `example_db` (run as its owner).
pub const DEFAULT_SEED_SQL: &str = "\
CREATE TABLE customers (
    id integer PRIMARY KEY,
    name text NOT NULL,
    country text NOT NULL
);
INSERT INTO customers (id, name, country) VALUES
    (1, 'Ada Lovelace', 'GB'),
    (2, 'Grace Hopper', 'US'),
    (3, 'Alan Turing', 'GB'),
    (4, 'Katherine Johnson', 'US');
CREATE TABLE products (
    id integer PRIMARY KEY,
    name text NOT NULL,
    price_cents integer NOT NULL
);
INSERT INTO products (id, name, price_cents) VALUES
    (1, 'Widget', 250),
    (2, 'Gadget', 1299),
    (3, 'Gizmo', 4999);
CREATE TABLE orders (
    id integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    product_id integer NOT NULL REFERENCES products (id),
    quantity integer NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT '2024-01-01T00:00:00Z'
);
INSERT INTO orders (id, customer_id, product_id, quantity) VALUES
    (1, 1, 1, 3),
    (2, 2, 2, 1),
    (3, 3, 3, 2),
    (4, 4, 1, 10),
    (5, 1, 3, 1);
";

/// What to create.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Login roles and their passwords (stored as SCRAM-SHA-256). The first owns the
    /// database and its seeded tables; the others get all privileges on them.
    pub users: Vec<(String, String)>,
    /// Database to create.
    pub database: String,
    /// SQL run as the owner after creating the database (`None`: [`DEFAULT_SEED_SQL`]).
    pub seed_sql: Option<String>,
    /// Where the temp dir goes (default: the system temp dir).
    pub base_dir: Option<PathBuf>,
    /// A directory to cache `initdb`'s output in (shared by processes; safe to delete).
    pub template_cache: Option<PathBuf>,
    /// Directory of `initdb`/`postgres` (default: `$PG_BIN`, else the newest
    /// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`, else `PATH`).
    pub bin_dir: Option<PathBuf>,
    /// Serve TLS with this certificate (`ssl=on`; plaintext stays allowed).
    pub tls: Option<PgTls>,
}

/// A server certificate and its key, PEM.
#[derive(Clone)]
pub struct PgTls {
    /// Certificate chain (PEM).
    pub cert_pem: String,
    /// Private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").finish_non_exhaustive()
    }
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            users: Vec::new(),
            database: "example_db".into(),
            seed_sql: None,
            base_dir: None,
            template_cache: None,
            bin_dir: None,
            tls: None,
        }
    }
}

/// A running throwaway PostgreSQL server: the primary made by [`PgServer::start`], or a
/// streaming-replication hot standby made by [`PgServer::start_standby`].
#[derive(Debug)]
pub struct PgServer {
    name: String,
    /// The temp dir of the whole cluster (held by the first server).
    dir: Mutex<Option<tempfile::TempDir>>,
    /// The cluster's directory: every server of the cluster lives under it.
    cluster_root: PathBuf,
    /// This server's directory (data, socket, log).
    dir_path: PathBuf,
    child: Mutex<Option<Child>>,
    port: u16,
    socket_dir: PathBuf,
    pid: u32,
    bin: PathBuf,
    who: Option<RunAs>,
    /// `-c` settings shared by every server of the cluster (TLS, durability, replication).
    settings: Vec<String>,
}

/// One standby's replication state, as its primary reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaLag {
    /// The standby's name.
    pub name: String,
    /// WAL bytes written on the primary and not yet replayed on the standby.
    pub lag_bytes: Option<u64>,
    /// `replay_lag` in milliseconds (`None` when idle: PostgreSQL clears it).
    pub replay_lag_ms: Option<f64>,
    /// `streaming`, `catchup`, ...
    pub state: String,
}

/// Starts `postgres` on a free port (retrying on a port race) and waits until it listens.
fn spawn_server(
    bin: &Path,
    who: Option<RunAs>,
    root: &Path,
    data: &Path,
    socket_dir: &Path,
    settings: &[String],
    name: &str,
) -> Result<(Child, u16, u32), Error> {
    let mut last_error = String::new();
    for _attempt in 0..5 {
        let port = free_port()?;
        let log_path = root.join("postgres.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| Error::io("creating postgres.log", e))?;
        if let Some(w) = who {
            chown_tree(&log_path, w)?;
        }
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("creating postgres.log", e))?;
        let mut cmd = command(bin.join("postgres"), who, root);
        cmd.arg("-D")
            .arg(data)
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .arg("-c")
            .arg(format!("port={port}"))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .arg("-c")
            .arg(format!("cluster_name={name}"));
        for setting in settings {
            cmd.arg("-c").arg(setting);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| Error::io("starting postgres", e))?;
        let pid = child.id();
        let socket = socket_dir.join(format!(".s.PGSQL.{port}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_error = format!(
                    "postgres exited ({status}): {}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .lines()
                        .rev()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
                break;
            }
            if socket.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok((child, port, pid));
            }
            if Instant::now() > deadline {
                stop_child(&mut child);
                return Err(pg_err("postgres did not start within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(pg_err(last_error))
}

/// The OS user PostgreSQL runs as when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn pg_err(m: impl Into<String>) -> Error {
    Error::Postgres(m.into())
}

fn run_as() -> Result<Option<RunAs>, Error> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Ok(None);
    }
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| Error::io("reading /etc/passwd", e))?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == "postgres" {
            let uid = f[2]
                .parse()
                .map_err(|_| pg_err("bad uid of user postgres"))?;
            let gid = f[3]
                .parse()
                .map_err(|_| pg_err("bad gid of user postgres"))?;
            return Ok(Some(RunAs { uid, gid }));
        }
    }
    Err(pg_err(
        "running as root, but there is no `postgres` OS user to run PostgreSQL as (useradd --system postgres)",
    ))
}

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = explicit {
        return if has(d) {
            Ok(d.to_path_buf())
        } else {
            Err(pg_err(format!("no initdb/postgres in {}", d.display())))
        };
    }
    if let Some(d) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if has(&d) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has(d))
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Ok(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has(&d) {
            return Ok(d);
        }
    }
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if has(&d) {
            return Ok(d);
        }
    }
    Err(pg_err(
        "PostgreSQL server binaries (initdb, postgres) not found: install them (apt-get install postgresql) or set PG_BIN",
    ))
}

fn chown_tree(path: &Path, who: RunAs) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(who.uid), Some(who.gid))
        .map_err(|e| Error::io(format!("chown {}", path.display()), e))?;
    if path.is_dir() && !path.is_symlink() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        for entry in entries.flatten() {
            chown_tree(&entry.path(), who)?;
        }
    }
    Ok(())
}

fn command(program: PathBuf, who: Option<RunAs>, cwd: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).env_remove("PGDATA");
    if let Some(w) = who {
        // std drops supplementary groups when root changes uid.
        cmd.uid(w.uid).gid(w.gid);
        cmd.env("HOME", cwd)
            .env("USER", "postgres")
            .env("LOGNAME", "postgres");
    }
    cmd
}

fn run_initdb(bin: &Path, data: &Path, who: Option<RunAs>, cwd: &Path) -> Result<(), Error> {
    let out = command(bin.join("initdb"), who, cwd)
        .arg("-D")
        .arg(data)
        .args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("running initdb", e))?;
    if !out.status.success() {
        return Err(pg_err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| Error::io("running cp", e))?;
    if !out.status.success() {
        return Err(pg_err(format!(
            "copying the initdb template failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn pg_version(bin: &Path) -> String {
    Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Creates `data` from the template cache (building it if missing), or runs initdb.
fn prepare_data_dir(
    bin: &Path,
    data: &Path,
    who: Option<RunAs>,
    cwd: &Path,
    cache: Option<&Path>,
) -> Result<(), Error> {
    let Some(cache) = cache else {
        return run_initdb(bin, data, who, cwd);
    };
    let template = cache.join(format!("initdb-{}", pg_version(bin)));
    if !template.join("PG_VERSION").is_file() {
        std::fs::create_dir_all(cache)
            .map_err(|e| Error::io(format!("creating {}", cache.display()), e))?;
        let staging = tempfile::Builder::new()
            .prefix("initdb-staging-")
            .tempdir_in(cache)
            .map_err(|e| Error::io("creating a staging dir", e))?;
        if let Some(w) = who {
            chown_tree(staging.path(), w)?;
        }
        let staged = staging.path().join("data");
        run_initdb(bin, &staged, who, staging.path())?;
        // Atomic publish; if another process won the race, ours is discarded with staging.
        let _ = std::fs::rename(&staged, &template);
    }
    copy_tree(&template, data)
}

fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| Error::io("finding a free port", e))?;
    let port = l
        .local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port();
    Ok(port)
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl PgServer {
    /// Creates, starts and seeds a server.
    pub async fn start(opts: PgOptions) -> Result<PgServer, Error> {
        if opts.users.is_empty() {
            return Err(pg_err("at least one database user is needed"));
        }
        let prep = opts.clone();
        let server = tokio::task::spawn_blocking(move || PgServer::start_blocking(&prep))
            .await
            .map_err(|e| pg_err(format!("start task failed: {e}")))??;
        server.seed(&opts).await?;
        Ok(server)
    }

    fn start_blocking(opts: &PgOptions) -> Result<PgServer, Error> {
        let who = run_as()?;
        let bin = find_bin_dir(opts.bin_dir.as_deref())?;
        let base = opts.base_dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("rds-proxy-emulator-pg-")
            .tempdir_in(&base)
            .map_err(|e| Error::io(format!("creating a temp dir in {}", base.display()), e))?;
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        let socket_dir = root.join("socket");
        std::fs::create_dir(&socket_dir).map_err(|e| Error::io("creating the socket dir", e))?;
        let mut settings: Vec<String> = [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=200",
            "password_encryption=scram-sha-256",
            "logging_collector=off",
            // Streaming replication to hot standbys (the READ_ONLY endpoints' readers).
            "wal_level=replica",
            "max_wal_senders=10",
            "max_replication_slots=10",
            "hot_standby=on",
            "hot_standby_feedback=on",
            "wal_receiver_status_interval=1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(tls) = &opts.tls {
            let tls_dir = root.join("tls");
            std::fs::create_dir(&tls_dir).map_err(|e| Error::io("creating the TLS dir", e))?;
            let cert = tls_dir.join("server.crt");
            let key = tls_dir.join("server.key");
            std::fs::write(&cert, &tls.cert_pem)
                .map_err(|e| Error::io("writing the server certificate", e))?;
            std::fs::write(&key, &tls.key_pem)
                .map_err(|e| Error::io("writing the server key", e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io("protecting the server key", e))?;
            settings.push("ssl=on".into());
            settings.push(format!("ssl_cert_file={}", cert.display()));
            settings.push(format!("ssl_key_file={}", key.display()));
        }
        if let Some(w) = who {
            chown_tree(&root, w)?;
        }
        prepare_data_dir(&bin, &data, who, &root, opts.template_cache.as_deref())?;
        let name = "pg-1".to_string();
        let (child, port, pid) =
            spawn_server(&bin, who, &root, &data, &socket_dir, &settings, &name)?;
        Ok(PgServer {
            name,
            dir: Mutex::new(Some(dir)),
            cluster_root: root.clone(),
            dir_path: root,
            child: Mutex::new(Some(child)),
            port,
            socket_dir,
            pid,
            bin,
            who,
            settings,
        })
    }

    /// Makes a hot standby of this server named `name` (unique in the cluster):
    /// `pg_basebackup` with a replication slot, `standby.signal`, streaming replication
    /// over this server's Unix socket. Returns once the standby accepts read-only queries.
    pub async fn start_standby(&self, name: &str) -> Result<PgServer, Error> {
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || name.is_empty() {
            return Err(pg_err(format!("bad server name {name:?}")));
        }
        let (bin, who, settings) = (self.bin.clone(), self.who, self.settings.clone());
        let cluster_root = self.cluster_root.clone();
        let (source_socket, source_port) = (self.socket_dir.clone(), self.port);
        let name = name.to_string();
        let server = tokio::task::spawn_blocking(move || {
            let root = cluster_root.join(&name);
            let data = root.join("data");
            let socket_dir = root.join("socket");
            std::fs::create_dir_all(&socket_dir)
                .map_err(|e| Error::io(format!("creating {}", socket_dir.display()), e))?;
            if let Some(w) = who {
                chown_tree(&root, w)?;
            }
            let slot = name.replace('-', "_");
            let out = command(bin.join("pg_basebackup"), who, &root)
                .arg("-h")
                .arg(&source_socket)
                .arg("-p")
                .arg(source_port.to_string())
                .args(["-U", "postgres", "-D"])
                .arg(&data)
                .args([
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-R",
                    "-C",
                    "-S",
                    &slot,
                    "--no-sync",
                ])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Error::io("running pg_basebackup", e))?;
            if !out.status.success() {
                return Err(pg_err(format!(
                    "pg_basebackup failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let (child, port, pid) =
                spawn_server(&bin, who, &root, &data, &socket_dir, &settings, &name)?;
            Ok(PgServer {
                name,
                dir: Mutex::new(None),
                cluster_root,
                dir_path: root,
                child: Mutex::new(Some(child)),
                port,
                socket_dir,
                pid,
                bin,
                who,
                settings,
            })
        })
        .await
        .map_err(|e| pg_err(format!("standby task failed: {e}")))??;
        // Hot standby accepts connections once it has replayed to a consistent point.
        let client = server.superuser("postgres").await?;
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| pg_err(format!("checking the standby: {e}")))?
            .get(0);
        if !in_recovery {
            return Err(pg_err("the new standby is not in recovery"));
        }
        // Ready when the source reports it streaming and has its first replay position (so
        // its lag is known from the start).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let streaming =
                self.replication().await?.iter().any(|r| {
                    r.name == server.name && r.state == "streaming" && r.lag_bytes.is_some()
                });
            if streaming {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(pg_err(format!(
                    "standby {} is not streaming from {} after 30 s",
                    server.name, self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Promotes this standby to a primary (`pg_promote`), returning once it accepts writes.
    pub async fn promote(&self) -> Result<(), Error> {
        let client = self.superuser("postgres").await?;
        let promoted: bool = client
            .query_one("SELECT pg_promote(true, 30)", &[])
            .await
            .map_err(|e| pg_err(format!("promoting {}: {e}", self.name)))?
            .get(0);
        if !promoted {
            return Err(pg_err(format!(
                "{} was not promoted within 30 s",
                self.name
            )));
        }
        Ok(())
    }

    /// Ends every client session on this server (as a restarting instance does), returning
    /// how many there were.
    pub async fn terminate_client_sessions(&self) -> Result<u64, Error> {
        let client = self.superuser("postgres").await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| pg_err(format!("ending sessions on {}: {e}", self.name)))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Replication as this (primary) server sees it: per standby (its name), the bytes of
    /// WAL it has not replayed yet and its replay lag.
    pub async fn replication(&self) -> Result<Vec<ReplicaLag>, Error> {
        let client = self.superuser("postgres").await?;
        let rows = client
            .query(
                "SELECT application_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, (extract(epoch FROM replay_lag) * 1000)::float8, state::text FROM pg_stat_replication ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| pg_err(format!("reading pg_stat_replication: {e}")))?;
        Ok(rows
            .iter()
            .map(|r| ReplicaLag {
                name: r.get(0),
                lag_bytes: r.get::<_, Option<i64>>(1).map(|b| b.max(0) as u64),
                replay_lag_ms: r.get(2),
                state: r.get(3),
            })
            .collect())
    }

    /// The server's name in the cluster (`pg-1`, `pg-2`, ...): its `cluster_name`, and the
    /// `application_name` its walreceiver reports to the primary.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets a role's password (`ALTER ROLE ... PASSWORD`, stored as SCRAM-SHA-256). Open
    /// sessions of the role are not affected: PostgreSQL checks passwords at login only.
    pub async fn set_password(&self, user: &str, password: &str) -> Result<(), Error> {
        self.superuser("postgres")
            .await?
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD {}",
                quote_ident(user),
                quote_literal(password)
            ))
            .await
            // The statement holds the password: report PostgreSQL's message only.
            .map_err(|e| {
                pg_err(format!(
                    "changing the password of {user}: {}",
                    e.as_db_error()
                        .map(|d| d.message())
                        .unwrap_or("connection failed")
                ))
            })
    }

    /// Whether `user` can log in to `database` over TCP with `password`.
    pub async fn password_works(&self, user: &str, password: &str, database: &str) -> bool {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(database)
            .connect_timeout(Duration::from_secs(5));
        cfg.connect(tokio_postgres::NoTls).await.is_ok()
    }

    /// A session as the superuser `postgres` over the Unix socket (retrying for up to 5 s
    /// while the server starts).
    pub async fn superuser(&self, db: &str) -> Result<tokio_postgres::Client, Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname(db);
        // The server may still be finishing startup: retry briefly.
        let mut tries = 0;
        loop {
            match cfg.connect(tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    return Ok(client);
                }
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!("waiting for postgres: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(pg_err(format!("connecting as superuser: {e}"))),
            }
        }
    }

    async fn seed(&self, opts: &PgOptions) -> Result<(), Error> {
        let sql_err = |what: &str, e: tokio_postgres::Error| {
            pg_err(format!(
                "{what}: {}",
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string())
            ))
        };
        let admin = self.superuser("postgres").await?;
        for (user, password) in &opts.users {
            admin
                .batch_execute(&format!(
                    "CREATE ROLE {} LOGIN PASSWORD {}",
                    quote_ident(user),
                    quote_literal(password)
                ))
                .await
                .map_err(|e| sql_err("creating a role", e))?;
        }
        let owner = quote_ident(&opts.users[0].0);
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} OWNER {owner}",
                quote_ident(&opts.database)
            ))
            .await
            .map_err(|e| sql_err("creating the database", e))?;
        drop(admin);
        let db = self.superuser(&opts.database).await?;
        let seed = opts.seed_sql.as_deref().unwrap_or(DEFAULT_SEED_SQL);
        db.batch_execute(&format!("SET ROLE {owner};\n{seed}\nRESET ROLE;"))
            .await
            .map_err(|e| sql_err("seeding the database", e))?;
        for (user, _) in &opts.users[1..] {
            let u = quote_ident(user);
            db.batch_execute(&format!(
                "GRANT ALL ON ALL TABLES IN SCHEMA public TO {u}; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {u}; GRANT CREATE ON SCHEMA public TO {u};"
            ))
            .await
            .map_err(|e| sql_err("granting privileges", e))?;
        }
        Ok(())
    }

    /// The TCP address (127.0.0.1:PORT).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket (superuser `postgres` may log in there
    /// without a password).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The temp dir holding data, socket and log.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the server is still running.
    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .ok()
            .and_then(|mut c| c.as_mut().map(|c| matches!(c.try_wait(), Ok(None))))
            .unwrap_or(false)
    }

    /// Stops the server (fast shutdown; SIGKILL after 10 s). Idempotent. The directory
    /// stays until [`PgServer::remove`] or drop.
    pub fn stop(&self) {
        if let Ok(mut guard) = self.child.lock() {
            if let Some(mut child) = guard.take() {
                stop_child(&mut child);
            }
        }
    }

    /// Stops the server and, for the cluster's first server, removes the cluster's
    /// directory (stop the other servers first).
    pub fn remove(&self) {
        self.stop();
        if let Ok(mut dir) = self.dir.lock() {
            if let Some(d) = dir.take() {
                let _ = d.close();
            }
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child,
        // not yet reaped, so it cannot have been reused.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn stop_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.remove();
    }
}
