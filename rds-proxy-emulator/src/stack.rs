//! [`LocalStack`]: PostgreSQL + STS stand-in + RDS Proxy stand-in, started together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use time::OffsetDateTime;

use crate::aws_json;
use crate::cluster::{Cluster, FailoverReport, ServerStatus};
use crate::config::{DbAuth, StackConfig, TargetRole};
use crate::control::{Control, Counters, ServiceFault, StsFault};
use crate::http_service::HttpServer;
use crate::iam::{Iam, TemporaryCredentials};
use crate::pg::{PgOptions, PgServer, PgTls};
use crate::proxy::{serve_endpoint, EndpointSpec, MetricsSnapshot, ProxyShared, ProxyThread};
use crate::rotation::rotate_all;
use crate::secrets::{generate_password, rds_secret_string, SecretStore, SecretsManager};
use crate::ssm::{ParameterStore, ParameterStoreService, ParameterType};
use crate::sts::{Sts, StsServer};
use crate::tls::ProxyTls;
use crate::Error;

/// A running proxy endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Endpoint name (`application-db-endpoint-read-only`).
    pub name: String,
    /// Its DNS name: on the certificate, and the host to sign tokens for.
    pub hostname: String,
    /// The advertised port (5432): the port to sign tokens for.
    pub port: u16,
    /// Where it really listens: the address to dial (`DB_CONNECT_HOST`).
    pub listen: SocketAddr,
    /// `READ_WRITE` or `READ_ONLY`.
    pub target_role: TargetRole,
}

/// Options of [`LocalStack::start_with`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Where to write `ca.pem` (and, for the CLI, `stack.env`). `None`: a temp dir removed
    /// with the stack.
    pub state_dir: Option<PathBuf>,
    /// Where PostgreSQL's temp dir goes (default: the system temp dir).
    pub pg_base_dir: Option<PathBuf>,
    /// A directory to cache `initdb` output in across runs (see [`crate::pg`]); `None`
    /// also consults `RDS_PROXY_EMULATOR_PG_CACHE`.
    pub pg_template_cache: Option<PathBuf>,
}

/// PostgreSQL, the STS stand-in and the RDS Proxy stand-in, on free loopback ports.
///
/// Dropping it (or [`LocalStack::shutdown`]) stops the listeners, closes client sessions,
/// stops PostgreSQL and removes every file it created.
///
/// ```no_run
/// # async fn demo() -> Result<(), rds_proxy_emulator::Error> {
/// use rds_proxy_emulator::{LocalStack, StackConfig};
///
/// let stack = LocalStack::start(StackConfig::demo()).await?;
/// let ro = stack.endpoint("READ_ONLY").expect("the demo has a READ_ONLY endpoint");
/// assert_eq!(ro.port, 5432); // sign for hostname:5432, dial ro.listen
/// let (access_key_id, secret) = stack.app_credentials();
/// // ... AssumeRole(stack.role_arn(), ExternalId = stack.external_id()) at
/// // stack.sts_endpoint_url(), sign a token, connect with TLS (CA: stack.ca_path()).
/// # let _ = (access_key_id, secret);
/// stack.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LocalStack {
    config: Arc<StackConfig>,
    iam: Arc<Iam>,
    pg: Arc<PgServer>,
    cluster: Arc<Cluster>,
    runtime: tokio::runtime::Handle,
    sts: StsServer,
    secrets: Arc<SecretStore>,
    secrets_server: HttpServer,
    parameters: Arc<ParameterStore>,
    parameters_server: HttpServer,
    proxy: Arc<ProxyShared>,
    proxy_thread: Option<ProxyThread>,
    control: Arc<Control>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    rotation: Option<tokio::task::JoinHandle<()>>,
    endpoints: Vec<Endpoint>,
    ca_pem: String,
    ca_path: PathBuf,
    _temp_state: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalStack {
    /// Starts the stack described by `config` (state in a temp dir).
    pub async fn start(config: StackConfig) -> Result<LocalStack, Error> {
        LocalStack::start_with(config, StartOptions::default()).await
    }

    /// Starts the stack with explicit [`StartOptions`].
    ///
    /// The servers run on a runtime of their own (own thread, two workers), so a caller
    /// that blocks its own runtime (a `#[tokio::test]` running a subprocess synchronously,
    /// say) cannot starve them.
    pub async fn start_with(
        config: StackConfig,
        options: StartOptions,
    ) -> Result<LocalStack, Error> {
        config.validate()?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("rds-proxy-emulator".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("rds-proxy-emulator-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::io("starting the stack's runtime", e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = LocalStack::start_inner(config, options).await;
                    let ok = started.is_ok();
                    if ready_tx.send(started).is_ok() && ok {
                        // Serve until the LocalStack is dropped.
                        let _ = stop_rx.await;
                    }
                });
                runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            })
            .map_err(|e| Error::io("starting the stack's thread", e))?;
        let mut stack = ready_rx
            .await
            .map_err(|_| Error::Config("the stack's thread ended during start-up".into()))??;
        stack.stop = Some(stop_tx);
        stack.thread = Some(thread);
        Ok(stack)
    }

    async fn start_inner(config: StackConfig, options: StartOptions) -> Result<LocalStack, Error> {
        let config = Arc::new(config);
        let (temp_state, state_dir) = match &options.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("rds-proxy-emulator-state-")
                    .tempdir()
                    .map_err(|e| Error::io("creating a temp dir", e))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };

        let hostnames: Vec<String> = config
            .proxy
            .endpoints
            .iter()
            .map(|e| e.hostname.to_ascii_lowercase())
            .collect();
        let tls = ProxyTls::generate(&hostnames)?;
        let ca_path = state_dir.join("ca.pem");
        std::fs::write(&ca_path, &tls.ca_pem)
            .map_err(|e| Error::io(format!("writing {}", ca_path.display()), e))?;

        // `auth = "secret"` users get a new random password at each start: it exists only
        // in PostgreSQL, the secret and the SecureString parameter.
        let users: Vec<(String, String)> = config
            .proxy
            .db_users
            .iter()
            .map(|u| match u.auth {
                DbAuth::Iam => (u.name.clone(), u.backend_password.clone()),
                DbAuth::Secret => (u.name.clone(), generate_password()),
            })
            .collect();
        let pg = PgServer::start(PgOptions {
            users: users.clone(),
            database: config.database.name.clone(),
            seed_sql: config.database.seed_sql.clone(),
            base_dir: options.pg_base_dir.clone(),
            template_cache: options
                .pg_template_cache
                .clone()
                .or_else(|| std::env::var_os("RDS_PROXY_EMULATOR_PG_CACHE").map(PathBuf::from)),
            bin_dir: None,
            tls: Some(PgTls {
                cert_pem: tls.backend_cert_pem.clone(),
                key_pem: tls.backend_key_pem.clone(),
            }),
        })
        .await?;
        let pg = Arc::new(pg);
        let cluster = Cluster::new(Arc::clone(&pg));
        for _ in 0..config.database.replicas {
            cluster.add_reader().await?;
        }

        let iam = Arc::new(Iam::new(Arc::clone(&config)));
        let control = Arc::new(Control::new());
        let sts = StsServer::start(
            Sts::with_control(Arc::clone(&iam), Arc::clone(&control)),
            config.sts.listen,
        )
        .await?;
        let secrets = Arc::new(seed_secrets(&config, &users));
        let secrets_server = aws_json::serve(
            Arc::new(SecretsManager::new(
                Arc::clone(&iam),
                Arc::clone(&secrets),
                Arc::clone(&control),
            )),
            config.secrets.listen,
        )
        .await?;
        let ps = &config.parameter_store;
        let parameters = Arc::new(ParameterStore::new(
            config.region.clone(),
            ps.account.clone().unwrap_or_default(),
            ps.readers.clone(),
        ));
        let parameters_server = aws_json::serve(
            Arc::new(ParameterStoreService::new(
                Arc::clone(&iam),
                Arc::clone(&parameters),
            )),
            ps.listen,
        )
        .await?;
        let proxy = ProxyShared::new(
            Arc::clone(&iam),
            Arc::clone(&secrets),
            cluster.topology(),
            Arc::clone(&tls.server_config),
            Arc::clone(&control),
        );
        let proxy_thread = ProxyThread::start()?;
        let mut endpoints = Vec::new();
        let mut listeners = Vec::new();
        for e in &config.proxy.endpoints {
            let spec = EndpointSpec {
                name: e.name.clone(),
                hostname: e.hostname.clone(),
                port: e.port,
                target_role: e.target_role,
            };
            let (addr, task) = proxy_thread
                .handle()
                .spawn(serve_endpoint(Arc::clone(&proxy), spec, e.listen))
                .await
                .map_err(|e| Error::Config(format!("serving a proxy endpoint: {e}")))??;
            listeners.push(task);
            endpoints.push(Endpoint {
                name: e.name.clone(),
                hostname: e.hostname.clone(),
                port: e.port,
                listen: addr,
                target_role: e.target_role,
            });
        }
        seed_parameters(&config, &iam, &secrets, &parameters, &endpoints, &users);
        let rotation = (config.secrets.rotate_every_seconds > 0).then(|| {
            let every = std::time::Duration::from_secs(config.secrets.rotate_every_seconds);
            let (config, cluster, secrets, control) = (
                Arc::clone(&config),
                Arc::clone(&cluster),
                Arc::clone(&secrets),
                Arc::clone(&control),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = rotate_all(&config, &cluster, &secrets, &control).await {
                        tracing::error!("scheduled rotation failed: {e}");
                    }
                }
            })
        });
        tracing::info!(
            sts = %sts.addr(),
            secrets_manager = %secrets_server.addr(),
            parameter_store = %parameters_server.addr(),
            postgres = %pg.addr(),
            endpoints = ?endpoints.iter().map(|e| (e.name.as_str(), e.listen)).collect::<Vec<_>>(),
            "local stack ready"
        );
        Ok(LocalStack {
            config,
            iam,
            pg,
            cluster,
            runtime: tokio::runtime::Handle::current(),
            sts,
            secrets,
            secrets_server,
            parameters,
            parameters_server,
            proxy,
            proxy_thread: Some(proxy_thread),
            control,
            listeners,
            rotation,
            endpoints,
            ca_pem: tls.ca_pem,
            ca_path,
            _temp_state: temp_state,
            stop: None,
            thread: None,
        })
    }

    /// `http://127.0.0.1:PORT`: the STS endpoint URL (`AWS_ENDPOINT_URL_STS`).
    pub fn sts_endpoint_url(&self) -> String {
        format!("http://{}", self.sts.addr())
    }

    /// `http://127.0.0.1:PORT`: the Secrets Manager endpoint URL
    /// (`AWS_ENDPOINT_URL_SECRETS_MANAGER`).
    pub fn secrets_endpoint_url(&self) -> String {
        format!("http://{}", self.secrets_server.addr())
    }

    /// `http://127.0.0.1:PORT`: the Parameter Store endpoint URL (`AWS_ENDPOINT_URL_SSM`).
    pub fn ssm_endpoint_url(&self) -> String {
        format!("http://{}", self.parameters_server.addr())
    }

    /// The secrets (the Secrets Manager stand-in's store).
    pub fn secret_store(&self) -> &SecretStore {
        &self.secrets
    }

    /// The parameters (the Parameter Store stand-in's store).
    pub fn parameter_store(&self) -> &ParameterStore {
        &self.parameters
    }

    /// The password user the application connects as with a password:
    /// `parameter_store.db_user`, else the first `auth = "secret"` user.
    pub fn password_user(&self) -> Option<&str> {
        password_user(&self.config)
    }

    /// The ARN of [`LocalStack::password_user`]'s secret.
    pub fn secret_arn(&self) -> Option<String> {
        let user = self.password_user()?;
        let u = self.config.proxy.db_users.iter().find(|u| u.name == user)?;
        self.secrets.arn_of(u.secret.as_deref()?)
    }

    /// The path of the connection parameters (`/connectiontest/db`), if any.
    pub fn parameter_path(&self) -> Option<&str> {
        self.config.parameter_store.path.as_deref()
    }

    /// The AWSCURRENT password of [`LocalStack::password_user`], read from its secret.
    /// For tests (e.g. to connect as the password user without going through Secrets
    /// Manager); an application reads the secret or the SecureString parameter instead.
    pub fn current_password(&self) -> Option<String> {
        let user = self.password_user()?;
        let u = self.config.proxy.db_users.iter().find(|u| u.name == user)?;
        self.secrets.current_password(u.secret.as_deref()?)
    }

    /// Rotates every secret now with Secrets Manager's single-user rotation steps (see
    /// the rotation module): a new password as AWSPENDING, `ALTER ROLE` at PostgreSQL, a
    /// test login, then AWSCURRENT moved to it (the old value stays as AWSPREVIOUS). New
    /// logins through the proxy need the new password; open sessions carry on. Returns how
    /// many secrets were rotated. `[secrets] rotate_every_seconds` does this on a schedule.
    pub async fn rotate_secret_now(&self) -> Result<usize, Error> {
        let (config, cluster, secrets, control) = (
            Arc::clone(&self.config),
            Arc::clone(&self.cluster),
            Arc::clone(&self.secrets),
            Arc::clone(&self.control),
        );
        self.runtime
            .spawn(async move { rotate_all(&config, &cluster, &secrets, &control).await })
            .await
            .map_err(|e| Error::Postgres(format!("rotation task: {e}")))?
    }

    /// All endpoints, in configuration order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// An endpoint by name, host name, or target role (`"READ_ONLY"`, `"READ_WRITE"`:
    /// the first such endpoint).
    pub fn endpoint(&self, key: &str) -> Option<&Endpoint> {
        let eps = &self.endpoints;
        eps.iter()
            .find(|e| e.name == key)
            .or_else(|| eps.iter().find(|e| e.hostname.eq_ignore_ascii_case(key)))
            .or_else(|| eps.iter().find(|e| e.target_role.as_str() == key))
    }

    /// The application's endpoint (`client.endpoint`; READ_ONLY in the demo).
    pub fn app_endpoint(&self) -> &Endpoint {
        // `validate` guarantees the client endpoint exists.
        self.endpoint(&self.config.client.endpoint)
            .unwrap_or(&self.endpoints[0])
    }

    /// The CA certificate (PEM) the proxy's certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Path of the CA PEM file (`DB_CA_BUNDLE`).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// Access key id and secret of the application principal (`client.principal`).
    pub fn app_credentials(&self) -> (String, String) {
        self.principal_credentials(&self.config.client.principal)
            .unwrap_or_default()
    }

    /// Access key id and secret of any configured principal.
    pub fn principal_credentials(&self, arn: &str) -> Option<(String, String)> {
        self.config
            .principals
            .iter()
            .find(|p| p.arn == arn)
            .map(|p| (p.access_key_id.clone(), p.secret_access_key.clone()))
    }

    /// The role the application assumes.
    pub fn role_arn(&self) -> &str {
        &self.config.client.role
    }

    /// Its external id (empty if the role has none).
    pub fn external_id(&self) -> &str {
        self.iam
            .role(&self.config.client.role)
            .and_then(|r| r.external_id.as_deref())
            .unwrap_or("")
    }

    /// The database user the application connects as.
    pub fn db_user(&self) -> &str {
        &self.config.client.db_user
    }

    /// The database name (`example_db`).
    pub fn db_name(&self) -> &str {
        &self.config.database.name
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.config.region
    }

    /// The configuration the stack runs.
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// The identity store (principals and issued sessions).
    pub fn iam(&self) -> &Iam {
        &self.iam
    }

    /// The writer's own address (bypassing the proxy; password: the db user's backend
    /// secret; TLS with the stack's CA, or plaintext).
    pub fn backend_addr(&self) -> SocketAddr {
        self.cluster
            .current_topology()
            .writer
            .unwrap_or_else(|| self.pg.addr())
    }

    /// The readers' addresses (hot standbys, bypassing the proxy).
    pub fn reader_addrs(&self) -> Vec<SocketAddr> {
        self.cluster.current_topology().readers
    }

    /// The first PostgreSQL server (the writer until a failover). Its directory holds
    /// every server's.
    pub fn postgres(&self) -> &PgServer {
        &self.pg
    }

    /// Every PostgreSQL server with its role and, for readers, the replication lag.
    pub async fn servers(&self) -> Vec<ServerStatus> {
        let cluster = Arc::clone(&self.cluster);
        self.runtime
            .spawn(async move { cluster.status().await })
            .await
            .unwrap_or_default()
    }

    /// Process ids of every running PostgreSQL server.
    pub fn postgres_pids(&self) -> Vec<u32> {
        self.cluster
            .servers()
            .iter()
            .filter(|(s, _)| s.is_running())
            .map(|(s, _)| s.pid())
            .collect()
    }

    /// Fails over like an Aurora cluster: stops the writer and promotes a reader. As with
    /// RDS Proxy, idle client connections stay open and their next transactions run on the
    /// new writer (requests and logins arriving meanwhile wait, up to the borrow timeout);
    /// clients in a request or a transaction, or pinned, get PostgreSQL's shutdown error
    /// (57P01) and are closed. A new reader is built from the new writer in the background
    /// ([`LocalStack::wait_for_readers`]) and joins the readers' pool.
    pub async fn failover(&self) -> Result<FailoverReport, Error> {
        let proxy = Arc::clone(&self.proxy);
        let fut = Arc::clone(&self.cluster).failover(
            move |servers: &[SocketAddr]| proxy.sessions_on(servers),
            self.runtime.clone(),
        );
        self.runtime
            .spawn(fut)
            .await
            .map_err(|e| Error::Postgres(format!("failover task: {e}")))?
    }

    /// Waits until at least `n` readers serve (e.g. after a failover), up to `limit`.
    pub async fn wait_for_readers(&self, n: usize, limit: std::time::Duration) -> bool {
        let mut rx = self.cluster.topology();
        tokio::time::timeout(limit, rx.wait_for(|t| t.readers.len() >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Number of client connections the proxy holds now.
    pub fn proxy_client_connections(&self) -> usize {
        self.proxy.client_connections()
    }

    /// The proxy's metrics now, with RDS Proxy's CloudWatch names.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.proxy.metrics()
    }

    /// The writer's address, `None` while a failover is under way.
    pub fn writer_addr(&self) -> Option<SocketAddr> {
        self.cluster.current_topology().writer
    }

    /// Sets a fault of the Secrets Manager stand-in ([`ServiceFault::None`] clears it).
    pub fn set_secrets_fault(&self, fault: ServiceFault) {
        tracing::info!(fault = fault.as_str(), "Secrets Manager fault set");
        self.control.set_secrets_fault(fault);
    }

    /// Sets a fault of the STS stand-in ([`StsFault::None`] clears it).
    pub fn set_sts_fault(&self, fault: StsFault) {
        tracing::info!(fault = fault.as_str(), "STS fault set");
        self.control.set_sts_fault(fault);
    }

    /// Makes the proxy accept new TCP connections and never answer on them (or stop).
    pub fn set_proxy_stall(&self, stall: bool) {
        tracing::info!(stall, "proxy stall set");
        self.control.set_proxy_stall(stall);
    }

    /// Clears every fault.
    pub fn clear_faults(&self) {
        self.control.clear();
    }

    /// The stack's fault switches and counters.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The counters now: STS `AssumeRole` calls, proxy logins accepted and refused, pinned
    /// sessions, ...
    pub fn counters(&self) -> Counters {
        self.control.counters()
    }

    /// Issues session credentials for `role_arn` directly (no STS call, no trust check),
    /// expiring at `expiration` — which may be in the past, to test expired credentials.
    pub fn issue_credentials(
        &self,
        role_arn: &str,
        session_name: &str,
        expiration: OffsetDateTime,
    ) -> Result<TemporaryCredentials, Error> {
        self.iam
            .issue(role_arn, session_name, expiration)
            .ok_or_else(|| Error::Sts(format!("no role {role_arn}")))
    }

    /// Revokes issued session credentials (see [`Iam::revoke`]).
    pub fn revoke_credentials(&self, access_key_id: &str) -> bool {
        self.iam.revoke(access_key_id)
    }

    /// Refuses the next `n` IAM logins with the proxy's IAM message (see
    /// [`Iam::refuse_next_logins`]).
    pub fn refuse_next_logins(&self, n: u64) {
        self.iam.refuse_next_logins(n);
    }

    /// The `stack.env` pairs: the Lambda's environment variables for the application
    /// endpoint, plus `AWS_REGION`, the application principal's keys and the endpoint URLs
    /// of the stand-ins (`AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL_SECRETS_MANAGER`,
    /// `AWS_ENDPOINT_URL_SSM`, the AWS SDKs' standard variables).
    pub fn env(&self) -> Vec<(String, String)> {
        let ep = self.app_endpoint();
        let (akid, secret) = self.app_credentials();
        let mut env = vec![
            ("DATABASE_ACCOUNT_IAM_ROLE", self.role_arn().to_string()),
            ("RDS_PROXY_APPLICATION_ENDPOINT", ep.hostname.clone()),
            ("DB_USERNAME", self.db_user().to_string()),
            ("DBNAME", self.db_name().to_string()),
            ("DB_PORT", ep.port.to_string()),
            ("EXTERNAL_ID", self.external_id().to_string()),
            ("DB_CA_BUNDLE", self.ca_path.display().to_string()),
            ("DB_CONNECT_HOST", ep.listen.to_string()),
            ("AWS_REGION", self.region().to_string()),
            ("AWS_ACCESS_KEY_ID", akid),
            ("AWS_SECRET_ACCESS_KEY", secret),
            ("AWS_ENDPOINT_URL_STS", self.sts_endpoint_url()),
            (
                "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                self.secrets_endpoint_url(),
            ),
            ("AWS_ENDPOINT_URL_SSM", self.ssm_endpoint_url()),
        ];
        if let Some(rw) = self
            .endpoints
            .iter()
            .find(|e| e.target_role == TargetRole::ReadWrite)
        {
            env.push(("RDS_PROXY_READ_WRITE_ENDPOINT", rw.hostname.clone()));
            env.push(("DB_CONNECT_HOST_READ_WRITE", rw.listen.to_string()));
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// [`LocalStack::env`] as a shell file: `export KEY=value` lines, single-quoted where
    /// needed, for `source .local/stack.env`.
    pub fn env_file(&self) -> String {
        export_lines(&self.env())
    }

    /// The `secret.env` pairs, for connecting as the password user instead (empty without
    /// one): `DB_SECRET_ARN`, `DB_USERNAME` (overriding stack.env's), and with a
    /// parameter path `CONFIG_PARAMETER_PATH`. One password source only (two is a
    /// configuration error for the library): the SecureString copy under the path,
    /// `PATH/password`, is for `DB_PASSWORD_PARAMETER` set instead of `DB_SECRET_ARN`. No
    /// password: the application reads it from the secret.
    pub fn secret_env(&self) -> Vec<(String, String)> {
        let (Some(user), Some(arn)) = (self.password_user(), self.secret_arn()) else {
            return Vec::new();
        };
        let mut env = vec![
            ("DB_SECRET_ARN".to_string(), arn),
            ("DB_USERNAME".to_string(), user.to_string()),
        ];
        if let Some(path) = self.parameter_path() {
            env.push(("CONFIG_PARAMETER_PATH".into(), path.to_string()));
        }
        env
    }

    /// [`LocalStack::secret_env`] as a shell file (`source stack.env; source secret.env`).
    pub fn secret_env_file(&self) -> String {
        export_lines(&self.secret_env())
    }

    /// Stops every PostgreSQL server (to test "database down"); the proxy keeps running.
    pub async fn stop_backend(&self) {
        self.cluster
            .wait_for_builds(std::time::Duration::from_secs(60));
        self.cluster.stop_all();
    }

    /// Stops everything and removes the files the stack created.
    pub async fn shutdown(self) {
        drop(self);
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.proxy.shutdown();
        for l in &self.listeners {
            l.abort();
        }
        drop(self.proxy_thread.take());
        self.sts.stop();
        self.secrets_server.stop();
        if let Some(rotation) = self.rotation.take() {
            rotation.abort();
        }
        self.parameters_server.stop();
        self.cluster
            .wait_for_builds(std::time::Duration::from_secs(60));
        self.cluster.stop_all();
        self.pg.remove();
        if self._temp_state.is_none() {
            let _ = std::fs::remove_file(&self.ca_path);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn export_lines(env: &[(String, String)]) -> String {
    let mut out = String::from("# Written by rds-proxy-emulator: `source` this file.\n");
    for (k, v) in env {
        out.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    out
}

fn password_user(config: &StackConfig) -> Option<&str> {
    config.parameter_store.db_user.as_deref().or_else(|| {
        config
            .proxy
            .db_users
            .iter()
            .find(|u| u.auth == DbAuth::Secret)
            .map(|u| u.name.as_str())
    })
}

/// One secret per `auth = "secret"` user, holding its generated password in RDS's JSON
/// shape (`users`: every db user with the password PostgreSQL has for it).
fn seed_secrets(config: &StackConfig, users: &[(String, String)]) -> SecretStore {
    let store = SecretStore::new(config.region.clone());
    let now = time::OffsetDateTime::now_utc();
    for secret in &config.secrets.secrets {
        // `validate` guarantees one user per secret and that the endpoint exists.
        let user = config
            .proxy
            .db_users
            .iter()
            .find(|u| u.secret.as_deref() == Some(&secret.name));
        let password = user.and_then(|u| users.iter().find(|(n, _)| *n == u.name));
        let (Some((name, password)), Some(endpoint)) =
            (password, config.find_endpoint(&secret.endpoint))
        else {
            continue;
        };
        let value = rds_secret_string(
            &endpoint.hostname,
            endpoint.port,
            name,
            password,
            &config.database.name,
        );
        store.create(secret, value, now);
    }
    store
}

/// The connection parameters of `parameter_store.db_user` under `parameter_store.path`.
fn seed_parameters(
    config: &StackConfig,
    iam: &Iam,
    secrets: &SecretStore,
    parameters: &ParameterStore,
    endpoints: &[Endpoint],
    users: &[(String, String)],
) {
    let ps = &config.parameter_store;
    let (Some(path), Some(user)) = (&ps.path, &ps.db_user) else {
        return;
    };
    let Some(secret) = config
        .proxy
        .db_users
        .iter()
        .find(|u| u.name == *user)
        .and_then(|u| config.secret_config(u.secret.as_deref()?))
    else {
        return;
    };
    let endpoint = config
        .find_endpoint(&secret.endpoint)
        .and_then(|e| endpoints.iter().find(|r| r.name == e.name));
    let (Some(endpoint), Some(arn), Some((_, password))) = (
        endpoint,
        secrets.arn_of(&secret.name),
        users.iter().find(|(n, _)| n == user),
    ) else {
        return;
    };
    let external_id = iam
        .role(&config.client.role)
        .and_then(|r| r.external_id.clone())
        .unwrap_or_default();
    let now = time::OffsetDateTime::now_utc();
    let plain = [
        ("hostname", endpoint.hostname.clone()),
        ("port", endpoint.port.to_string()),
        ("database", config.database.name.clone()),
        ("user", user.clone()),
        ("assume_role", config.client.role.clone()),
        ("external_id", external_id),
        ("connect_address", endpoint.listen.to_string()),
        ("secret_arn", arn),
    ];
    for (name, value) in plain {
        parameters.put(&format!("{path}/{name}"), ParameterType::String, value, now);
    }
    parameters.put(
        &format!("{path}/password"),
        ParameterType::SecureString,
        password.clone(),
        now,
    );
}

/// Quotes a value for a POSIX shell if it needs it.
///
/// ```
/// use rds_proxy_emulator::shell_quote as q;
/// assert_eq!(q("us-east-1"), "us-east-1");
/// assert_eq!(q("a b'c"), "'a b'\\''c'");
/// ```
pub fn shell_quote(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@,+=%".contains(&b))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}
