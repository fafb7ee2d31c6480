//! `rds-iam-auth`: IAM auth tokens and a staged connection check from the shell.
//!
//! `generate-db-auth-token` is a drop-in for `aws rds generate-db-auth-token` (same flags,
//! same output), plus `--role-arn` and an external ID (`--external-id-file`, `EXTERNAL_ID`
//! or `--external-id`) to sign with cross-account credentials.
//! `check` runs the whole path to the database and prints one line per stage;
//! `check --config targets.toml` checks every database of a targets file (the local
//! proxy's, see `check_all.rs`) at once and prints one line per database.
//!
//! Exit codes: 0 success, 1 runtime failure (no credentials, STS refused, connection
//! failed), 2 bad input (flags, host name, port, region, CA file, targets file).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod check_all;
mod passfile;
mod report;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand};
use rds_iam_auth::{CaBundle, Config, ConfigError, Error, Stage};

use crate::report::report_json;

#[derive(Parser)]
#[command(
    name = "rds-iam-auth",
    version,
    about = "IAM auth tokens and connection checks for Amazon RDS Proxy (PostgreSQL)",
    after_help = "Exit codes: 0 success, 1 runtime failure, 2 bad input.\nLogs: -v, or RUST_LOG=rds_iam_auth=debug."
)]
struct Cli {
    /// Log each stage to stderr (repeat for more detail).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print an IAM auth token, like `aws rds generate-db-auth-token`.
    GenerateDbAuthToken(TokenArgs),
    /// Run the connection path stage by stage and report where it breaks.
    Check(CheckArgs),
    /// Run psql through the whole IAM path: role, fresh token, verify-full TLS.
    Psql(PsqlArgs),
    /// Run the local auth proxy (`rds-iam-auth-proxy`): clients in any language connect
    /// to localhost with no password. `rds-iam-auth proxy --help` lists its flags.
    #[command(disable_help_flag = true)]
    Proxy(ProxyArgs),
}

#[derive(Args)]
struct ProxyArgs {
    /// The proxy's own flags, passed on as given.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROXY FLAGS"
    )]
    args: Vec<std::ffi::OsString>,
}

#[derive(Args)]
struct TokenArgs {
    /// Endpoint host name (the proxy endpoint or DB instance name).
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    hostname: String,
    /// Endpoint port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Database user name.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    username: String,
    #[command(flatten)]
    aws: AwsArgs,
}

#[derive(Args)]
struct AwsArgs {
    /// Signing region (default: from the endpoint name, else AWS_REGION / the profile).
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    region: Option<String>,
    /// Named profile of the AWS config files for the base credentials.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    profile: Option<String>,
    /// Assume this role (in the database account) and sign with its credentials.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    role_arn: Option<String>,
    /// External ID required by the role's trust policy. Visible to every user of this host
    /// in the process list: prefer --external-id-file or EXTERNAL_ID.
    #[arg(long, requires = "role_arn", value_parser = NonEmptyStringValueParser::new())]
    external_id: Option<String>,
    /// File holding the external ID (one line). Without either flag, EXTERNAL_ID is read
    /// when --role-arn is given.
    #[arg(long, requires = "role_arn", conflicts_with = "external_id")]
    external_id_file: Option<PathBuf>,
    /// Role session name (shown in the database account's CloudTrail).
    #[arg(long, requires = "role_arn", value_parser = NonEmptyStringValueParser::new())]
    role_session_name: Option<String>,
}

/// The same settings for `check` and `psql`, where the role and external ID may also come
/// from the environment (flags win).
#[derive(Args)]
struct CheckAwsArgs {
    /// Signing region (default: from the endpoint name, else AWS_REGION / the profile).
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    region: Option<String>,
    /// Named profile of the AWS config files for the base credentials.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    profile: Option<String>,
    /// Assume this role (in the database account) and sign with its credentials.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    role_arn: Option<String>,
    /// External ID required by the role's trust policy. Visible to every user of this host
    /// in the process list: prefer --external-id-file or EXTERNAL_ID.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    external_id: Option<String>,
    /// File holding the external ID (one line), instead of --external-id or EXTERNAL_ID.
    #[arg(long, conflicts_with = "external_id")]
    external_id_file: Option<PathBuf>,
    /// Role session name (shown in the database account's CloudTrail).
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    role_session_name: Option<String>,
}

impl From<CheckAwsArgs> for AwsArgs {
    fn from(a: CheckAwsArgs) -> Self {
        AwsArgs {
            region: a.region,
            profile: a.profile,
            role_arn: a.role_arn,
            external_id: a.external_id,
            external_id_file: a.external_id_file,
            role_session_name: a.role_session_name,
        }
    }
}

/// The external ID in `path`: its first line, which must not be empty.
fn read_external_id(path: &std::path::Path) -> Result<String, Error> {
    let invalid = |reason: String| Error::from(ConfigError::invalid("external_id", reason));
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(format!(
            "cannot read --external-id-file {}: {e}",
            path.display()
        ))
    })?;
    let id = text.lines().next().unwrap_or("").trim();
    if id.is_empty() {
        return Err(invalid(format!(
            "--external-id-file {} holds no external ID on its first line",
            path.display()
        )));
    }
    Ok(id.to_owned())
}

/// Where and as whom to connect. Each setting may also come from the environment, with the
/// library's mapping (the Lambda's variables, listed by `--help`); a flag wins over its
/// variable, so `source .local/stack.env && rds-iam-auth check` checks the local stack.
#[derive(Args)]
struct TargetArgs {
    /// Endpoint host name: what the token signs and the certificate must match.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    hostname: Option<String>,
    /// Endpoint port (default 5432).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Database user name.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    username: Option<String>,
    /// Database name (default: the user name).
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    database: Option<String>,
    /// Dial this address, host or host:port, instead; TLS is still verified against --hostname.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    connect_address: Option<String>,
    /// Extra CA certificates (PEM), e.g. the RDS bundle for direct instance connections.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// Limit for the whole check (every stage shares it), in seconds (default 10).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=300))]
    connect_timeout: Option<u64>,
    /// Log in with the password of this Secrets Manager secret (ARN; read with the assumed
    /// role, in the ARN's region) instead of an IAM token. Its username, host, port and
    /// dbname fill what is not given otherwise.
    #[arg(long, value_parser = NonEmptyStringValueParser::new(), conflicts_with = "password_parameter")]
    secret_arn: Option<String>,
    /// Log in with the password held by this Parameter Store SecureString (read with your
    /// own credentials) instead of an IAM token.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    password_parameter: Option<String>,
    /// Read the settings that flags and environment leave unset from the Parameter Store
    /// parameters under this path (hostname, port, user, database, assume_role, ...,
    /// password), with your own credentials (--profile, --region) [default:
    /// CONFIG_PARAMETER_PATH, as the Lambda].
    #[arg(long, value_name = "PATH", value_parser = NonEmptyStringValueParser::new())]
    parameters: Option<String>,
    #[command(flatten)]
    aws: CheckAwsArgs,
}

impl TargetArgs {
    /// The environment's settings, then the flags over them, then (with `--parameters`)
    /// the Parameter Store settings for what is still unset.
    async fn config(self, application_name: &str) -> Result<Config, Error> {
        // A variable whose flag is given is not read at all: the flag wins, even over a
        // malformed value.
        let password_flag = self.secret_arn.is_some() || self.password_parameter.is_some();
        let given = [
            ("RDS_PROXY_APPLICATION_ENDPOINT", self.hostname.is_some()),
            ("DB_PORT", self.port.is_some()),
            ("DB_USERNAME", self.username.is_some()),
            ("DBNAME", self.database.is_some()),
            ("DB_CONNECT_HOST", self.connect_address.is_some()),
            ("DB_CA_BUNDLE", self.ca_bundle.is_some()),
            ("DB_CONNECT_TIMEOUT_SECONDS", self.connect_timeout.is_some()),
            ("DATABASE_ACCOUNT_IAM_ROLE", self.aws.role_arn.is_some()),
            (
                "EXTERNAL_ID",
                self.aws.external_id.is_some() || self.aws.external_id_file.is_some(),
            ),
            // The password source is one setting: a flag for either replaces both variables.
            ("DB_SECRET_ARN", password_flag),
            ("DB_PASSWORD_PARAMETER", password_flag),
        ];
        let lookup = |name: &str| match given.iter().find(|(n, _)| *n == name) {
            Some((_, true)) => None,
            _ => std::env::var(name).ok(),
        };
        // Parameter Store is read with the same profile and region as the rest.
        let (profile, region) = (self.aws.profile.clone(), self.aws.region.clone());
        let mut config = with_aws(Config::from_lookup(lookup)?, self.aws.into())?;
        if config.get_application_name().is_none() {
            config = config.application_name(application_name);
        }
        if let Some(hostname) = self.hostname {
            config = config.hostname(hostname);
        }
        if let Some(port) = self.port {
            config = config.port(port);
        }
        if let Some(user) = self.username {
            config = config.user(user);
        }
        if let Some(db) = self.database {
            config = config.database(db);
        }
        if let Some(address) = self.connect_address {
            config = config.connect_address(address);
        }
        if let Some(path) = self.ca_bundle {
            config = config.ca_bundle(CaBundle::from_pem_file(path)?);
        }
        if let Some(seconds) = self.connect_timeout {
            config = config.connect_timeout(Duration::from_secs(seconds));
        }
        if password_flag {
            config = config
                .set_secret_arn(self.secret_arn)
                .set_password_parameter(self.password_parameter);
        }
        // As the Lambda: CONFIG_PARAMETER_PATH names the path when the flag does not.
        let parameters = self.parameters.or_else(|| {
            std::env::var(rds_iam_auth::env::CONFIG_PARAMETER_PATH)
                .ok()
                .filter(|p| !p.trim().is_empty())
        });
        if let Some(path) = parameters {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(profile) = profile {
                loader = loader.profile_name(profile);
            }
            if let Some(region) = region {
                loader = loader.region(aws_config::Region::new(region));
            }
            let sdk_config = loader.load().await;
            config =
                config.fill_unset_from(Config::from_parameters_with(&sdk_config, &path).await?);
        }
        if config.get_secret_arn().is_some() {
            // The secret may hold the endpoint and the user: the connector says what is
            // still missing once it has read it.
            return Ok(config);
        }
        let required = [
            (
                "hostname",
                config.get_hostname(),
                "--hostname",
                "RDS_PROXY_APPLICATION_ENDPOINT",
            ),
            ("user", config.get_user(), "--username", "DB_USERNAME"),
        ];
        for (name, value, flag, variable) in required {
            if value.is_none() {
                let reason = format!("is required: pass {flag} or set {variable}");
                return Err(ConfigError::invalid(name, reason).into());
            }
        }
        Ok(config)
    }
}

/// The variables `check` and `psql` read, for `--help`.
fn environment_help() -> String {
    let mut help = String::from("Environment (a flag wins over its variable):\n");
    for v in rds_iam_auth::env::VARIABLES {
        help.push_str(&format!("  {:<32} {}\n", v.name, v.meaning));
    }
    help.push_str("  AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL_STS, AWS_ACCESS_KEY_ID, ...  read by the AWS SDK\n");
    help.push_str("\nExit codes: 0 success, 1 runtime failure, 2 bad input.");
    help
}

/// The connection check.
#[derive(Args)]
#[command(after_help = environment_help())]
struct CheckArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Check every database of this targets file (TOML, the local proxy's) at once: one
    /// line per database, then a summary. The databases come from the file alone: the
    /// single-database flags are refused and their variables not read (--profile applies
    /// to every database).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "hostname", "port", "username", "database", "connect_address", "ca_bundle",
            "connect_timeout", "region", "role_arn", "external_id", "external_id_file",
            "role_session_name", "secret_arn", "password_parameter", "parameters",
        ],
    )]
    config: Option<PathBuf>,
    /// Print the report as one JSON object (stages, verdict, error with stage and hint);
    /// with --config, a JSON array of one object per database.
    #[arg(long)]
    json: bool,
}

/// psql through the whole IAM path.
#[derive(Args)]
#[command(after_help = environment_help())]
struct PsqlArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Arguments for psql, after `--` (e.g. `-- -c 'select 1'`).
    #[arg(last = true)]
    psql_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // usage errors: clap prints them and exits with 2
    if let Command::Proxy(proxy) = cli.command {
        // The proxy sets up its own logs and runtime, as its own binary does.
        let program = std::ffi::OsString::from("rds-iam-auth proxy");
        return rds_iam_auth_proxy::main_with_args(std::iter::once(program).chain(proxy.args));
    }
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rds-iam-auth: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::GenerateDbAuthToken(args) => generate(args).await,
            Command::Check(args) => check(args).await,
            Command::Psql(args) => psql(args).await,
            Command::Proxy(_) => unreachable!("run before the runtime is built"),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rds-iam-auth: error: {err}");
            ExitCode::from(if err.stage() == Stage::Config { 2 } else { 1 })
        }
    }
}

async fn generate(args: TokenArgs) -> Result<ExitCode, Error> {
    let mut aws = args.aws;
    if aws.role_arn.is_some() && aws.external_id.is_none() && aws.external_id_file.is_none() {
        aws.external_id = std::env::var("EXTERNAL_ID")
            .ok()
            .filter(|id| !id.trim().is_empty());
    }
    let config = with_aws(
        Config::new()
            .hostname(args.hostname)
            .port(args.port)
            .user(args.username),
        aws,
    )?;
    let token = config.connector().await?.token().await?;
    println!("{}", token.as_str());
    Ok(ExitCode::SUCCESS)
}

async fn check(args: CheckArgs) -> Result<ExitCode, Error> {
    if let Some(path) = &args.config {
        let profile = args.target.aws.profile;
        return Ok(check_all::check_all(path, profile, args.json).await);
    }
    let config = args.target.config("rds-iam-auth check").await?;
    let report = config.connector().await?.check().await;
    if args.json {
        println!("{}", report_json(&report));
    } else {
        println!("{report}");
    }
    Ok(if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs `psql` with a fresh token (assume role, sign) or the stored password (secret,
/// parameter), then `sslmode=verify-full` against the endpoint name while dialing the
/// override address. The password reaches psql's login through a password file that is
/// removed once read ([`passfile`]), never its command line (where `ps` shows it) nor its
/// environment (which every program psql starts inherits).
async fn psql(args: PsqlArgs) -> Result<ExitCode, Error> {
    let connector = args
        .target
        .config("rds-iam-auth psql")
        .await?
        .connector()
        .await?;
    let ca_bundle = connector.ca_bundle().map(|b| PathBuf::from(b.origin()));
    let password = connector.login_password().await?;
    let params = connector.token_params();
    let (dial_host, dial_port) = connector.dial_target();
    // psql is given the address (hostaddr) so that it dials the override while verifying
    // the endpoint name (host).
    let resolved = tokio::net::lookup_host((dial_host, dial_port)).await;
    let Some(hostaddr) = resolved.ok().and_then(|mut addrs| addrs.next()) else {
        eprintln!("rds-iam-auth: error: dns: cannot resolve {dial_host}: no address");
        return Ok(ExitCode::from(1));
    };
    let root = match ca_bundle {
        Some(path) => path,
        None => system_ca_bundle().ok_or_else(|| {
            Error::from(ConfigError::invalid(
                "ca_bundle",
                "no system CA bundle found for psql's verify-full: pass --ca-bundle (the RDS bundle, or Amazon's root CAs)",
            ))
        })?,
    };
    let conninfo = conninfo(&[
        ("host", params.hostname()),
        ("hostaddr", &hostaddr.ip().to_string()),
        ("port", &hostaddr.port().to_string()),
        ("user", params.username()),
        ("dbname", connector.database().unwrap_or(params.username())),
        ("sslmode", "verify-full"),
        ("sslrootcert", &root.display().to_string()),
        ("application_name", "rds-iam-auth psql"),
    ]);
    let io_error = |what: &str, e: std::io::Error| {
        eprintln!("rds-iam-auth: error: {what}: {e}");
        Ok(ExitCode::from(1))
    };
    let passfile = match passfile::Passfile::create(password.as_str()) {
        Ok(passfile) => passfile,
        Err(e) => return io_error("cannot write psql's password file", e),
    };
    if let Err(e) = passfile.remove_after_first_read() {
        return io_error("cannot watch psql's password file", e);
    }
    let mut command = std::process::Command::new("psql");
    command
        .arg(conninfo)
        .args(&args.psql_args)
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", passfile.path());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return io_error(
            "cannot run psql (install the PostgreSQL client: apt-get install postgresql-client)",
            e,
        ),
    };
    // psql shares the terminal's foreground process group: Ctrl-C reaches it too and
    // cancels its query. Ignored here (after the spawn, so psql keeps the default), or it
    // would end this process and leave psql orphaned.
    // SAFETY: setting a signal's disposition to SIG_IGN runs no handler code.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => return io_error("waiting for psql", e),
    };
    drop(passfile);
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// A libpq connection string with every value quoted: a value holding a space, tab or
/// newline cannot add a keyword of its own (`sslmode=disable` after `verify-full`).
fn conninfo(pairs: &[(&str, &str)]) -> String {
    let quoted: Vec<String> = pairs
        .iter()
        .map(|(key, value)| {
            format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )
        })
        .collect();
    quoted.join(" ")
}

/// The operating system's CA bundle, where the usual distributions keep it.
fn system_ca_bundle() -> Option<PathBuf> {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Applies the flags that were given; the others leave `config` as it is.
fn with_aws(mut config: Config, aws: AwsArgs) -> Result<Config, Error> {
    if let Some(region) = aws.region {
        config = config.region(region);
    }
    if let Some(profile) = aws.profile {
        config = config.profile(profile);
    }
    if let Some(role) = aws.role_arn {
        config = config.assume_role(role);
    }
    if let Some(path) = aws.external_id_file {
        config = config.external_id(read_external_id(&path)?);
    }
    if let Some(id) = aws.external_id {
        config = config.external_id(id);
    }
    if let Some(name) = aws.role_session_name {
        config = config.role_session_name(name);
    }
    Ok(config)
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "off",
        1 => "rds_iam_auth=info",
        _ => "rds_iam_auth=debug,aws_config=debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::conninfo;

    #[test]
    fn every_conninfo_value_is_quoted_so_none_adds_a_keyword() {
        let text = conninfo(&[
            ("dbname", "db\tsslmode=disable"),
            ("sslrootcert", "/tmp/it's\\here\nsslmode=disable"),
            ("sslmode", "verify-full"),
        ]);
        assert_eq!(
            text,
            "dbname='db\tsslmode=disable' sslrootcert='/tmp/it\\'s\\\\here\nsslmode=disable' sslmode='verify-full'"
        );
    }
}
