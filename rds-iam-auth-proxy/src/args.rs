//! The command line. Flags are named as the Cloud SQL Auth Proxy names them, so that people
//! who run that proxy beside their services feel at home here.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A local auth proxy for Amazon RDS Proxy (PostgreSQL).
///
/// Clients connect to a local listener with no password, as the target's database user;
/// every connection gets cached cross-account credentials, a fresh IAM token (or the
/// target's stored password, from Secrets Manager or Parameter Store) and TLS verified
/// against the endpoint name.
///
/// One target comes from the environment (RDS_PROXY_APPLICATION_ENDPOINT, DB_USERNAME,
/// DBNAME, DATABASE_ACCOUNT_IAM_ROLE, EXTERNAL_ID, DB_PORT, DB_CA_BUNDLE, DB_CONNECT_HOST,
/// DB_SECRET_ARN or DB_PASSWORD_PARAMETER, ...), many from a targets file (--config).
#[derive(Debug, Clone, Parser)]
#[command(name = "rds-iam-auth-proxy", version)]
pub struct Args {
    /// Targets file (TOML): one listener per target. Without it, one target from the
    /// environment.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address the TCP listeners bind to. Anything but loopback needs
    /// --allow-non-loopback.
    #[arg(long, short = 'a', default_value = "127.0.0.1", value_name = "IP")]
    pub address: IpAddr,

    /// First local TCP port: the next targets get the following ports (a target's
    /// `local_port` in the targets file wins). Default 5432, unless --unix-socket is given;
    /// 0 puts every listener on a free port the system picks (the log names it).
    #[arg(long, short = 'p', value_name = "PORT")]
    pub port: Option<u16>,

    /// Directory for Unix sockets laid out as PostgreSQL's (DIR/.s.PGSQL.PORT, so that
    /// `psql -h DIR -p PORT` works); created 0700 when missing. Without --port, no TCP
    /// listeners are opened.
    #[arg(long, value_name = "DIR")]
    pub unix_socket: Option<PathBuf>,

    /// Allow TCP listeners on an address other than loopback. Anyone who can reach such a
    /// listener gets a database session as the target's database user, with no password
    /// (unless --client-password-file is set): only for a network you control.
    #[arg(long)]
    pub allow_non_loopback: bool,

    /// A file holding the password local clients must present (SCRAM-SHA-256), for hosts
    /// shared with other users. Without it, clients bring no password.
    #[arg(long, value_name = "FILE")]
    pub client_password_file: Option<PathBuf>,

    /// Address of the HTTP server (health checks, metrics, /quitquitquit).
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    pub http_address: IpAddr,

    /// Port of the HTTP server; it runs only when --health-check, --prometheus or
    /// --quitquitquit is given.
    #[arg(long, default_value_t = 9090, value_name = "PORT")]
    pub http_port: u16,

    /// Serve /startup, /readiness and /liveness on the HTTP server.
    #[arg(long)]
    pub health_check: bool,

    /// Serve Prometheus metrics on /metrics.
    #[arg(long)]
    pub prometheus: bool,

    /// Serve POST /quitquitquit: a graceful shutdown, as on SIGTERM (for batch jobs whose
    /// sidecar must end with them).
    #[arg(long)]
    pub quitquitquit: bool,

    /// Most client connections open at once, over all targets; more are refused (SQLSTATE
    /// 53300) and /readiness fails. 0: no limit.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_connections: usize,

    /// After SIGTERM (or /quitquitquit), how long open connections may go on before they
    /// are closed: new ones are refused meanwhile. Takes units: 30s, 2m.
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_sigterm_delay: Duration,

    /// Run the staged connection check for every target at start; exit 1 if one fails.
    #[arg(long)]
    pub run_connection_test: bool,

    /// Logs as JSON lines (one object per event), for log collectors.
    #[arg(long)]
    pub structured_logs: bool,

    /// Debug logs (RUST_LOG, when set, wins).
    #[arg(long)]
    pub debug_logs: bool,
}

/// A duration with units (`500ms`, `5s`, `2m`, `1h30m`); `0` alone means none.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration with units (5s, 2m, 1h30m): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").unwrap_err().contains("with units"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn flags_parse_as_documented() {
        let a = Args::try_parse_from([
            "p",
            "--port",
            "6000",
            "--max-sigterm-delay",
            "30s",
            "--max-connections",
            "10",
            "--health-check",
        ])
        .unwrap();
        assert_eq!(a.port, Some(6000));
        assert_eq!(a.max_sigterm_delay, Duration::from_secs(30));
        assert_eq!(a.max_connections, 10);
        assert!(a.health_check && !a.prometheus);
        assert_eq!(a.address.to_string(), "127.0.0.1");
        let bad = Args::try_parse_from(["p", "--max-sigterm-delay", "30"]).unwrap_err();
        assert!(bad.to_string().contains("with units"), "{bad}");
    }
}
