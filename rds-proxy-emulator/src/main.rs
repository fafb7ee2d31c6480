//! `rds-proxy-emulator`: the local stack from the command line.
//!
//! ```text
//! rds-proxy-emulator serve  --config local-stack.toml --state-dir .local   # foreground
//! rds-proxy-emulator status --state-dir .local                             # summary, counters, metrics
//! rds-proxy-emulator metrics --state-dir .local                            # RDS Proxy's metrics, `Name value` lines
//! rds-proxy-emulator fault sts-hang|sts-refuse|proxy-stall|clear            # fault injection
//! rds-proxy-emulator fault secrets hang|refuse|none                         # Secrets Manager faults
//! rds-proxy-emulator rotate-secret                                          # rotate the secrets now
//! rds-proxy-emulator failover                                              # promote a reader
//! rds-proxy-emulator check-config --config local-stack.toml
//! ```
//!
//! Exit status: 0 success, 1 runtime error, 2 usage error, 3 `status` of a stack that is
//! not running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rds_proxy_emulator::accept::{accept_with_backoff, Backoff};
use rds_proxy_emulator::{shell_quote, LocalStack, StackConfig, StartOptions};

#[derive(Parser, Debug)]
#[command(
    name = "rds-proxy-emulator",
    version,
    about = "Local stand-in for AWS STS and an RDS Proxy (IAM auth, TLS) in front of a real PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run PostgreSQL, the STS stand-in and the proxy in the foreground until SIGTERM/SIGINT.
    Serve {
        /// Stack configuration (TOML).
        #[arg(long, default_value = "local-stack.toml")]
        config: PathBuf,
        /// Where to write stack.env, ca.pem, backend.env and pid files.
        #[arg(long, default_value = ".local")]
        state_dir: PathBuf,
    },
    /// Print a summary of the running stack (exit 3 if it is not running).
    Status {
        /// The state dir of `serve`.
        #[arg(long, default_value = ".local")]
        state_dir: PathBuf,
    },
    /// Print the proxy's metrics, with RDS Proxy's CloudWatch names (`Name value` lines).
    Metrics {
        /// The state dir of `serve`.
        #[arg(long, default_value = ".local")]
        state_dir: PathBuf,
    },
    /// Inject a fault into the running stack, or clear them: `sts-hang` (STS takes requests
    /// in and does not answer), `sts-refuse` (STS answers 503 ServiceUnavailable),
    /// `proxy-stall` (the proxy accepts connections and never answers), `clear`;
    /// `secrets hang|refuse|none` (Secrets Manager holds requests, answers 500
    /// InternalServiceError, or serves normally).
    Fault {
        /// The fault.
        #[arg(value_enum)]
        fault: FaultArg,
        /// For `secrets`: `hang`, `refuse` or `none`.
        #[arg(value_enum, required_if_eq("fault", "secrets"))]
        mode: Option<ModeArg>,
        /// The state dir of `serve`.
        #[arg(long, default_value = ".local")]
        state_dir: PathBuf,
    },
    /// Fail over: stop the writer, promote a reader (sessions on both are closed; a new
    /// reader is built from the new writer in the background).
    Failover {
        /// The state dir of `serve`.
        #[arg(long, default_value = ".local")]
        state_dir: PathBuf,
    },
    /// Rotate every secret now, as Secrets Manager's single-user rotation does.
    RotateSecret {
        /// The state dir of `serve`.
        #[arg(long, default_value = ".local")]
        state_dir: PathBuf,
    },
    /// Validate a configuration file.
    CheckConfig {
        /// Stack configuration (TOML).
        #[arg(long, default_value = "local-stack.toml")]
        config: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FaultArg {
    StsHang,
    StsRefuse,
    ProxyStall,
    Clear,
    Secrets,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ModeArg {
    Hang,
    Refuse,
    None,
}

impl FaultArg {
    fn command(self, mode: Option<ModeArg>) -> Result<&'static str, Failure> {
        Ok(match (self, mode) {
            (FaultArg::StsHang, None) => "fault sts-hang",
            (FaultArg::StsRefuse, None) => "fault sts-refuse",
            (FaultArg::ProxyStall, None) => "fault proxy-stall",
            (FaultArg::Clear, None) => "fault clear",
            (FaultArg::Secrets, Some(ModeArg::Hang)) => "fault secrets hang",
            (FaultArg::Secrets, Some(ModeArg::Refuse)) => "fault secrets refuse",
            (FaultArg::Secrets, Some(ModeArg::None)) => "fault secrets none",
            (FaultArg::Secrets, None) => {
                return Err(Failure("fault secrets needs hang, refuse or none".into()))
            }
            (_, Some(_)) => {
                return Err(Failure(
                    "hang, refuse or none only follow `fault secrets`".into(),
                ))
            }
        })
    }
}

/// The control socket of a running `serve` (one command line in, the answer out).
const CONTROL_SOCKET: &str = "control.sock";

/// Sends one command to the running stack's control socket.
fn control(state_dir: &Path, command: &str) -> Result<String, Failure> {
    use std::io::Read;
    let path = state_dir.join(CONTROL_SOCKET);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        Failure(format!(
            "no running stack at {} ({e}): start one with `make local-up`",
            path.display()
        ))
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    match answer.strip_prefix("error: ") {
        Some(e) => Err(Failure(e.trim().to_string())),
        None => Ok(answer),
    }
}

/// Answers one control command.
async fn control_command(stack: &LocalStack, command: &str) -> Result<String, String> {
    use rds_proxy_emulator::StsFault;
    match command.trim() {
        "counters" => {
            let c = stack.counters();
            Ok(format!(
                "assume_role_calls={}\nassume_role_succeeded={}\nlogins_accepted={}\nlogins_refused={}\nsessions_pinned={}\nsessions_closed_by_failover={}\nget_secret_value_calls={}\nget_secret_value_succeeded={}\nsecret_rotations={}\nsts_fault={}\nsecrets_fault={}\nproxy_stall={}\n",
                c.assume_role_calls,
                c.assume_role_succeeded,
                c.logins_accepted,
                c.logins_refused,
                c.sessions_pinned,
                c.sessions_closed_by_failover,
                c.get_secret_value_calls,
                c.get_secret_value_succeeded,
                c.secret_rotations,
                stack.control().sts_fault().as_str(),
                stack.control().secrets_fault().as_str(),
                stack.control().proxy_stall(),
            ))
        }
        "metrics" => Ok(stack.metrics().render()),
        "servers" => {
            let mut out = String::new();
            for s in stack.servers().await {
                out.push_str(&format!(
                    "{} {} {} {} {} {}\n",
                    s.name,
                    s.role.as_str(),
                    s.addr,
                    s.pid,
                    s.lag_bytes
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.replay_lag_ms
                        .map(|ms| format!("{ms:.1}"))
                        .unwrap_or_else(|| "-".into()),
                ));
            }
            Ok(out)
        }
        "failover" => {
            let r = stack.failover().await.map_err(|e| e.to_string())?;
            Ok(format!(
                "failover: {} stopped, {} promoted to writer in {} ms; {} client session(s) in a transaction or pinned are closed, idle ones continue on the new writer; a new reader is being built\n",
                r.old_writer,
                r.new_writer,
                r.took.as_millis(),
                r.sessions_closed
            ))
        }
        "fault sts-hang" => {
            stack.set_sts_fault(StsFault::Hang);
            Ok("STS: hanging every request until `fault clear`\n".into())
        }
        "fault sts-refuse" => {
            stack.set_sts_fault(StsFault::Refuse);
            Ok("STS: answering 503 ServiceUnavailable until `fault clear`\n".into())
        }
        "fault proxy-stall" => {
            stack.set_proxy_stall(true);
            Ok("proxy: stalling new connections until `fault clear`\n".into())
        }
        "rotate-secret" => {
            let n = stack.rotate_secret_now().await.map_err(|e| e.to_string())?;
            Ok(format!(
                "rotated {n} secret(s): AWSCURRENT holds a new password, AWSPREVIOUS the old one\n"
            ))
        }
        "fault secrets hang" | "fault secrets refuse" | "fault secrets none" => {
            let mode = command.trim().rsplit(' ').next().unwrap_or_default();
            let fault = rds_proxy_emulator::ServiceFault::parse(mode)
                .ok_or_else(|| format!("unknown fault {mode}"))?;
            stack.set_secrets_fault(fault);
            Ok(match fault {
                rds_proxy_emulator::ServiceFault::None => "Secrets Manager: serving normally\n".into(),
                rds_proxy_emulator::ServiceFault::Hang => "Secrets Manager: hanging every request until `fault secrets none`\n".into(),
                rds_proxy_emulator::ServiceFault::Refuse => "Secrets Manager: answering 500 InternalServiceError until `fault secrets none`\n".into(),
            })
        }
        "fault clear" => {
            stack.clear_faults();
            Ok("faults cleared\n".into())
        }
        other => Err(format!("unknown control command {other:?}")),
    }
}

/// `postgres.pid`: every running server's pid, one a line (for `make local-down` if
/// `serve` dies without cleaning up).
fn write_pids(state_dir: &Path, stack: &LocalStack) -> Result<(), Failure> {
    let pids: String = stack
        .postgres_pids()
        .iter()
        .map(|p| format!("{p}\n"))
        .collect();
    write_atomically(&state_dir.join("postgres.pid"), &pids)
}

async fn serve_control(listener: tokio::net::UnixListener, stack: &LocalStack, state_dir: &Path) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut backoff = Backoff::new();
    loop {
        let (stream, _) =
            accept_with_backoff("control socket", &mut backoff, || listener.accept()).await;
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, 1024));
        if reader.read_line(&mut line).await.is_err() {
            continue;
        }
        let answer = match control_command(stack, &line).await {
            Ok(a) => a,
            Err(e) => format!("error: {e}\n"),
        };
        let _ = write.write_all(answer.as_bytes()).await;
        let _ = write.shutdown().await;
        if line.trim() == "failover" {
            // Record the running servers now, and again once the new reader is up.
            let _ = write_pids(state_dir, stack);
            stack
                .wait_for_readers(1, std::time::Duration::from_secs(60))
                .await;
            let _ = write_pids(state_dir, stack);
        }
    }
}

/// A one-line runtime failure.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Serve { config, state_dir } => serve(&config, &state_dir),
        Command::Status { state_dir } => return status(&state_dir),
        Command::Fault {
            fault,
            mode,
            state_dir,
        } => fault
            .command(mode)
            .and_then(|command| control(&state_dir, command))
            .map(|answer| print!("{answer}")),
        Command::RotateSecret { state_dir } => {
            control(&state_dir, "rotate-secret").map(|answer| print!("{answer}"))
        }
        Command::Metrics { state_dir } => {
            control(&state_dir, "metrics").map(|answer| print!("{answer}"))
        }
        Command::Failover { state_dir } => {
            control(&state_dir, "failover").map(|answer| print!("{answer}"))
        }
        Command::CheckConfig { config } => StackConfig::from_file(&config)
            .map(|_| println!("{}: ok", config.display()))
            .map_err(Failure::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(m)) => {
            eprintln!("rds-proxy-emulator: {m}");
            ExitCode::from(1)
        }
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes a state file in one step (a temp file renamed into place), readable by its owner
/// only (mode 0600) from the start: `stack.env` holds the application principal's secret
/// key and `backend.env` the database password.
fn write_atomically(path: &Path, contents: &str) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // A temp file left by a crash keeps its mode if reused: start from a new one.
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| Failure(format!("writing {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Failure(format!("writing {}: {e}", path.display())))
}

fn serve(config_path: &Path, state_dir: &Path) -> Result<(), Failure> {
    let config = StackConfig::from_file(config_path)?;
    std::fs::create_dir_all(state_dir)
        .map_err(|e| Failure(format!("creating {}: {e}", state_dir.display())))?;
    let state_dir = state_dir
        .canonicalize()
        .map_err(|e| Failure(format!("{}: {e}", state_dir.display())))?;
    let pid_file = state_dir.join("serve.pid");
    if let Some(pid) = read_pid(&pid_file) {
        if pid != std::process::id() && process_alive(pid) {
            return Err(Failure(format!(
                "a stack is already running from {} (pid {pid}); stop it with `make local-down`",
                state_dir.display()
            )));
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "rds_proxy_emulator=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The stack runs on a runtime of its own; this one only waits for signals.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Signals are caught from here on. One that arrives while the stack starts, or
        // right after `stack.env` appears, then stops the stack as soon as it is up
        // (PostgreSQL stopped, state files removed) instead of killing `serve` with its
        // servers left running.
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        write_atomically(&pid_file, &format!("{}\n", std::process::id()))?;
        let stack = LocalStack::start_with(
            config,
            StartOptions {
                state_dir: Some(state_dir.clone()),
                ..StartOptions::default()
            },
        )
        .await;
        let stack = match stack {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&pid_file);
                return Err(Failure::from(e));
            }
        };
        let pg = stack.postgres();
        write_pids(&state_dir, &stack)?;
        write_atomically(&state_dir.join("postgres.dir"), &format!("{}\n", pg.dir().display()))?;
        let secret = stack
            .config()
            .proxy
            .db_users
            .iter()
            .find(|u| u.name == stack.db_user())
            .map(|u| u.backend_password.clone())
            .unwrap_or_default();
        let backend = format!(
            "# Direct PostgreSQL access, bypassing the proxy (benchmarks, debugging): the writer,\n# the first reader, TLS verified against the stack's CA (plaintext is accepted too).\nexport LOCAL_PG_HOST=127.0.0.1\nexport LOCAL_PG_PORT={}\nexport LOCAL_PG_READER_PORT={}\nexport LOCAL_PG_SSLMODE=verify-full\nexport LOCAL_PG_SSLROOTCERT={}\nexport LOCAL_PG_USER={}\nexport LOCAL_PG_PASSWORD={}\nexport LOCAL_PG_DB={}\n",
            stack.backend_addr().port(),
            stack
                .reader_addrs()
                .first()
                .map(|a| a.port().to_string())
                .unwrap_or_default(),
            shell_quote(&stack.ca_path().display().to_string()),
            shell_quote(stack.db_user()),
            shell_quote(&secret),
            shell_quote(stack.db_name())
        );
        write_atomically(&state_dir.join("backend.env"), &backend)?;
        let socket_path = state_dir.join(CONTROL_SOCKET);
        let _ = std::fs::remove_file(&socket_path);
        let control_listener = tokio::net::UnixListener::bind(&socket_path)
            .map_err(|e| Failure(format!("binding {}: {e}", socket_path.display())))?;
        // Written last: its presence means "ready" (the control socket answers, signals
        // shut down cleanly).
        let secret_env = stack.secret_env_file();
        write_atomically(&state_dir.join("secret.env"), &secret_env)?;
        write_atomically(&state_dir.join("stack.env"), &stack.env_file())?;
        tracing::info!("ready: source {}", state_dir.join("stack.env").display());

        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = serve_control(control_listener, &stack, &state_dir) => {}
        }
        tracing::info!("shutting down");
        for f in ["stack.env", "secret.env", "backend.env", "postgres.pid", "postgres.dir", CONTROL_SOCKET] {
            let _ = std::fs::remove_file(state_dir.join(f));
        }
        stack.shutdown().await;
        let _ = std::fs::remove_file(&pid_file);
        Ok::<(), Failure>(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = if v.starts_with('\'') && v.ends_with('\'') && v.len() >= 2 {
                v[1..v.len() - 1].replace("'\\''", "'")
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        })
        .collect()
}

fn status(state_dir: &Path) -> ExitCode {
    let running = read_pid(&state_dir.join("serve.pid")).filter(|p| process_alive(*p));
    let env = std::fs::read_to_string(state_dir.join("stack.env")).ok();
    let (Some(pid), Some(env)) = (running, env) else {
        println!(
            "local stack: not running (no live `serve` with a stack.env in {})",
            state_dir.display()
        );
        return ExitCode::from(3);
    };
    let vars = parse_env_file(&env);
    let get = |k: &str| {
        vars.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("?")
    };
    let env_path = state_dir.join("stack.env");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "local stack running (pid {pid})\n  STS                {}\n  Secrets Manager    {}\n  Parameter Store    {}\n  READ_ONLY endpoint {}:{} -> listening on {}\n  READ_WRITE         {} -> listening on {}\n  role               {} (external id {})\n  db user / database {} / {}\n  CA bundle          {}\n  binary             {}\n\nUse it (the CLI reads these variables; psql gets the token in a password file it reads once):\n  source {}\n  cargo run -q -p rds-iam-auth-cli -- check\n  cargo run -q -p rds-iam-auth-cli -- psql -- -c 'SELECT * FROM customers'\nPassword user (SCRAM through the proxy, password in Secrets Manager): source {} too\nStop it: make local-down",
        get("AWS_ENDPOINT_URL_STS"),
        get("AWS_ENDPOINT_URL_SECRETS_MANAGER"),
        get("AWS_ENDPOINT_URL_SSM"),
        get("RDS_PROXY_APPLICATION_ENDPOINT"),
        get("DB_PORT"),
        get("DB_CONNECT_HOST"),
        get("RDS_PROXY_READ_WRITE_ENDPOINT"),
        get("DB_CONNECT_HOST_READ_WRITE"),
        get("DATABASE_ACCOUNT_IAM_ROLE"),
        get("EXTERNAL_ID"),
        get("DB_USERNAME"),
        get("DBNAME"),
        get("DB_CA_BUNDLE"),
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into()),
        env_path.display(),
        state_dir.join("secret.env").display(),
    );
    if let Ok(answer) = control(state_dir, "servers") {
        let _ = writeln!(
            out,
            "\nPostgreSQL servers (name, role, address, pid, replication lag):"
        );
        for line in answer.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if let [name, role, addr, pid, bytes, ms] = f[..] {
                let lag = match (role, bytes, ms) {
                    ("reader", "-", _) => "lag unknown (not streaming)".to_string(),
                    ("reader", b, "-") => format!("lag {b} bytes"),
                    ("reader", b, ms) => format!("lag {b} bytes, replay lag {ms} ms"),
                    _ => String::new(),
                };
                let _ = writeln!(out, "  {name:<6} {role:<8} {addr:<16} pid {pid:<8} {lag}");
            }
        }
    }
    match control(state_dir, "counters") {
        Ok(answer) => {
            let kv: Vec<(&str, &str)> = answer.lines().filter_map(|l| l.split_once('=')).collect();
            let c = |k: &str| {
                kv.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| *v)
                    .unwrap_or("?")
            };
            let _ = writeln!(
                out,
                "\nSince start:\n  STS AssumeRole     {} received, {} succeeded\n  proxy logins       {} accepted, {} refused\n  sessions pinned    {} pinned so far\n  closed by failover {}\n  GetSecretValue     {} received, {} succeeded; {} rotation(s)\n  faults             STS {}, Secrets Manager {}, proxy stall {}",
                c("assume_role_calls"),
                c("assume_role_succeeded"),
                c("logins_accepted"),
                c("logins_refused"),
                c("sessions_pinned"),
                c("sessions_closed_by_failover"),
                c("get_secret_value_calls"),
                c("get_secret_value_succeeded"),
                c("secret_rotations"),
                c("sts_fault"),
                c("secrets_fault"),
                if c("proxy_stall") == "true" { "on" } else { "off" },
            );
        }
        Err(Failure(e)) => {
            let _ = writeln!(out, "\n(counters unavailable: {e})");
        }
    }
    if let Ok(answer) = control(state_dir, "metrics") {
        let _ = writeln!(out, "\nProxy metrics (RDS Proxy's CloudWatch names; `rds-proxy-emulator metrics` prints them alone):");
        for line in answer.lines() {
            if let Some((name, value)) = line.split_once(' ') {
                let unit = if name == "QueryDatabaseResponseLatency" {
                    " µs (average)"
                } else {
                    ""
                };
                let _ = writeln!(out, "  {name:<42} {value}{unit}");
            }
        }
    }
    ExitCode::SUCCESS
}
