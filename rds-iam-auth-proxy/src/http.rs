//! The operations endpoints, as the Cloud SQL Auth Proxy offers them: health checks for
//! Kubernetes probes, Prometheus metrics, and `/quitquitquit`.
//!
//! | flag | path | answer |
//! |---|---|---|
//! | `--health-check` | `/startup` | 200 `ok` once the proxy has started, else 503 and what it waits for |
//! | `--health-check` | `/readiness` | 200 `ok` when started, every target has usable credentials and fewer than `--max-connections` are open; else 503, one reason a line |
//! | `--health-check` | `/liveness` | 200 `ok` while the process serves |
//! | `--prometheus` | `/metrics` | the counters in Prometheus text ([`Metrics::render`]) |
//! | `--quitquitquit` | `/quitquitquit` | `POST` or `GET` (a Kubernetes `preStop` `httpGet` hook sends GET, as the Cloud SQL Auth Proxy accepts): 200, then the same graceful shutdown as SIGTERM; other methods 405 |
//!
//! Paths whose flag is not given answer 404; with none of the flags nothing listens. The
//! server listens on `--http-address` (loopback by default) and `--http-port` (9090).
// used by the session and listener modules, written alongside

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rds_iam_auth::Connector;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::{Metrics, Source};

/// The default `--http-port`, the Cloud SQL Auth Proxy's.
pub(crate) const DEFAULT_PORT: u16 = 9090;

/// How long `/readiness` waits for credentials that are being fetched before it answers
/// 503: under Kubernetes' default probe timeout (one second), so the prober gets the
/// reason rather than a timeout.
const CREDENTIALS_WAIT: Duration = Duration::from_millis(800);

/// How long a client may take to send a request's headers (a connection that sends
/// nothing does not hold a task for ever).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// After shutdown is asked for, how long requests in progress may take to finish (the
/// answer to `/quitquitquit` above all) before their connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The Prometheus text format's content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Where the endpoints listen and which of them are on (from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpSettings {
    /// `--http-address`.
    pub(crate) address: IpAddr,
    /// `--http-port`.
    pub(crate) port: u16,
    /// `--health-check`: `/startup`, `/readiness`, `/liveness`.
    pub(crate) health_check: bool,
    /// `--prometheus`: `/metrics`.
    pub(crate) prometheus: bool,
    /// `--quitquitquit`: `POST` or `GET /quitquitquit`.
    pub(crate) quitquitquit: bool,
}

impl Default for HttpSettings {
    /// 127.0.0.1:9090, every endpoint off.
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            health_check: false,
            prometheus: false,
            quitquitquit: false,
        }
    }
}

impl HttpSettings {
    /// Whether any endpoint is on (otherwise nothing listens).
    pub(crate) fn enabled(&self) -> bool {
        self.health_check || self.prometheus || self.quitquitquit
    }
}

/// What the endpoints report: shared with the code that starts the proxy (which marks it
/// started) and the sessions (through the metrics).
pub(crate) struct Status {
    /// One per target, in the targets' order (the metrics' indices).
    connectors: Vec<Connector>,
    metrics: Arc<Metrics>,
    max_connections: Option<usize>,
    /// `None` once started; until then, what starting waits for.
    starting: Mutex<Option<String>>,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("targets", &self.connectors.len())
            .field("max_connections", &self.max_connections)
            .field("starting", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl Status {
    /// The status of a proxy that is starting. `connectors[t]` is target `t`'s (as in
    /// `metrics`); `max_connections` is `--max-connections` (`None` or 0: no limit).
    pub(crate) fn new(
        connectors: Vec<Connector>,
        metrics: Arc<Metrics>,
        max_connections: Option<usize>,
    ) -> Self {
        debug_assert_eq!(connectors.len(), metrics.target_count());
        Self {
            connectors,
            metrics,
            max_connections: max_connections.filter(|&max| max > 0),
            starting: Mutex::new(Some("starting".to_owned())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // Only a string is kept under the lock: a panic elsewhere leaves it consistent.
        self.starting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Still starting: `reason` (one line) is what `/startup` and `/readiness` show, e.g.
    /// `fetching credentials (2 of 3 targets done)`.
    pub(crate) fn starting(&self, reason: impl Into<String>) {
        *self.lock() = Some(one_line(&reason.into()));
    }

    /// Starting is over: credentials fetched for every target and, when asked, every
    /// target's staged check passed.
    pub(crate) fn started(&self) {
        *self.lock() = None;
    }

    /// `Ok` once started, else what starting waits for.
    pub(crate) fn startup(&self) -> Result<(), String> {
        match &*self.lock() {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }

    /// `Ok` when the proxy can take a client now; else every reason it cannot, one line
    /// each.
    ///
    /// A target's credentials are usable when its cache hands them out at once (cached and
    /// not about to expire). The library has no way to ask without fetching: when none are
    /// cached, this starts the same single-flight fetch a connect would (not while
    /// retries are backing off) and waits for it a little, so a probe also keeps an idle
    /// proxy's credentials fresh.
    pub(crate) async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if let Err(reason) = self.startup() {
            reasons.push(format!("not started: {reason}"));
        }

        let mut checks = JoinSet::new();
        for (t, connector) in self.connectors.iter().enumerate() {
            let connector = connector.clone();
            checks.spawn(async move {
                let fetched =
                    tokio::time::timeout(CREDENTIALS_WAIT, connector.credentials().credentials())
                        .await;
                let problem = match fetched {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(one_line(&e.to_string())),
                    Err(_) => Some(format!(
                        "still being fetched after {} ms",
                        CREDENTIALS_WAIT.as_millis()
                    )),
                };
                (t, problem)
            });
        }
        let mut problems = vec![None; self.connectors.len()];
        while let Some(done) = checks.join_next().await {
            match done {
                Ok((t, problem)) => problems[t] = problem,
                Err(e) => reasons.push(format!("credentials check failed: {e}")),
            }
        }
        for (t, problem) in problems.into_iter().enumerate() {
            if let Some(problem) = problem {
                let name = self.metrics.target_name(t).unwrap_or("?");
                reasons.push(format!(
                    "target \"{name}\": no usable credentials: {problem}"
                ));
            }
        }

        if let Some(max) = self.max_connections {
            let open = self.metrics.open_total();
            if open >= max {
                reasons.push(format!(
                    "max connections reached: {open} open, --max-connections {max}"
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// The metrics in Prometheus text, with the credential caches' counters.
    pub(crate) fn render_metrics(&self) -> String {
        let sources: Vec<_> = self
            .connectors
            .iter()
            .map(|c| Source {
                credentials: c.credentials(),
                tokens_signed: c.tokens_signed(),
            })
            .collect();
        self.metrics.render(&sources)
    }
}

/// A text as one line: reasons are listed one a line.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Binds the endpoints' listener, or `None` when no endpoint is on. Called before the
/// proxy's own listeners, so that a port in use is reported before anything serves.
pub(crate) async fn bind(settings: &HttpSettings) -> io::Result<Option<TcpListener>> {
    if !settings.enabled() {
        return Ok(None);
    }
    let address = SocketAddr::new(settings.address, settings.port);
    match TcpListener::bind(address).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot listen for the HTTP endpoints on {address}: {e}"),
        )),
    }
}

/// Serves the endpoints on `listener` until `shutdown` turns true (or its sender is
/// dropped); requests in progress then get [`SHUTDOWN_GRACE`] to finish. `POST
/// /quitquitquit` sets `quit` to true (usually the sender of `shutdown`'s channel).
pub(crate) async fn serve(
    listener: TcpListener,
    settings: HttpSettings,
    status: Arc<Status>,
    quit: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "HTTP endpoints listening");
    }
    let endpoints = Arc::new(Endpoints {
        settings,
        status,
        quit,
    });
    // Each connection watches a copy: `shutdown` itself is borrowed by the loop's wait.
    let for_connections = shutdown.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shutdown = for_connections.clone();
                    connections.spawn(connection(stream, endpoints.clone(), shutdown));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "HTTP endpoints: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reaps finished connections, so the set does not grow with every probe.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("HTTP endpoints: dropping connections still open after shutdown");
    }
}

/// Resolves once shutdown is asked for, or its sender is gone (nobody can ask any more:
/// the proxy is ending). The flag is not borrowed past the return (a borrow held across
/// an await would block the sender).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&down| down).await;
}

/// One client connection (HTTP/1.1, keep-alive), closed after its request in progress
/// once shutdown is asked for.
async fn connection(
    stream: TcpStream,
    endpoints: Arc<Endpoints>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let endpoints = endpoints.clone();
        async move { Ok::<_, Infallible>(endpoints.respond(request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "HTTP endpoints: connection ended");
            }
            return;
        }
        () = stopped(&mut shutdown) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

struct Endpoints {
    settings: HttpSettings,
    status: Arc<Status>,
    quit: watch::Sender<bool>,
}

impl Endpoints {
    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let settings = &self.settings;
        let method = request.method();
        match request.uri().path() {
            "/startup" | "/readiness" | "/liveness" if settings.health_check => {
                if !readable(method) {
                    return not_allowed("GET, HEAD");
                }
                let outcome = match request.uri().path() {
                    "/startup" => self.status.startup(),
                    "/readiness" => self.status.readiness().await.map_err(|r| r.join("\n")),
                    // Answering at all is what liveness means.
                    _ => Ok(()),
                };
                match outcome {
                    Ok(()) => text(StatusCode::OK, "ok".to_owned()),
                    Err(reasons) => text(StatusCode::SERVICE_UNAVAILABLE, reasons),
                }
            }
            "/metrics" if settings.prometheus => {
                if !readable(method) {
                    return not_allowed("GET, HEAD");
                }
                let mut response = text(StatusCode::OK, self.status.render_metrics());
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                response
            }
            "/quitquitquit" if settings.quitquitquit => {
                // GET too: Kubernetes `preStop` `httpGet` hooks cannot send anything else.
                if method != Method::POST && method != Method::GET {
                    return not_allowed("GET, POST");
                }
                tracing::info!("shutdown asked for through /quitquitquit");
                // `send_replace`: the flag is set even when nobody watches it yet.
                self.quit.send_replace(true);
                text(StatusCode::OK, "ok".to_owned())
            }
            _ => text(StatusCode::NOT_FOUND, "not found".to_owned()),
        }
    }
}

fn readable(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
    // Probes and scrapes want the state now, never a cached answer.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed".to_owned(),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
    use aws_credential_types::Credentials;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A provider that never has credentials.
    #[derive(Debug)]
    struct NoCredentials;

    impl ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
                "no credentials in this test",
            )))
        }
    }

    /// A connector with no AWS behind it: fixed long-term keys, or (`working: false`) a
    /// provider that always fails.
    async fn connector(working: bool) -> Connector {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let provider = if working {
            SharedCredentialsProvider::new(Credentials::from_keys("AKIDHTTP", "secret", None))
        } else {
            SharedCredentialsProvider::new(NoCredentials)
        };
        rds_iam_auth::Config::new()
            .hostname("app.proxy-abc123.us-east-1.rds.amazonaws.com")
            .user("app")
            .sdk_config(sdk)
            .credentials_provider(provider)
            .connector()
            .await
            .expect("valid settings")
    }

    /// A running server; dropping it shuts the server down.
    struct Server {
        address: SocketAddr,
        status: Arc<Status>,
        shutdown: watch::Sender<bool>,
        quit: watch::Receiver<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    /// Serves `targets` (name, whether its credentials work) with `settings`' endpoints on
    /// a free loopback port. `/quitquitquit` flips a channel of its own, so tests see it
    /// without the server stopping.
    async fn server(
        settings: HttpSettings,
        targets: &[(&str, bool)],
        max_connections: Option<usize>,
    ) -> Server {
        let settings = HttpSettings {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            ..settings
        };
        let mut connectors = Vec::new();
        for &(_, working) in targets {
            connectors.push(connector(working).await);
        }
        let names = targets.iter().map(|(name, _)| name.to_string()).collect();
        let metrics = Arc::new(Metrics::new(names));
        let status = Arc::new(Status::new(connectors, metrics, max_connections));
        let listener = bind(&settings).await.expect("bind").expect("enabled");
        let address = listener.local_addr().expect("address");
        let (quit_tx, quit) = watch::channel(false);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            settings,
            status.clone(),
            quit_tx,
            shutdown_rx,
        ));
        Server {
            address,
            status,
            shutdown,
            quit,
            task,
        }
    }

    /// The answer to one request: status code, headers (lowercase names), body.
    #[derive(Debug)]
    struct Answer {
        code: u16,
        headers: String,
        body: String,
    }

    async fn request(address: SocketAddr, method: &str, path: &str) -> Answer {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let code = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        Answer {
            code,
            headers: headers.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    async fn get(address: SocketAddr, path: &str) -> Answer {
        request(address, "GET", path).await
    }

    fn health_check() -> HttpSettings {
        HttpSettings {
            health_check: true,
            ..HttpSettings::default()
        }
    }

    #[tokio::test]
    async fn nothing_listens_without_an_endpoint() {
        let settings = HttpSettings {
            port: 0,
            ..HttpSettings::default()
        };
        assert!(!settings.enabled());
        assert!(bind(&settings).await.expect("no bind").is_none());
    }

    #[tokio::test]
    async fn a_port_in_use_is_reported() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = taken.local_addr().expect("address").port();
        let settings = HttpSettings {
            port,
            prometheus: true,
            ..HttpSettings::default()
        };
        let err = bind(&settings).await.expect_err("port in use");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn health_endpoints_follow_startup() {
        let server = server(health_check(), &[("app", true)], None).await;
        let address = server.address;

        let startup = get(address, "/startup").await;
        assert_eq!((startup.code, startup.body.as_str()), (503, "starting"));
        server
            .status
            .starting("fetching credentials\n(1 of 2 targets)");
        let startup = get(address, "/startup").await;
        assert_eq!(
            (startup.code, startup.body.as_str()),
            (503, "fetching credentials (1 of 2 targets)")
        );
        let readiness = get(address, "/readiness").await;
        assert_eq!(readiness.code, 503);
        assert_eq!(
            readiness.body,
            "not started: fetching credentials (1 of 2 targets)"
        );
        let liveness = get(address, "/liveness").await;
        assert_eq!((liveness.code, liveness.body.as_str()), (200, "ok"));

        server.status.started();
        for path in [
            "/startup",
            "/readiness",
            "/liveness",
            "/readiness?verbose=1",
        ] {
            let answer = get(address, path).await;
            assert_eq!((answer.code, answer.body.as_str()), (200, "ok"), "{path}");
            assert!(
                answer
                    .headers
                    .contains("content-type: text/plain; charset=utf-8"),
                "{path}: {answer:?}"
            );
            assert!(answer.headers.contains("cache-control: no-store"));
        }
        let head = request(address, "HEAD", "/liveness").await;
        assert_eq!((head.code, head.body.as_str()), (200, ""));

        // The other endpoints are off; health endpoints only read.
        for path in ["/metrics", "/quitquitquit", "/", "/startup/", "/healthz"] {
            assert_eq!(get(address, path).await.code, 404, "{path}");
        }
        assert_eq!(request(address, "POST", "/quitquitquit").await.code, 404);
        let post = request(address, "POST", "/readiness").await;
        assert_eq!(post.code, 405);
        assert!(post.headers.contains("allow: get, head"), "{post:?}");
    }

    #[tokio::test]
    async fn readiness_fails_at_max_connections() {
        let server = server(health_check(), &[("a", true), ("b", true)], Some(2)).await;
        server.status.started();
        let metrics = &server.status.metrics;
        assert!(metrics.try_open(0, 0));
        assert_eq!(get(server.address, "/readiness").await.code, 200);
        assert!(metrics.try_open(1, 0));
        let readiness = get(server.address, "/readiness").await;
        assert_eq!(readiness.code, 503);
        assert_eq!(
            readiness.body,
            "max connections reached: 2 open, --max-connections 2"
        );
        metrics.closed(0);
        assert_eq!(get(server.address, "/readiness").await.code, 200);
        // Liveness does not care.
        assert!(metrics.try_open(0, 0));
        assert!(metrics.try_open(0, 0));
        assert_eq!(get(server.address, "/liveness").await.code, 200);
    }

    #[tokio::test]
    async fn zero_max_connections_means_no_limit() {
        let server = server(health_check(), &[("a", true)], Some(0)).await;
        server.status.started();
        assert!(server.status.metrics.try_open(0, 0));
        assert_eq!(get(server.address, "/readiness").await.code, 200);
    }

    #[tokio::test]
    async fn readiness_fails_while_credentials_cannot_be_fetched() {
        let settings = HttpSettings {
            health_check: true,
            prometheus: true,
            ..HttpSettings::default()
        };
        let server = server(
            settings,
            &[("good", true), ("bad", false), ("worse", false)],
            Some(10),
        )
        .await;
        server.status.started();
        let readiness = get(server.address, "/readiness").await;
        assert_eq!(readiness.code, 503, "{readiness:?}");
        let lines: Vec<_> = readiness.body.lines().collect();
        assert_eq!(lines.len(), 2, "{readiness:?}");
        for (line, name) in lines.iter().zip(["bad", "worse"]) {
            assert!(
                line.starts_with(&format!("target \"{name}\": no usable credentials: ")),
                "{line}"
            );
            assert!(line.contains("no credentials in this test"), "{line}");
        }
        // Asked again while retries back off: the same answer, at once.
        let again = get(server.address, "/readiness").await;
        assert_eq!(again.code, 503);
        assert_eq!(again.body.lines().count(), 2, "{again:?}");

        let metrics = get(server.address, "/metrics").await;
        assert!(metrics
            .body
            .contains("rds_iam_auth_proxy_credential_refresh_failures_total{target=\"good\"} 0\n"));
        // One failure, or more if the machine was slow enough for the backoff to end.
        let failures = metrics
            .body
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "rds_iam_auth_proxy_credential_refresh_failures_total{target=\"bad\"} ",
                )
            })
            .and_then(|n| n.parse::<u64>().ok());
        assert!(failures.is_some_and(|n| n >= 1), "{}", metrics.body);
        assert!(metrics
            .body
            .contains("rds_iam_auth_proxy_credential_refreshes_total{target=\"good\"} 1\n"));
    }

    #[tokio::test]
    async fn metrics_endpoint_serves_prometheus_text() {
        let settings = HttpSettings {
            prometheus: true,
            ..HttpSettings::default()
        };
        let server = server(settings, &[("app", true)], None).await;
        assert!(server.status.metrics.try_open(0, 0));
        let metrics = get(server.address, "/metrics").await;
        assert_eq!(metrics.code, 200);
        assert!(
            metrics
                .headers
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{metrics:?}"
        );
        assert_eq!(metrics.body, server.status.render_metrics());
        assert!(metrics
            .body
            .contains("rds_iam_auth_proxy_connections_open{target=\"app\"} 1\n"));
        assert!(metrics
            .body
            .contains("rds_iam_auth_proxy_tokens_signed_total{target=\"app\"} 0\n"));
        assert_eq!(request(server.address, "PUT", "/metrics").await.code, 405);
        for path in ["/startup", "/readiness", "/liveness", "/quitquitquit"] {
            assert_eq!(get(server.address, path).await.code, 404, "{path}");
        }
    }

    #[tokio::test]
    async fn quitquitquit_asks_for_shutdown_on_post_or_get_only() {
        let settings = HttpSettings {
            quitquitquit: true,
            ..HttpSettings::default()
        };
        let mut server = server(settings, &[("app", true)], None).await;
        for method in ["PUT", "DELETE"] {
            let refused = request(server.address, method, "/quitquitquit").await;
            assert_eq!(refused.code, 405, "{method}");
            assert!(refused.headers.contains("allow: get, post"), "{refused:?}");
        }
        assert!(!*server.quit.borrow());
        for path in ["/startup", "/readiness", "/liveness", "/metrics"] {
            assert_eq!(
                request(server.address, "GET", path).await.code,
                404,
                "{path}"
            );
        }

        let post = request(server.address, "POST", "/quitquitquit").await;
        assert_eq!((post.code, post.body.as_str()), (200, "ok"));
        tokio::time::timeout(Duration::from_secs(5), server.quit.wait_for(|&q| q))
            .await
            .expect("in time")
            .expect("flag set");
    }

    #[tokio::test]
    async fn quitquitquit_answers_then_the_server_stops() {
        // As the proxy wires it: one channel, /quitquitquit sets what `serve` watches.
        let listener = bind(&HttpSettings {
            port: 0,
            quitquitquit: true,
            ..HttpSettings::default()
        })
        .await
        .expect("bind")
        .expect("enabled");
        let address = listener.local_addr().expect("address");
        let metrics = Arc::new(Metrics::new(vec!["app".to_owned()]));
        let status = Arc::new(Status::new(vec![connector(true).await], metrics, None));
        let (quit, shutdown) = watch::channel(false);
        let settings = HttpSettings {
            quitquitquit: true,
            ..HttpSettings::default()
        };
        let task = tokio::spawn(serve(listener, settings, status, quit, shutdown));

        let post = request(address, "POST", "/quitquitquit").await;
        assert_eq!((post.code, post.body.as_str()), (200, "ok"));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve ends")
            .expect("no panic");
        assert!(
            TcpStream::connect(address).await.is_err(),
            "nothing listens"
        );
    }

    #[tokio::test]
    async fn shutdown_closes_idle_keep_alive_connections() {
        let server = server(health_check(), &[("app", true)], None).await;
        // A keep-alive connection with one request done, then idle.
        let mut idle = TcpStream::connect(server.address).await.expect("connect");
        idle.write_all(b"GET /liveness HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        server.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .expect("serve ends")
            .expect("no panic");
        let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }

    #[test]
    fn defaults_are_the_cloud_sql_proxy_ones() {
        let settings = HttpSettings::default();
        assert_eq!(settings.address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(settings.port, 9090);
        assert!(!settings.enabled());
    }
}
