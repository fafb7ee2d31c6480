//! A local auth proxy for Amazon RDS Proxy (PostgreSQL): the counterpart, for RDS with
//! cross-account IAM authentication, of Google's Cloud SQL Auth Proxy.
//!
//! Programs in any language connect to a local listener with no password; every client
//! connection is opened through an [`rds_iam_auth::Connector`] (cached cross-account
//! credentials, a fresh IAM token or, for a database on passwords, the target's stored
//! password, TLS verified against the endpoint name) and then relayed byte for byte.
//!
//! | module | job |
//! |---|---|
//! | [`targets`] | the targets file (TOML): one entry per database, shared with `rds-iam-auth check --config` |
//! | `args.rs` | the command line (the Cloud SQL Auth Proxy's flag names) |
//! | `listen.rs` | the local listeners: TCP on loopback by default, Unix sockets laid out as PostgreSQL's |
//! | `frontend.rs` | the client's side of the protocol: startup, TLS refusal, user check, errors |
//! | `scram.rs` | the optional client password, checked with SCRAM-SHA-256 as PostgreSQL does |
//! | `session.rs` | one client: the upstream login through the connector, then the relay |
//! | `cancel.rs` | cancel requests, forwarded upstream for keys this proxy handed out |
//! | `metrics.rs` | counters and the connect latency histogram, in Prometheus text |
//! | `http.rs` | the health, metrics and `/quitquitquit` endpoints |
#![warn(missing_docs)]
#![deny(unreachable_pub)]

mod args;
mod frontend;
mod http;
mod listen;
mod metrics;
mod scram;
mod session;
pub mod targets;

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;

pub use args::Args;
use http::{HttpSettings, Status};
use listen::{ListenArgs, Listener, Place, TargetListen};
use metrics::Metrics;
use scram::ScramVerifier;
use session::{Served, Sessions};
use targets::Target;

/// Exit code for a configuration the proxy refuses before it listens.
const EXIT_CONFIG: u8 = 2;

/// Runs the proxy with these command-line arguments (the first is the program name), on
/// a runtime of its own: what `rds-iam-auth-proxy` and `rds-iam-auth proxy` do.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rds-iam-auth-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

/// Runs the proxy until SIGTERM, SIGINT or `/quitquitquit`: exit 0 when every open
/// connection ended within `--max-sigterm-delay`, 1 when some had to be closed or the
/// start-up connection test failed, 2 for a configuration refused before listening.
pub async fn run(args: Args) -> ExitCode {
    init_logs(&args);
    match start(&args).await {
        Ok(running) if args.run_connection_test && !running.connection_test().await => {
            ExitCode::FAILURE
        }
        Ok(running) => running.serve(&args).await,
        Err(Refusal(code, message)) => {
            // One plain line for a person at a terminal; an event for a log collector.
            if args.structured_logs {
                tracing::error!("{message}");
            } else {
                eprintln!("rds-iam-auth-proxy: {message}");
            }
            ExitCode::from(code)
        }
    }
}

/// Why the proxy did not start, and its exit code.
struct Refusal(u8, String);

fn config_error(message: impl Into<String>) -> Refusal {
    Refusal(EXIT_CONFIG, message.into())
}

/// Everything bound and built, not yet accepting.
struct Running {
    sessions: Arc<Sessions>,
    listeners: Vec<(usize, Place, Listener)>,
    status: Arc<Status>,
    http: Option<(tokio::net::TcpListener, HttpSettings)>,
}

async fn start(args: &Args) -> Result<Running, Refusal> {
    let targets = match &args.config {
        Some(path) => targets::load(path).map_err(|e| config_error(e.to_string()))?,
        None => vec![target_from_env()?],
    };
    // Built at once: each loads the AWS configuration (files, the credential chain).
    let built = futures_util::future::join_all(targets.iter().map(|target| async move {
        let connector = target
            .config
            .clone()
            .connector()
            .await
            .map_err(|e| config_error(format!("target {}: {e}", target.name)))?;
        // The connector's user, not the config's: a secret may have filled it.
        let db_user = connector.token_params().username().to_owned();
        Ok(Served {
            name: target.name.clone(),
            connector,
            db_user,
        })
    }))
    .await;
    let served = built.into_iter().collect::<Result<Vec<_>, Refusal>>()?;
    let listen_args = ListenArgs {
        address: args.address,
        port: args.port,
        unix_socket: args.unix_socket.clone(),
        allow_non_loopback: args.allow_non_loopback,
    };
    let listen: Vec<TargetListen<'_>> = targets
        .iter()
        .map(|t| TargetListen {
            name: &t.name,
            local_port: t.local_port,
            unix_socket: t.unix_socket.as_deref(),
            endpoint_port: t.config.get_port().unwrap_or(targets::DEFAULT_PORT),
        })
        .collect();
    let client_password = match &args.client_password_file {
        Some(path) => Some(read_client_password(path)?),
        None => None,
    };
    let places = listen::plan(&listen_args, &listen).map_err(config_error)?;
    let http_settings = HttpSettings {
        address: args.http_address,
        port: args.http_port,
        health_check: args.health_check,
        prometheus: args.prometheus,
        quitquitquit: args.quitquitquit,
    };
    let http = http::bind(&http_settings).await.map_err(|e| {
        config_error(format!(
            "cannot serve HTTP on {}:{}: {e} (choose another --http-port)",
            args.http_address, args.http_port
        ))
    })?;
    let mut listeners = Vec::with_capacity(places.len());
    for (t, place) in places {
        let listener = listen::bind(&place)
            .await
            .map_err(|e| config_error(format!("target {}: {e}", targets[t].name)))?;
        listeners.push((t, place, listener));
    }
    let metrics = Arc::new(Metrics::new(
        served.iter().map(|t| t.name.clone()).collect(),
    ));
    let connectors = served.iter().map(|t| t.connector.clone()).collect();
    let status = Arc::new(Status::new(
        connectors,
        metrics.clone(),
        Some(args.max_connections),
    ));
    Ok(Running {
        sessions: Arc::new(Sessions::new(
            served,
            args.max_connections,
            client_password,
            metrics,
        )),
        listeners,
        status,
        http: http.map(|listener| (listener, http_settings)),
    })
}

/// The local clients' password, from its file (one line; a final newline is not part of
/// it).
fn read_client_password(path: &std::path::Path) -> Result<ScramVerifier, Refusal> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("--client-password-file {shown}: cannot read: {e}")))?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(config_error(format!(
            "--client-password-file {shown}: the file is empty"
        )));
    }
    if password.contains('\n') {
        return Err(config_error(format!(
            "--client-password-file {shown}: more than one line (the password is the whole first line)"
        )));
    }
    ScramVerifier::new(password)
        .map_err(|e| Refusal(1, format!("--client-password-file {shown}: {e}")))
}

/// The one target of the environment mapping (the variables the Lambda reads).
fn target_from_env() -> Result<Target, Refusal> {
    let config = rds_iam_auth::Config::from_env().map_err(|e| config_error(e.to_string()))?;
    if config.get_hostname().is_none() {
        return Err(config_error(
            "no target: give a targets file (--config FILE), or set RDS_PROXY_APPLICATION_ENDPOINT, DB_USERNAME and DBNAME (with DATABASE_ACCOUNT_IAM_ROLE and EXTERNAL_ID for a cross-account role)",
        ));
    }
    Ok(Target {
        name: config
            .get_hostname()
            .unwrap_or("default")
            .split('.')
            .next()
            .unwrap_or("default")
            .to_owned(),
        config,
        local_port: None,
        unix_socket: None,
    })
}

impl Running {
    /// The staged check of every target, at once; each report is logged. Whether all
    /// passed.
    async fn connection_test(&self) -> bool {
        let checks = self.sessions.targets.iter().map(|t| async move {
            let report = t.connector.check().await;
            (t, report)
        });
        let mut passed = true;
        for (target, report) in futures_util::future::join_all(checks).await {
            if report.is_success() {
                tracing::info!(target = %target.name, "connection test passed:\n{report}");
            } else {
                passed = false;
                tracing::error!(target = %target.name, "connection test failed:\n{report}");
            }
        }
        passed
    }

    async fn serve(self, args: &Args) -> ExitCode {
        let (quit_tx, mut quit) = watch::channel(false);
        tokio::spawn(signals(quit_tx.clone()));
        if let Some((listener, settings)) = self.http {
            tracing::info!(
                "HTTP endpoints on {}",
                listener
                    .local_addr()
                    .map_or_else(|_| "?".to_owned(), |a| a.to_string())
            );
            tokio::spawn(http::serve(
                listener,
                settings,
                self.status.clone(),
                quit_tx.clone(),
                quit.clone(),
            ));
        }
        // Started once every target's credentials are in (the connection test, when asked
        // for, has passed already): until then /startup and /readiness say what is missing.
        tokio::spawn(fetch_credentials(
            self.sessions.clone(),
            self.status.clone(),
        ));
        let mut accepting = Vec::new();
        for (t, place, listener) in self.listeners {
            let target = &self.sessions.targets[t];
            tracing::info!(
                target = %target.name,
                "listening on {} for {}@{}",
                listener.local(&place),
                target.db_user,
                target.connector.token_params().hostname()
            );
            accepting.push(tokio::spawn(accept_loop(
                self.sessions.clone(),
                t,
                listener,
                quit.clone(),
            )));
        }
        tracing::info!("the proxy has started and is ready for new connections");
        let _ = quit.wait_for(|q| *q).await;

        // Stop accepting (the listeners close and sockets are removed), then let open
        // sessions finish for up to the delay.
        for task in accepting {
            let _ = task.await;
        }
        let open = self.sessions.open();
        let delay = args.max_sigterm_delay;
        if open == 0 {
            tracing::info!("shut down: no connection was open");
            return ExitCode::SUCCESS;
        }
        tracing::info!("shutting down: waiting up to {delay:?} for {open} open connection(s)");
        match tokio::time::timeout(delay, self.sessions.all_closed()).await {
            Ok(()) => {
                tracing::info!("shut down: every connection ended");
                ExitCode::SUCCESS
            }
            Err(_) => {
                tracing::error!(
                    "{} connection(s) still open after --max-sigterm-delay {delay:?}: closed",
                    self.sessions.open()
                );
                ExitCode::FAILURE
            }
        }
    }
}

/// Fetches every target's credentials at once, and a password target's stored password
/// (so that an unreadable secret shows at start-up, not at the first client), then marks
/// the proxy started. A target whose fetch fails is retried every second until it
/// succeeds.
async fn fetch_credentials(sessions: Arc<Sessions>, status: Arc<Status>) {
    // One attempt's limit; a fetch still running then goes on, and the next attempt waits
    // for it rather than starting another.
    const ATTEMPT: Duration = Duration::from_secs(30);
    let total = sessions.targets.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    status.starting(format!("fetching credentials (0 of {total} targets done)"));
    let fetches = sessions.targets.iter().map(|target| {
        let (done, status) = (&done, &status);
        async move {
            let mut logged = false;
            loop {
                match target.connector.warm_up(ATTEMPT).await {
                    Ok(()) => break,
                    Err(e) => {
                        if !logged {
                            tracing::warn!(target = %target.name, error = %e, "credentials not fetched yet; retrying");
                            logged = true;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            let n = done.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
            status.starting(format!("fetching credentials ({n} of {total} targets done)"));
        }
    });
    futures_util::future::join_all(fetches).await;
    status.started();
    tracing::info!("credentials fetched for every target");
}

/// Accepts clients of target `t` until the quit signal; each is served on a task of its
/// own. The listener is dropped on return (a Unix socket file is removed).
async fn accept_loop(
    sessions: Arc<Sessions>,
    t: usize,
    listener: Listener,
    mut quit: watch::Receiver<bool>,
) {
    // Errors such as EMFILE are passing: wait a little instead of spinning on them.
    let pause = Duration::from_millis(100);
    loop {
        let accepted = tokio::select! {
            _ = quit.wait_for(|q| *q) => return,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    match stream {
                        Accepted::Tcp(s) => session::serve(&sessions, t, s, &peer).await,
                        Accepted::Unix(s) => session::serve(&sessions, t, s, &peer).await,
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Accepted, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            // Small protocol messages go out at once, as libpq and PostgreSQL send them.
            s.set_nodelay(true)?;
            Ok((Accepted::Tcp(s), peer.to_string()))
        }
        Listener::Unix { listener: l, .. } => {
            let (s, _) = l.accept().await?;
            Ok((Accepted::Unix(s), "unix socket".to_owned()))
        }
    }
}

/// SIGTERM and SIGINT ask for a graceful shutdown; a second one ends the process at once.
async fn signals(quit: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers: SIGTERM will end the proxy at once");
        return;
    };
    for round in 0..2 {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if round == 0 {
            tracing::info!("{name} received: no new connections");
            let _ = quit.send(true);
        } else {
            tracing::warn!("{name} received again: exiting now");
            std::process::exit(1);
        }
    }
}

/// Human-readable logs on stderr, or JSON lines with --structured-logs; INFO, or DEBUG
/// with --debug-logs; RUST_LOG wins when set.
fn init_logs(args: &Args) {
    use tracing_subscriber::EnvFilter;
    let default = if args.debug_logs { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,rds_iam_auth_proxy={default},rds_iam_auth={default}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if args.structured_logs {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
