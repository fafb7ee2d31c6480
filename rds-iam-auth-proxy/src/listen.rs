//! The local listeners: where each target is served (the plan, checked before anything
//! listens) and the sockets themselves.
//!
//! TCP listeners bind to loopback unless the operator says otherwise: whoever reaches a
//! listener gets a session as the target's database user. Unix sockets are named as
//! PostgreSQL names them (`DIR/.s.PGSQL.PORT`), in a directory created 0700, the socket
//! itself 0600.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

/// Where one target is served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Place {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket's path (`DIR/.s.PGSQL.PORT`).
    Unix(PathBuf),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Tcp(addr) => write!(f, "{addr}"),
            Place::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What the command line says about listening, for every target.
#[derive(Debug, Clone)]
pub(crate) struct ListenArgs {
    pub(crate) address: IpAddr,
    pub(crate) port: Option<u16>,
    pub(crate) unix_socket: Option<PathBuf>,
    pub(crate) allow_non_loopback: bool,
}

/// One target's own listening settings (from the targets file) and its endpoint port.
#[derive(Debug, Clone)]
pub(crate) struct TargetListen<'a> {
    pub(crate) name: &'a str,
    pub(crate) local_port: Option<u16>,
    pub(crate) unix_socket: Option<&'a Path>,
    pub(crate) endpoint_port: u16,
}

/// The port PostgreSQL clients use when none is given, and the Cloud SQL Auth Proxy's
/// first port for PostgreSQL.
const DEFAULT_PORT: u16 = 5432;

/// Where every target is served, in target order (a target may have a TCP and a Unix
/// listener). Refuses a non-loopback address without the flag, two listeners on one
/// place, and a target with nowhere to listen.
pub(crate) fn plan(
    args: &ListenArgs,
    targets: &[TargetListen<'_>],
) -> Result<Vec<(usize, Place)>, String> {
    if !args.address.is_loopback() && !args.allow_non_loopback {
        return Err(format!(
            "--address {} is not a loopback address: anyone who can reach it would get a database session as the target's database user with no password. Pass --allow-non-loopback if this network is yours alone (and consider --client-password-file)",
            args.address
        ));
    }
    // Without --unix-socket, TCP always; with it, TCP only when a port is asked for.
    let tcp_by_default = args.unix_socket.is_none() || args.port.is_some();
    let mut next_port = args.port.unwrap_or(DEFAULT_PORT);
    let mut places = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let tcp_port = match t.local_port {
            Some(port) => Some(port),
            // Port 0: every listener on a port the system picks (the log names it).
            None if tcp_by_default && next_port == 0 => Some(0),
            None if tcp_by_default => {
                let port = next_port;
                next_port = next_port
                    .checked_add(1)
                    .ok_or_else(|| format!("target {}: no TCP port left after {port}", t.name))?;
                Some(port)
            }
            None => None,
        };
        if let Some(port) = tcp_port {
            places.push((i, Place::Tcp(SocketAddr::new(args.address, port))));
        }
        if let Some(dir) = t.unix_socket.or(args.unix_socket.as_deref()) {
            // psql -h DIR -p PORT: the port names the socket; the local port when the
            // target has one, else the endpoint's (so `-p 5432` works as for a server).
            let port = t.local_port.unwrap_or(t.endpoint_port);
            places.push((i, Place::Unix(socket_path(dir, port))));
        }
        if !places.iter().any(|(target, _)| *target == i) {
            return Err(format!("target {}: nowhere to listen", t.name));
        }
    }
    let mut seen: HashMap<&Place, usize> = HashMap::new();
    for (i, place) in &places {
        if matches!(place, Place::Tcp(addr) if addr.port() == 0) {
            continue;
        }
        if let Some(first) = seen.insert(place, *i) {
            let what = match place {
                Place::Tcp(addr) => format!("port {}", addr.port()),
                Place::Unix(path) => format!("socket {}", path.display()),
            };
            return Err(format!(
                "targets {} and {} both listen on {what}: give one of them another local_port",
                targets[first].name, targets[*i].name
            ));
        }
    }
    Ok(places)
}

/// PostgreSQL's name for the socket of `port` in `dir`, which libpq looks for when given
/// `host=DIR port=PORT`.
pub(crate) fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// A bound listener.
#[derive(Debug)]
pub(crate) enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket, removed when dropped.
    Unix {
        /// The listener.
        listener: UnixListener,
        /// Held for its `Drop`: the socket file goes with the listener.
        _file: SocketFile,
    },
}

/// The path of a Unix socket this process created: removed when the listener goes.
#[derive(Debug)]
pub(crate) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Where it listens (for a TCP port 0, the port the system picked).
    pub(crate) fn local(&self, planned: &Place) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or(planned.to_string(), |a| a.to_string()),
            Listener::Unix { .. } => planned.to_string(),
        }
    }
}

/// Binds `place`. Errors name the place and what to do.
pub(crate) async fn bind(place: &Place) -> Result<Listener, String> {
    match place {
        Place::Tcp(addr) => TcpListener::bind(addr).await.map(Listener::Tcp).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("{addr} is in use (another proxy or a local PostgreSQL?): choose another --port or local_port")
            } else {
                format!("cannot listen on {addr}: {e}")
            }
        }),
        Place::Unix(path) => bind_unix(path).await,
    }
}

async fn bind_unix(path: &Path) -> Result<Listener, String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the socket directory {}: {e}", dir.display()))?;
    } else if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if path.exists() {
        // A socket left by a process that is gone can be replaced; a live one cannot.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(format!(
                "{} is in use by another process: choose another socket directory or port",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot replace the stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {} to its owner: {e}", path.display()))?;
    Ok(Listener::Unix {
        listener,
        _file: file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(port: Option<u16>, unix: Option<&str>) -> ListenArgs {
        ListenArgs {
            address: "127.0.0.1".parse().unwrap(),
            port,
            unix_socket: unix.map(PathBuf::from),
            allow_non_loopback: false,
        }
    }

    fn target(name: &str, local_port: Option<u16>) -> TargetListen<'_> {
        TargetListen {
            name,
            local_port,
            unix_socket: None,
            endpoint_port: 5432,
        }
    }

    #[test]
    fn ports_are_consecutive_unless_a_target_names_its_own() {
        let t = [
            target("a", None),
            target("b", Some(7000)),
            target("c", None),
        ];
        let p = plan(&args(Some(6000), None), &t).unwrap();
        let shown: Vec<String> = p.iter().map(|(i, p)| format!("{i}:{p}")).collect();
        assert_eq!(
            shown,
            ["0:127.0.0.1:6000", "1:127.0.0.1:7000", "2:127.0.0.1:6001"]
        );
        let default = plan(&args(None, None), &[target("a", None)]).unwrap();
        assert_eq!(default[0].1.to_string(), "127.0.0.1:5432");
    }

    #[test]
    fn a_unix_socket_directory_alone_opens_no_tcp_listener() {
        let p = plan(&args(None, Some("/run/rds")), &[target("a", None)]).unwrap();
        assert_eq!(p, [(0, Place::Unix("/run/rds/.s.PGSQL.5432".into()))]);
        let both = plan(&args(Some(6000), Some("/run/rds")), &[target("a", None)]).unwrap();
        assert_eq!(both.len(), 2);
    }

    #[test]
    fn two_targets_on_one_place_are_refused_by_name() {
        let t = [target("a", Some(6000)), target("b", None)];
        let err = plan(&args(Some(6000), None), &t).unwrap_err();
        assert!(
            err.contains("targets a and b both listen on port 6000"),
            "{err}"
        );
        let sockets = [target("a", None), target("b", None)];
        let err = plan(&args(None, Some("/d")), &sockets).unwrap_err();
        assert!(err.contains("socket /d/.s.PGSQL.5432"), "{err}");
    }

    #[test]
    fn a_non_loopback_address_needs_the_flag() {
        let mut a = args(None, None);
        a.address = "0.0.0.0".parse().unwrap();
        let err = plan(&a, &[target("a", None)]).unwrap_err();
        assert!(err.contains("--allow-non-loopback"), "{err}");
        a.allow_non_loopback = true;
        assert!(plan(&a, &[target("a", None)]).is_ok());
    }

    #[tokio::test]
    async fn a_port_in_use_is_named_and_sockets_are_private() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = bind(&Place::Tcp(taken.local_addr().unwrap()))
            .await
            .unwrap_err();
        assert!(err.contains("is in use"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/.s.PGSQL.5432");
        let listener = bind(&Place::Unix(path.clone())).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        let err = bind(&Place::Unix(path.clone())).await.unwrap_err();
        assert!(err.contains("in use by another process"), "{err}");
        drop(listener);
        assert!(!path.exists(), "removed with its listener");
    }
}
