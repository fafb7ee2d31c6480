//! The connector: runs the stages of one connection in order, each under its deadline,
//! with a fresh token for every physical connection.
//!
//! credentials ([`crate::credentials`]) -> token ([`crate::token`]) -> DNS and TCP
//! ([`crate::net`]) -> TLS ([`crate::tls`]) and login ([`crate::login`]). Each stage's
//! outcome goes to a [`Recorder`]: at DEBUG for `connect`, kept for the staged check.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Connection};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::credentials::{describe, CredentialCache, FetchFailure, Obtained};
use crate::error::classify::{
    after_connect_error, fetch_stage, login_error, password_login_error, session_attrs_error,
    tls_error,
};
use crate::error::{Error, FailureLog, Reason};
use crate::login::{self, LoginPassword, Session};
use crate::net::{DialTarget, Keepalive};
use crate::password::{self, PasswordCache, PasswordSource};
use crate::runner::{self, Deadline, Outcome, Recorder};
use crate::stage::Stage;
use crate::stream::{self, BackendKey, LoggedInStream};
use crate::tls::{self, CaBundle, TlsStream};
use crate::token::{self, AuthToken, TokenParams};

/// The default limit for a whole connect: every stage (STS, DNS, TCP, TLS, login) shares it.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens connections; cheap to clone (the credential cache and TLS config are shared).
///
/// Every physical connection gets a freshly signed token, so a `Connector` (or a pool
/// built on it) keeps working past the 15-minute life of any one token. Build one with
/// [`Config::connector`](crate::Config::connector).
#[derive(Clone)]
pub struct Connector {
    pub(crate) inner: Arc<Inner>,
}

/// What a connector needs, validated by [`Config::connector`](crate::Config::connector).
pub(crate) struct Inner {
    pub(crate) token_params: TokenParams,
    /// User, database, application name: the startup message without the password.
    pub(crate) startup: tokio_postgres::Config,
    pub(crate) dial: DialTarget,
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) tls: MakeRustlsConnect,
    /// The extra trust anchors `tls` was built with, for integrations with their own TLS.
    pub(crate) ca_bundle: Option<CaBundle>,
    pub(crate) credentials: CredentialCache,
    /// The stored password, for databases not on IAM authentication; `None`: IAM tokens.
    pub(crate) password: Option<PasswordCache>,
    pub(crate) connect_timeout: Duration,
    pub(crate) after_connect: Option<AfterConnect>,
    pub(crate) target_session_attrs: TargetSessionAttrs,
    /// Failed connects, for [`Connector::last_connect_error`].
    pub(crate) failures: FailureLog,
    /// Tokens signed, for [`Connector::tokens_signed`].
    pub(crate) tokens_signed: std::sync::atomic::AtomicU64,
}

/// A future borrowed from the client it runs on.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Session setup run on every new physical connection: see
/// [`Config::after_connect`](crate::Config::after_connect).
pub type AfterConnect = Arc<
    dyn for<'a> Fn(&'a Client) -> BoxFuture<'a, Result<(), tokio_postgres::Error>> + Send + Sync,
>;

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Connector")
            .field("token_params", &i.token_params)
            .field("database", &i.startup.get_dbname())
            .field("dial", &format_args!("{}:{}", i.dial.host, i.dial.port))
            .field("credentials", &i.credentials)
            .field("password", &i.password)
            .field("connect_timeout", &i.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Opens a connection and drives it on a Tokio task; the client is ready for queries.
    ///
    /// When the proxy refuses the token with its IAM message, the credentials that signed it
    /// may have been revoked or rotated since they were cached: they are dropped, and the
    /// login is tried once more with refreshed credentials (at most once a minute per
    /// cache, so a missing permission costs no STS call per connect). With a stored password
    /// ([`Config::secret_arn`](crate::Config::secret_arn),
    /// [`Config::password_parameter`](crate::Config::password_parameter)), a login refused
    /// with SQLSTATE 28P01 reads the password again and is tried once more the same way.
    ///
    /// The after-connect hook ([`Config::after_connect`](crate::Config::after_connect)) has
    /// run on the session when this returns.
    pub async fn connect(&self) -> Result<Client, Error> {
        self.connect_driven().await.map(|(client, _task)| client)
    }

    /// [`Connector::connect`], also returning the task that drives the connection (it ends
    /// when the connection closes): for pools that tie the two together.
    pub(crate) async fn connect_driven(&self) -> Result<(Client, JoinHandle<()>), Error> {
        let result = self.connect_and_drive().await;
        if let Err(e) = &result {
            self.inner.failures.record(e);
        }
        result
    }

    async fn connect_and_drive(&self) -> Result<(Client, JoinHandle<()>), Error> {
        let mut rec = Recorder::quiet();
        let deadline = Deadline::after(self.inner.connect_timeout);
        // Boxed: keeps the future type shallow for callers that nest it deeply (Lambda).
        let (client, connection) = Box::pin(self.establish(&mut rec, deadline)).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "database connection closed with an error");
            }
        });
        self.after_connect(&client, deadline).await?;
        Ok((client, task))
    }

    /// The last failed [`connect`](Connector::connect) (or pooled connect, or
    /// [`connect_unspawned`](Connector::connect_unspawned)) of this connector and when it happened:
    /// what a pool or a health endpoint can report when its own error type cannot carry the
    /// stage. A later success does not clear it; compare
    /// [`failed_connects`](Connector::failed_connects) over time to see whether failures go on.
    pub fn last_connect_error(&self) -> Option<(SystemTime, Error)> {
        self.inner.failures.last()
    }

    /// How many connects of this connector have failed since it was built.
    pub fn failed_connects(&self) -> u64 {
        self.inner.failures.count()
    }

    /// A connection whose [`Connection`] half the caller drives: for `LISTEN`, whose
    /// notifications arrive through [`Connection::poll_message`]. Spawn or poll the
    /// connection before using the client. The after-connect hook does not run here (it
    /// needs the connection driven): run your session setup once you poll it.
    ///
    /// This is what `tokio_postgres::Config::connect` returns, through the whole IAM path;
    /// (tokio-postgres's `connect_raw` is another thing: a login over a stream you supply).
    pub async fn connect_unspawned(
        &self,
    ) -> Result<(Client, Connection<TlsStream, NoTlsStream>), Error> {
        let mut rec = Recorder::quiet();
        let deadline = Deadline::after(self.inner.connect_timeout);
        let result = Box::pin(self.establish(&mut rec, deadline)).await;
        if let Err(e) = &result {
            self.inner.failures.record(e);
        }
        result
    }

    /// A logged-in session as its raw TLS stream, for programs that speak PostgreSQL's
    /// protocol themselves (a local auth proxy relaying it to a client that brought no
    /// password).
    ///
    /// The same path as [`connect`](Connector::connect) (fresh token, verified TLS, one
    /// deadline, one retry with refreshed credentials after an IAM refusal) up to the
    /// server's first `ReadyForQuery`. `parameters` are sent in the startup message after
    /// the connector's user; the configured database, application name and options are
    /// sent unless `parameters` give their own. `user` and `replication` are refused (a
    /// configuration error, before any I/O). The
    /// after-connect hook and `target_session_attrs` do not apply: the caller owns the
    /// session from its first message.
    ///
    /// ```no_run
    /// # async fn run(connector: rds_iam_auth::Connector) -> Result<(), rds_iam_auth::Error> {
    /// let session = connector
    ///     .connect_stream(&[("application_name", "relay")])
    ///     .await?;
    /// let key = session.backend_key(); // for cancel requests
    /// let greeting = session.greeting().to_vec(); // ParameterStatus ... ReadyForQuery
    /// let stream = session.into_stream(); // relay bytes both ways from here
    /// # drop((key, greeting, stream)); Ok(()) }
    /// ```
    pub async fn connect_stream(
        &self,
        parameters: &[(&str, &str)],
    ) -> Result<LoggedInStream, Error> {
        let result = match stream::check_parameters(parameters) {
            Ok(()) => {
                let mut rec = Recorder::quiet();
                let deadline = Deadline::after(self.inner.connect_timeout);
                let step = StreamLogin { parameters };
                Box::pin(self.establish_with(&mut rec, deadline, &step)).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.inner.failures.record(e);
        }
        result
    }

    /// Sends a `CancelRequest` for `key` to the server, on a new connection over verified
    /// TLS (as libpq does for a session that uses TLS): the server interrupts the query
    /// the session is running, if any. Like PostgreSQL, the server does not answer; an
    /// error means the request could not be delivered.
    pub async fn cancel(&self, key: BackendKey) -> Result<(), Error> {
        use tokio::io::AsyncWriteExt;
        let mut rec = Recorder::quiet();
        let deadline = Deadline::after(self.inner.connect_timeout);
        let mut stream = self.network(&mut rec, deadline).await?;
        let host = self.inner.token_params.hostname();
        let send = async {
            stream.write_all(&key.cancel_request()).await?;
            stream.shutdown().await
        };
        match deadline.within(send).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(tls_error(host, e)),
            None => Err(deadline.expired(Stage::Tls)),
        }
    }

    /// The session; a login refused for IAM reasons is retried once with refreshed
    /// credentials.
    pub(crate) async fn establish(
        &self,
        rec: &mut Recorder,
        deadline: Deadline,
    ) -> Result<Session, Error> {
        self.establish_with(rec, deadline, &ClientLogin).await
    }

    /// [`Connector::establish`] with the login step `step` (tokio-postgres's startup, or
    /// the raw exchange that leaves the stream to the caller).
    async fn establish_with<L: LoginStep>(
        &self,
        rec: &mut Recorder,
        deadline: Deadline,
        step: &L,
    ) -> Result<L::Session, Error> {
        match self.open(rec, deadline, step).await {
            Err(Refused {
                error,
                used: Some(Used::Credentials(credentials)),
            }) if error.reason() == Reason::IamRefused
                && self.inner.credentials.invalidate(&credentials) =>
            {
                tracing::warn!(
                    error = %error,
                    "login refused with IAM credentials that may be revoked: retrying once with refreshed credentials"
                );
                rec.retrying(Stage::Login);
                self.open(rec, deadline, step).await.map_err(|r| r.error)
            }
            Err(Refused {
                error,
                used: Some(Used::Password(version)),
            }) if error.reason() == Reason::PasswordRefused
                && self
                    .inner
                    .password
                    .as_ref()
                    .is_some_and(|p| p.invalidate(version)) =>
            {
                tracing::warn!(
                    error = %error,
                    "login refused with the stored password, which may have been rotated: reading it again and retrying once"
                );
                rec.retrying(Stage::Login);
                self.open(rec, deadline, step).await.map_err(|r| r.error)
            }
            other => other.map_err(|r| r.error),
        }
    }

    /// Runs the after-connect hook, if any, within the deadline (on a driven connection).
    pub(crate) async fn after_connect(
        &self,
        client: &Client,
        deadline: Deadline,
    ) -> Result<(), Error> {
        let Some(hook) = &self.inner.after_connect else {
            return Ok(());
        };
        deadline
            .limit(Stage::Query, async {
                hook(client).await.map_err(after_connect_error)
            })
            .await
    }

    /// A token for one login, signed now with the cached credentials (fetched first when
    /// none are cached, within the connect timeout).
    pub async fn token(&self) -> Result<AuthToken, Error> {
        self.sign_within_timeout().await.map(|(token, _)| token)
    }

    /// Credentials from the cache within the connect timeout (a fetch that takes longer is
    /// its stage's timeout error), and a token signed with them now: for every path that
    /// signs outside a connect (the token command, sqlx's options).
    pub(crate) async fn sign_within_timeout(&self) -> Result<(AuthToken, Credentials), Error> {
        let cache = &self.inner.credentials;
        let deadline = Deadline::after(self.inner.connect_timeout);
        let role = cache.assumed_role().map(|r| r.role_arn());
        let credentials = deadline
            .limit(fetch_stage(role), cache.credentials())
            .await?;
        let token = self.sign(&credentials);
        Ok((token, credentials))
    }

    /// The password of a login made by another client library (sqlx), within the connect
    /// timeout: a token signed now (with the expiry of the credentials that signed it), or
    /// the stored password from its cache.
    pub(crate) async fn password_for_login(
        &self,
    ) -> Result<(LoginPassword, Option<SystemTime>), Error> {
        let Some(cache) = &self.inner.password else {
            let (token, credentials) = self.sign_within_timeout().await?;
            return Ok((LoginPassword::token(token), credentials.expiry()));
        };
        let deadline = Deadline::after(self.inner.connect_timeout);
        if let PasswordSource::SecretsManager { .. } = cache.source() {
            // First, so that a credentials failure is reported as such, not as the secret's.
            let credentials = &self.inner.credentials;
            let role = credentials.assumed_role().map(|r| r.role_arn());
            deadline
                .limit(fetch_stage(role), credentials.credentials())
                .await?;
        }
        let obtained = deadline.limit(Stage::Secret, cache.get()).await?;
        Ok((LoginPassword::stored(obtained.value.password), None))
    }

    /// The password for one login by a client that logs in by itself (psql, another
    /// driver): a token signed now, or the stored password from its cache, within the
    /// connect timeout. Keep it out of logs, command lines and environments.
    pub async fn login_password(&self) -> Result<LoginPassword, Error> {
        self.password_for_login()
            .await
            .map(|(password, _)| password)
    }

    /// Logs in once and closes the session, counting no failure: with a stored password,
    /// a refusal after a rotation reads the password again (the path's one retry), for
    /// integrations whose own logins the connector does not see (sqlx).
    #[cfg(feature = "sqlx")]
    pub(crate) async fn probe_login(&self) {
        let mut rec = Recorder::quiet();
        let deadline = Deadline::after(self.inner.connect_timeout);
        if let Err(e) = Box::pin(self.establish(&mut rec, deadline)).await {
            tracing::debug!(error = %e, "probe login failed");
        }
    }

    /// The stored password's cache, when this connector logs in with one.
    #[cfg(feature = "sqlx")]
    pub(crate) fn password_cache(&self) -> Option<&PasswordCache> {
        self.inner.password.as_ref()
    }

    /// A token signed now with `credentials`, counted.
    fn sign(&self, credentials: &Credentials) -> AuthToken {
        use std::sync::atomic::Ordering;
        self.inner.tokens_signed.fetch_add(1, Ordering::Relaxed);
        token::sign(&self.inner.token_params, credentials, SystemTime::now())
    }

    /// How many tokens this connector has signed (one per login attempt, and one per
    /// [`token`](Connector::token) call): for metrics.
    pub fn tokens_signed(&self) -> u64 {
        self.inner
            .tokens_signed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the password comes from when this connector logs in with a stored password
    /// (Secrets Manager, Parameter Store); `None` when it signs IAM tokens.
    pub fn password_source(&self) -> Option<&PasswordSource> {
        self.inner.password.as_ref().map(PasswordCache::source)
    }

    /// How many times the stored password was read from its source (0 with IAM tokens):
    /// for metrics, and to see the cache at work.
    pub fn password_reads(&self) -> u64 {
        self.inner
            .password
            .as_ref()
            .map_or(0, PasswordCache::fetch_count)
    }

    /// The credential cache (shared by every connection of this connector).
    pub fn credentials(&self) -> &CredentialCache {
        &self.inner.credentials
    }

    /// The validated token settings (host, port, user, region).
    pub fn token_params(&self) -> &TokenParams {
        &self.inner.token_params
    }

    /// Where connections are dialed: the endpoint, or the `connect_address` override.
    pub fn dial_target(&self) -> (&str, u16) {
        (&self.inner.dial.host, self.inner.dial.port)
    }

    /// The database name, when one was set (else the server uses the user name).
    pub fn database(&self) -> Option<&str> {
        self.inner.startup.get_dbname()
    }

    /// The startup settings every connection sends (user, database, application name,
    /// ...), without a password: for integrations that open sessions their own way.
    pub fn startup_config(&self) -> &tokio_postgres::Config {
        &self.inner.startup
    }

    /// The extra CA certificates trusted besides the Mozilla roots, if any.
    pub fn ca_bundle(&self) -> Option<&CaBundle> {
        self.inner.ca_bundle.as_ref()
    }

    /// What a session must allow (`target_session_attrs`), checked at login.
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.inner.target_session_attrs
    }

    /// Whether an after-connect hook is set (integrations that cannot run it refuse it).
    #[cfg(feature = "sqlx")]
    pub(crate) fn has_after_connect(&self) -> bool {
        self.inner.after_connect.is_some()
    }

    /// The limit for one whole connect.
    pub fn connect_timeout(&self) -> Duration {
        self.inner.connect_timeout
    }

    /// The stages up to a logged-in session, all within one deadline, recorded in `rec`
    /// in path order.
    ///
    /// Two branches run at once, since neither needs the other until the password is due:
    /// credentials (and STS) then the token, and DNS, TCP and TLS. Only the login waits for
    /// both. A cold start thus costs the longer of the two, not their sum.
    ///
    /// The first branch to fail ends the open: a proxy that refuses TCP is reported at once,
    /// not after a slow STS call (or its timeout). The other branch's unfinished stage is
    /// recorded as skipped, and what it was doing is dropped safely: a credential refresh
    /// runs in a task of its own and goes on for the next caller.
    async fn open<L: LoginStep>(
        &self,
        rec: &mut Recorder,
        deadline: Deadline,
        step: &L,
    ) -> Result<L::Session, Refused> {
        let (mut signing, mut network) = (rec.branch(), rec.branch());
        let both = {
            // IAM: only to have credentials in the cache by the time the network is ready
            // (the token is signed after it). A stored password is the password itself.
            let credentials = async {
                match &self.inner.password {
                    None => self
                        .obtain_credentials(&mut signing, deadline)
                        .await
                        .map(|_| None),
                    Some(cache) => self
                        .obtain_password(cache, &mut signing, deadline)
                        .await
                        .map(Some),
                }
            };
            let net = self.network(&mut network, deadline);
            first_failure(credentials, net).await
        };
        match &both {
            Err(First::A(e)) => note_unfinished(&mut network, e.stage(), NETWORK_STAGES),
            Err(First::B(e)) => note_unfinished(&mut signing, e.stage(), self.signing_stages()),
            Ok(_) => {}
        }
        let ready = match both {
            Ok((Some(stored), stream)) => Ok((
                LoginPassword::stored(stored.value.password),
                Used::Password(stored.version),
                stream,
            )),
            Ok((None, stream)) => {
                self.sign_for_login(&mut signing, deadline)
                    .await
                    .map(|(credentials, token)| {
                        (
                            LoginPassword::token(token),
                            Used::Credentials(credentials),
                            stream,
                        )
                    })
            }
            Err(first) => Err(first.into_error()),
        };
        rec.append(signing);
        rec.append(network);
        let (password, used, stream) = ready.map_err(Refused::early)?;
        step.login(self, rec, deadline, stream, &password)
            .await
            .map_err(|error| Refused {
                error,
                used: Some(used),
            })
    }

    /// The password from its cache: with a secret, the credentials that read it first
    /// (recorded as the credentials and assume-role stages); then the secret stage
    /// (cached, read, or where the read failed).
    async fn obtain_password(
        &self,
        cache: &PasswordCache,
        rec: &mut Recorder,
        deadline: Deadline,
    ) -> Result<password::Obtained, Error> {
        if let PasswordSource::SecretsManager { .. } = cache.source() {
            self.obtain_credentials(rec, deadline).await?;
        }
        let started = Instant::now();
        match deadline.within(cache.get()).await {
            Some(Ok(obtained)) => {
                let source = cache.source().describe();
                let (outcome, mut detail) = match obtained.fetched_in {
                    None => (Outcome::Cached, format!("{source} (cached)")),
                    Some(_) => (Outcome::Ok, source),
                };
                if let Some(failing) = &obtained.refresh_failing {
                    // Still served, so this connect works: but on-call should know.
                    detail.push_str("; ");
                    detail.push_str(failing);
                }
                let took = obtained.fetched_in.unwrap_or_else(|| started.elapsed());
                rec.record(Stage::Secret, outcome, took, &detail);
                Ok(obtained)
            }
            Some(Err(error)) => {
                rec.fail(error.stage(), started.elapsed(), &error);
                Err(error)
            }
            None => {
                let error = deadline.expired(Stage::Secret);
                rec.fail(Stage::Secret, started.elapsed(), &error);
                Err(error)
            }
        }
    }

    /// The stages of the signing branch that can be left unfinished, in order. With a role,
    /// the credentials stage is recorded together with assume-role, when the cache answers:
    /// an unfinished fetch is reported as assume-role.
    fn signing_stages(&self) -> &'static [Stage] {
        let role = self.inner.credentials.assumed_role().map(|r| r.role_arn());
        let last = match self.inner.password.as_ref().map(PasswordCache::source) {
            Some(PasswordSource::Parameter { .. }) => return &[Stage::Secret],
            Some(_) => Stage::Secret,
            None => Stage::Token,
        };
        match (fetch_stage(role), last) {
            (Stage::AssumeRole, Stage::Token) => &[Stage::AssumeRole, Stage::Token],
            (Stage::AssumeRole, _) => &[Stage::AssumeRole, Stage::Secret],
            (_, Stage::Token) => &[Stage::Credentials, Stage::Token],
            _ => &[Stage::Credentials, Stage::Secret],
        }
    }

    /// The token for the login that follows at once, signed now with the cache's current
    /// credentials: the network branch may have taken most of the connect timeout since
    /// the signing branch obtained them, and the cache only promises credentials usable
    /// when handed out. If none are usable any more, current ones are obtained first.
    async fn sign_for_login(
        &self,
        rec: &mut Recorder,
        deadline: Deadline,
    ) -> Result<(Credentials, AuthToken), Error> {
        let credentials = match self.inner.credentials.usable_now() {
            Some(current) => current,
            None => self.obtain_credentials(rec, deadline).await?,
        };
        let p = &self.inner.token_params;
        let started = Instant::now();
        let token = self.sign(&credentials);
        rec.record(
            Stage::Token,
            Outcome::Ok,
            started.elapsed(),
            &format!(
                "DBUser {} at {}:{} in {}, valid {} s",
                p.username(),
                p.hostname(),
                p.port(),
                p.region(),
                p.expires_in().as_secs()
            ),
        );
        Ok((credentials, token))
    }

    /// DNS, TCP and TLS: a verified, encrypted stream to the proxy.
    async fn network(&self, rec: &mut Recorder, deadline: Deadline) -> Result<TlsStream, Error> {
        let i = &*self.inner;
        let addresses = match i.dial.literal() {
            Some(addr) => {
                let detail = format!("{addr} is an address");
                rec.record(Stage::Dns, Outcome::Skipped, Duration::ZERO, &detail);
                vec![addr]
            }
            None => {
                runner::run(rec, Stage::Dns, deadline, i.dial.resolve(), |addrs| {
                    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                    format!("{} -> {}", i.dial.host, shown.join(", "))
                })
                .await?
            }
        };
        let dial = i.dial.dial(&addresses, deadline, i.keepalive);
        let stream = runner::run(rec, Stage::Tcp, deadline, dial, |s| {
            s.peer_addr().map(|a| a.to_string()).unwrap_or_default()
        })
        .await?;
        let host = i.token_params.hostname();
        let handshake = tls::handshake(&i.tls, host, stream);
        runner::run(rec, Stage::Tls, deadline, handshake, |_| {
            format!("verified {host}")
        })
        .await
    }

    /// Credentials from the cache: records the credentials stage and, with a role, the
    /// assume-role stage (cached, fetched, or where the fetch failed).
    async fn obtain_credentials(
        &self,
        rec: &mut Recorder,
        deadline: Deadline,
    ) -> Result<Credentials, Error> {
        let cache = &self.inner.credentials;
        let role = cache.assumed_role().map(|r| r.role_arn().to_owned());
        let started = Instant::now();
        match deadline.within(cache.get()).await {
            Some(Ok(Obtained {
                credentials,
                fetch: None,
                refresh_failing,
            })) => {
                let mut detail = describe(&credentials, "cached");
                if let Some(failing) = refresh_failing {
                    // Still valid, so this connect works: but say so, on-call should know.
                    detail.push_str("; ");
                    detail.push_str(&failing);
                }
                rec.record(
                    Stage::Credentials,
                    Outcome::Cached,
                    started.elapsed(),
                    &detail,
                );
                if role.is_some() {
                    rec.record(Stage::AssumeRole, Outcome::Cached, Duration::ZERO, &detail);
                }
                Ok(credentials)
            }
            Some(Ok(Obtained {
                credentials,
                fetch: Some(fetch),
                ..
            })) => {
                let base = describe(&fetch.base, "base");
                rec.record(Stage::Credentials, Outcome::Ok, fetch.base_took, &base);
                if let (Some(took), Some(role)) = (fetch.assume_role_took, &role) {
                    let detail = describe(&credentials, role);
                    rec.record(Stage::AssumeRole, Outcome::Ok, took, &detail);
                }
                Ok(credentials)
            }
            Some(Err(FetchFailure { error, base })) => {
                let mut elapsed = started.elapsed();
                if let Some((base, took)) = base {
                    let detail = describe(&base, "base");
                    rec.record(Stage::Credentials, Outcome::Ok, took, &detail);
                    elapsed = elapsed.saturating_sub(took);
                }
                rec.fail(error.stage(), elapsed, &error);
                Err(error)
            }
            None => {
                let stage = fetch_stage(role.as_deref());
                let error = deadline.expired(stage);
                rec.fail(stage, started.elapsed(), &error);
                Err(error)
            }
        }
    }

    /// The startup message and the token as the password, on the TLS stream.
    async fn login(
        &self,
        rec: &mut Recorder,
        deadline: Deadline,
        stream: TlsStream,
        password: &LoginPassword,
    ) -> Result<Session, Error> {
        let i = &*self.inner;
        let (host, user) = (i.token_params.hostname(), i.token_params.username());
        let login = async {
            let mut session = login::login(&i.startup, password, stream)
                .await
                .map_err(|e| refusal(password, login_error(user, host, e)))?;
            let wanted = match i.target_session_attrs {
                TargetSessionAttrs::ReadWrite => Some(false),
                TargetSessionAttrs::ReadOnly => Some(true),
                _ => None,
            };
            if let Some(wanted_read_only) = wanted {
                let read_only = login::is_read_only(&mut session)
                    .await
                    .map_err(|e| login_error(user, host, e))?;
                if read_only != wanted_read_only {
                    return Err(session_attrs_error(user, host, read_only));
                }
            }
            Ok(session)
        };
        runner::run(rec, Stage::Login, deadline, login, |_| {
            format!("{user} to {}", i.startup.get_dbname().unwrap_or(user))
        })
        .await
    }
}

/// A failed login as what was refused: on the password path, 28P01 is about the stored
/// password, not IAM. Classified inside the login stage, so that the stage's own record
/// (its WARN line, the report) gives the password's hint rather than IAM's.
fn refusal(password: &LoginPassword, error: Error) -> Error {
    if password.is_token() {
        error
    } else {
        password_login_error(error)
    }
}

/// The last step of an open: logging in on the verified stream with the token.
pub(crate) trait LoginStep: Sync {
    /// What a successful login gives.
    type Session: Send;
    fn login<'a>(
        &'a self,
        connector: &'a Connector,
        rec: &'a mut Recorder,
        deadline: Deadline,
        stream: TlsStream,
        password: &'a LoginPassword,
    ) -> impl Future<Output = Result<Self::Session, Error>> + Send + 'a;
}

/// tokio-postgres's startup: a client and its connection.
struct ClientLogin;

impl LoginStep for ClientLogin {
    type Session = Session;
    fn login<'a>(
        &'a self,
        connector: &'a Connector,
        rec: &'a mut Recorder,
        deadline: Deadline,
        stream: TlsStream,
        password: &'a LoginPassword,
    ) -> impl Future<Output = Result<Session, Error>> + Send + 'a {
        connector.login(rec, deadline, stream, password)
    }
}

/// The raw startup exchange: the stream, handed over after the greeting.
struct StreamLogin<'p> {
    parameters: &'p [(&'p str, &'p str)],
}

impl LoginStep for StreamLogin<'_> {
    type Session = LoggedInStream;
    fn login<'a>(
        &'a self,
        connector: &'a Connector,
        rec: &'a mut Recorder,
        deadline: Deadline,
        stream: TlsStream,
        password: &'a LoginPassword,
    ) -> impl Future<Output = Result<LoggedInStream, Error>> + Send + 'a {
        let i = &*connector.inner;
        let (host, user) = (i.token_params.hostname(), i.token_params.username());
        let login = async move {
            stream::login(stream, host, user, &i.startup, self.parameters, password)
                .await
                .map_err(|e| refusal(password, e))
        };
        let database = self
            .parameters
            .iter()
            .find(|(name, _)| *name == "database")
            .map(|(_, db)| *db)
            .or(i.startup.get_dbname())
            .unwrap_or(user);
        runner::run(rec, Stage::Login, deadline, login, move |_| {
            format!("{user} to {database}")
        })
    }
}

/// The stages of the network branch, in order.
const NETWORK_STAGES: &[Stage] = &[Stage::Dns, Stage::Tcp, Stage::Tls];

/// When the other branch failed first, records this branch's first stage that did not
/// finish as skipped, naming the failure that ended it (only in a report that keeps stages).
fn note_unfinished(branch: &mut Recorder, failed: Stage, stages: &[Stage]) {
    if !branch.keeps() {
        return;
    }
    if let Some(stage) = stages.iter().find(|s| !branch.has(**s)) {
        let detail = format!("not finished: {failed} failed first");
        branch.record(*stage, Outcome::Skipped, Duration::ZERO, &detail);
    }
}

/// Which of two branches failed first.
enum First {
    A(Error),
    B(Error),
}

impl First {
    fn into_error(self) -> Error {
        match self {
            First::A(e) | First::B(e) => e,
        }
    }
}

/// Both results, or the first failure as soon as either branch fails; the other branch is
/// then dropped unfinished.
async fn first_failure<A, B>(
    a: impl Future<Output = Result<A, Error>>,
    b: impl Future<Output = Result<B, Error>>,
) -> Result<(A, B), First> {
    use std::task::Poll;
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut a_done, mut b_done) = (None, None);
    std::future::poll_fn(|cx| {
        if a_done.is_none() {
            if let Poll::Ready(result) = a.as_mut().poll(cx) {
                match result {
                    Ok(v) => a_done = Some(v),
                    Err(e) => return Poll::Ready(Err(First::A(e))),
                }
            }
        }
        if b_done.is_none() {
            if let Poll::Ready(result) = b.as_mut().poll(cx) {
                match result {
                    Ok(v) => b_done = Some(v),
                    Err(e) => return Poll::Ready(Err(First::B(e))),
                }
            }
        }
        match (a_done.take(), b_done.take()) {
            (Some(a), Some(b)) => Poll::Ready(Ok((a, b))),
            (a, b) => {
                (a_done, b_done) = (a, b);
                Poll::Pending
            }
        }
    })
    .await
}

/// A failed open, with what the refused login used (to mark it suspect).
pub(crate) struct Refused {
    pub(crate) error: Error,
    used: Option<Used>,
}

/// What a login's password came from.
enum Used {
    /// The credentials that signed its token.
    Credentials(Credentials),
    /// The read of the stored password ([`PasswordCache::invalidate`]).
    Password(u64),
}

impl Refused {
    /// A failure before any login: nothing to drop.
    fn early(error: Error) -> Self {
        Self { error, used: None }
    }
}
