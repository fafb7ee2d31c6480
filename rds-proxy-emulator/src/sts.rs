//! The STS stand-in: `AssumeRole` and `GetCallerIdentity` in the Query protocol (form
//! POST or GET query, `Version=2011-06-15`) over plain HTTP on loopback.
//!
//! Every request must carry a valid SigV4 `Authorization` header (service `sts`) from a
//! known principal or from session credentials this stand-in issued (with their session
//! token, before expiry). `AssumeRole` then enforces the role's trust policy (caller ARN)
//! and its `sts:ExternalId` condition, and honours `DurationSeconds` between the configured
//! minimum and the role's maximum. Answers are the XML the AWS SDKs and boto3 parse;
//! refusals are `ErrorResponse` documents with the STS codes and texts:
//!
//! | situation | HTTP | Code |
//! |---|---|---|
//! | caller not trusted, wrong/missing external id, unknown role | 403 | `AccessDenied` (`User: CALLER is not authorized to perform: sts:AssumeRole on resource: ROLE`) |
//! | unknown access key, wrong session token | 403 | `InvalidClientTokenId` |
//! | bad signature, body altered after signing (the payload hash is the received body's; an `x-amz-content-sha256` claiming another is refused) | 403 | `SignatureDoesNotMatch` |
//! | expired session credentials | 403 | `ExpiredToken` |
//! | no `Authorization` | 403 | `MissingAuthenticationToken` |
//! | bad parameter | 400 | `ValidationError` |
//! | unknown action | 400 | `InvalidAction` |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use time::{Duration, OffsetDateTime};
use tokio::net::TcpListener;

use crate::accept::{accept_with_backoff, Backoff};
use crate::control::{Control, StsFault};
use crate::iam::{Caller, Iam};
use crate::sigv4::{self, CredentialScope, ALGORITHM};

const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
const MAX_BODY: usize = 64 * 1024;

/// An STS refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsError {
    /// HTTP status.
    pub status: u16,
    /// `Sender` or `Receiver`.
    pub kind: &'static str,
    /// Error code (`AccessDenied`, ...).
    pub code: &'static str,
    /// Message.
    pub message: String,
}

impl StsError {
    fn sender(status: u16, code: &'static str, message: impl Into<String>) -> StsError {
        StsError {
            status,
            kind: "Sender",
            code,
            message: message.into(),
        }
    }
}

/// Escapes text for XML.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// ISO 8601 in UTC to the second, as STS writes `Expiration`.
const ISO8601: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

fn iso8601(t: OffsetDateTime) -> String {
    // Cannot fail for the years credentials expire in (0..=9999).
    t.to_offset(time::UtcOffset::UTC)
        .format(ISO8601)
        .unwrap_or_default()
}

/// One parsed HTTP request, reduced to what SigV4 and the Query protocol need.
#[derive(Debug, Clone)]
pub struct StsRequest {
    /// HTTP method.
    pub method: String,
    /// Path (not decoded).
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers (lowercased names, in order; repeated names kept).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Parses a query string or `application/x-www-form-urlencoded` body (`+` is a space);
/// `None` on a malformed escape or a value that is not UTF-8.
///
/// ```
/// let p = rds_proxy_emulator::sts::parse_form("Action=AssumeRole&RoleSessionName=a+b%2F").unwrap();
/// assert_eq!(p[1], ("RoleSessionName".to_string(), "a b/".to_string()));
/// assert!(rds_proxy_emulator::sts::parse_form("a=%zz").is_none());
/// ```
pub fn parse_form(s: &str) -> Option<Vec<(String, String)>> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((
                sigv4::percent_decode(k, true)?,
                sigv4::percent_decode(v, true)?,
            ))
        })
        .collect()
}

impl StsRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Query protocol parameters: query string, plus the body for a form POST.
    fn params(&self) -> Result<Vec<(String, String)>, StsError> {
        let bad = || StsError::sender(400, "MalformedQueryString", "malformed query string");
        let mut params = parse_form(&self.query).ok_or_else(bad)?;
        if self.method == "POST" {
            let body = std::str::from_utf8(&self.body).map_err(|_| bad())?;
            params.extend(parse_form(body).ok_or_else(bad)?);
        }
        Ok(params)
    }

    fn canonical_request(&self, signed_headers: &str) -> Result<String, StsError> {
        let mismatch = || StsError::sender(403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH);
        // SigV4 canonical query: decoded RFC 3986 (a `+` is a literal plus sign there).
        let query: Vec<(String, String)> = self
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Some((
                    sigv4::percent_decode(k, false)?,
                    sigv4::percent_decode(v, false)?,
                ))
            })
            .collect::<Option<_>>()
            .ok_or_else(mismatch)?;
        let mut canonical_headers = String::new();
        for name in signed_headers.split(';') {
            let values: Vec<String> = self
                .headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            if values.is_empty() {
                return Err(mismatch());
            }
            canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
        }
        // The payload line is the hash of the body received, never the client's claim: a
        // body changed after signing must not pass. A claim that differs from it (an
        // altered body, or `UNSIGNED-PAYLOAD`, which STS does not take) is refused.
        let payload_hash = sigv4::sha256_hex(&self.body);
        if let Some(claimed) = self.header("x-amz-content-sha256") {
            if !claimed.eq_ignore_ascii_case(&payload_hash) {
                return Err(StsError::sender(
                    403,
                    "SignatureDoesNotMatch",
                    CONTENT_SHA256_MISMATCH,
                ));
            }
        }
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        Ok(format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            path,
            sigv4::canonical_query(&query),
            canonical_headers,
            signed_headers,
            payload_hash
        ))
    }
}

const CONTENT_SHA256_MISMATCH: &str =
    "The provided 'x-amz-content-sha256' header does not match what was computed.";

const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// The STS logic, independent of HTTP.
#[derive(Debug, Clone)]
pub struct Sts {
    iam: Arc<Iam>,
    control: Arc<Control>,
}

impl Sts {
    /// STS over the given identity store (no faults, its own counters).
    pub fn new(iam: Arc<Iam>) -> Sts {
        Sts::with_control(iam, Arc::new(Control::new()))
    }

    /// STS over the given identity store, obeying `control`'s faults and counting there.
    pub fn with_control(iam: Arc<Iam>, control: Arc<Control>) -> Sts {
        Sts { iam, control }
    }

    /// Verifies the request's SigV4 signature and returns the caller.
    pub fn authenticate(&self, req: &StsRequest, now: OffsetDateTime) -> Result<Caller, StsError> {
        let auth = req.header("authorization").ok_or_else(|| {
            StsError::sender(
                403,
                "MissingAuthenticationToken",
                "Request is missing Authentication Token",
            )
        })?;
        let incomplete = || {
            StsError::sender(
                400,
                "IncompleteSignature",
                format!("Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters. Authorization={ALGORITHM}"),
            )
        };
        let rest = auth
            .strip_prefix(ALGORITHM)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(incomplete)?;
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed_headers = Some(v);
            } else if let Some(v) = part.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let (credential, signed_headers, signature) = match (credential, signed_headers, signature)
        {
            (Some(c), Some(h), Some(s)) => (c, h, s),
            _ => return Err(incomplete()),
        };
        let scope = CredentialScope::parse(credential).ok_or_else(incomplete)?;
        if !signed_headers.split(';').any(|h| h == "host") {
            return Err(StsError::sender(
                403,
                "SignatureDoesNotMatch",
                "'Host' must be a 'SignedHeader' in the AWS Authorization.",
            ));
        }
        let (known, caller) = self.iam.lookup(&scope.access_key_id).ok_or_else(|| {
            StsError::sender(
                403,
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            )
        })?;
        let presented = req.header("x-amz-security-token");
        let token_ok = match (&known.session_token, presented) {
            (Some(t), Some(p)) => sigv4::signatures_equal(t, p),
            (None, None) => true,
            _ => false,
        };
        if !token_ok {
            return Err(StsError::sender(
                403,
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            ));
        }
        if let Some(exp) = known.expires_at {
            if now >= exp {
                return Err(StsError::sender(
                    400,
                    "ExpiredToken",
                    "The security token included in the request is expired",
                ));
            }
        }
        let amz_date = req.header("x-amz-date").unwrap_or_default();
        let signed_at = sigv4::parse_amz_date(amz_date)
            .filter(|_| amz_date.get(..8) == Some(scope.date.as_str()))
            .ok_or_else(|| StsError::sender(403, "SignatureDoesNotMatch", SIGNATURE_MISMATCH))?;
        let skew = Duration::seconds(i64::from(self.iam.config().sts.max_clock_skew_seconds));
        if signed_at > now + skew || signed_at < now - skew {
            return Err(StsError::sender(
                403,
                "SignatureDoesNotMatch",
                format!(
                    "Signature expired: {amz_date} is now earlier than {} ({} - {} min.)",
                    sigv4::format_amz_date(now - skew),
                    sigv4::format_amz_date(now),
                    skew.whole_minutes()
                ),
            ));
        }
        if scope.service != "sts" {
            return Err(StsError::sender(
                403,
                "SignatureDoesNotMatch",
                "Credential should be scoped to correct service: 'sts'. ",
            ));
        }
        let creq = req.canonical_request(signed_headers)?;
        let key = sigv4::signing_key(&known.secret_access_key, &scope.date, &scope.region, "sts");
        let expected = sigv4::signature(
            &key,
            &sigv4::string_to_sign(amz_date, &scope.scope(), &creq),
        );
        if !sigv4::signatures_equal(&expected, signature) {
            tracing::warn!(caller = %caller.arn, "STS: signature does not match");
            return Err(StsError::sender(
                403,
                "SignatureDoesNotMatch",
                SIGNATURE_MISMATCH,
            ));
        }
        Ok(caller)
    }

    /// Handles one request at time `now`: `(HTTP status, XML body)`.
    pub fn handle(&self, req: &StsRequest, now: OffsetDateTime, request_id: &str) -> (u16, String) {
        match self.dispatch(req, now, request_id) {
            Ok(xml) => (200, xml),
            Err(e) => (
                e.status,
                format!(
                    "<ErrorResponse xmlns=\"{XMLNS}\">\n  <Error>\n    <Type>{}</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
                    e.kind,
                    e.code,
                    xml_escape(&e.message)
                ),
            ),
        }
    }

    fn dispatch(
        &self,
        req: &StsRequest,
        now: OffsetDateTime,
        request_id: &str,
    ) -> Result<String, StsError> {
        let params = req.params()?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let action = get("Action").unwrap_or_default();
        if !matches!(action, "AssumeRole" | "GetCallerIdentity") {
            return Err(StsError::sender(
                400,
                "InvalidAction",
                format!(
                    "Could not find operation {action} for version {}",
                    get("Version").unwrap_or("")
                ),
            ));
        }
        let caller = self.authenticate(req, now)?;
        match action {
            "GetCallerIdentity" => Ok(format!(
                "<GetCallerIdentityResponse xmlns=\"{XMLNS}\">\n  <GetCallerIdentityResult>\n    <Arn>{}</Arn>\n    <UserId>{}</UserId>\n    <Account>{}</Account>\n  </GetCallerIdentityResult>\n  <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n  </ResponseMetadata>\n</GetCallerIdentityResponse>\n",
                xml_escape(&caller.arn),
                xml_escape(&caller.user_id),
                xml_escape(&caller.account)
            )),
            _ => self.assume_role(&caller, get, now, request_id),
        }
    }

    fn assume_role<'a>(
        &self,
        caller: &Caller,
        get: impl Fn(&str) -> Option<&'a str>,
        now: OffsetDateTime,
        request_id: &str,
    ) -> Result<String, StsError> {
        let missing = |p: &str| {
            StsError::sender(400, "ValidationError", format!("1 validation error detected: Value null at '{p}' failed to satisfy constraint: Member must not be null"))
        };
        let role_arn = get("RoleArn").ok_or_else(|| missing("roleArn"))?;
        let session_name = get("RoleSessionName").ok_or_else(|| missing("roleSessionName"))?;
        if !(2..=64).contains(&session_name.len())
            || !session_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        {
            return Err(StsError::sender(
                400,
                "ValidationError",
                format!("1 validation error detected: Value '{session_name}' at 'roleSessionName' failed to satisfy constraint: Member must have length between 2 and 64 and satisfy regular expression pattern: [\\w+=,.@-]*"),
            ));
        }
        let denied = |why: &str| {
            tracing::warn!(caller = %caller.arn, role = %role_arn, "STS AssumeRole refused: {why}");
            StsError::sender(
                403,
                "AccessDenied",
                format!(
                    "User: {} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                    caller.arn
                ),
            )
        };
        let role = self
            .iam
            .role(role_arn)
            .ok_or_else(|| denied("no such role"))?;
        if !role.trusted_principals.contains(&caller.arn) {
            return Err(denied("caller is not in the role's trust policy"));
        }
        if let Some(want) = &role.external_id {
            match get("ExternalId") {
                None => return Err(denied("sts:ExternalId condition: no ExternalId given")),
                Some(got) if got != want => {
                    return Err(denied(
                        "sts:ExternalId condition: ExternalId does not match",
                    ))
                }
                Some(_) => {}
            }
        }
        let min = self.iam.config().sts.min_duration_seconds;
        let max = role.max_session_duration_seconds;
        let duration = match get("DurationSeconds") {
            None => 3600.min(max),
            Some(d) => {
                let d: u32 = d.parse().map_err(|_| {
                    StsError::sender(
                        400,
                        "ValidationError",
                        format!("Value '{d}' at 'durationSeconds' is not a number"),
                    )
                })?;
                if d < min {
                    return Err(StsError::sender(
                        400,
                        "ValidationError",
                        format!("1 validation error detected: Value '{d}' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to {min}"),
                    ));
                }
                if d > max {
                    return Err(StsError::sender(
                        400,
                        "ValidationError",
                        "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
                    ));
                }
                d
            }
        };
        // `[sts] credentials_lifetime_seconds` overrides what was asked for (tests of
        // long-running clients need credentials that expire within the test).
        let lifetime = self
            .iam
            .config()
            .sts
            .credentials_lifetime_seconds
            .unwrap_or(duration);
        let expiration =
            now.replace_nanosecond(0).unwrap_or(now) + Duration::seconds(i64::from(lifetime));
        let creds = self
            .iam
            .issue(role_arn, session_name, expiration)
            .ok_or_else(|| denied("role ARN malformed"))?;
        tracing::info!(caller = %caller.arn, role = %role_arn, access_key_id = %creds.access_key_id, expiration = %iso8601(expiration), "STS AssumeRole granted");
        Ok(format!(
            "<AssumeRoleResponse xmlns=\"{XMLNS}\">\n  <AssumeRoleResult>\n    <AssumedRoleUser>\n      <AssumedRoleId>{}</AssumedRoleId>\n      <Arn>{}</Arn>\n    </AssumedRoleUser>\n    <Credentials>\n      <AccessKeyId>{}</AccessKeyId>\n      <SecretAccessKey>{}</SecretAccessKey>\n      <SessionToken>{}</SessionToken>\n      <Expiration>{}</Expiration>\n    </Credentials>\n  </AssumeRoleResult>\n  <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n  </ResponseMetadata>\n</AssumeRoleResponse>\n",
            xml_escape(&creds.assumed_role_id),
            xml_escape(&creds.assumed_role_arn),
            xml_escape(&creds.access_key_id),
            xml_escape(&creds.secret_access_key),
            xml_escape(&creds.session_token),
            iso8601(creds.expiration),
        ))
    }
}

/// A running STS stand-in.
#[derive(Debug)]
pub struct StsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl StsServer {
    /// Binds `listen` and serves until dropped or [`StsServer::stop`] is called.
    pub async fn start(sts: Sts, listen: SocketAddr) -> Result<StsServer, crate::Error> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| crate::Error::io(format!("binding STS on {listen}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| crate::Error::io("STS listener address", e))?;
        let sts = Arc::new(sts);
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new();
            loop {
                let (stream, _) =
                    accept_with_backoff("STS", &mut backoff, || listener.accept()).await;
                let sts = Arc::clone(&sts);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let sts = Arc::clone(&sts);
                        async move { Ok::<_, Infallible>(serve_one(&sts, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!("STS connection: {e}");
                    }
                });
            }
        });
        Ok(StsServer { addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for StsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn request_id() -> String {
    let n = OffsetDateTime::now_utc().unix_timestamp_nanos();
    let h = sigv4::sha256_hex(n.to_string().as_bytes());
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

async fn serve_one(sts: &Sts, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let rid = request_id();
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => {
            let (status, xml) = (413, "request body too large".to_string());
            return respond(status, xml, &rid);
        }
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in &parts.headers {
        headers.push((
            name.as_str().to_ascii_lowercase(),
            String::from_utf8_lossy(value.as_bytes()).trim().to_string(),
        ));
    }
    let sreq = StsRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body,
    };
    let is_assume_role = sreq
        .params()
        .is_ok_and(|p| p.iter().any(|(k, v)| k == "Action" && v == "AssumeRole"));
    if is_assume_role {
        Control::bump(&sts.control.assume_role_calls);
    }
    let mut fault = sts.control.sts_watch();
    let current = *fault.borrow_and_update();
    match current {
        StsFault::None => {}
        StsFault::Hang => {
            tracing::warn!("STS fault: holding a request until the fault is cleared");
            // Waits until the fault changes; if the stack goes away the task is dropped.
            if fault.wait_for(|f| *f != StsFault::Hang).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        StsFault::Refuse => {
            tracing::warn!("STS fault: answering 503 ServiceUnavailable");
            return respond(503, service_unavailable(&rid), &rid);
        }
    }
    if sts.control.sts_fault() == StsFault::Refuse {
        return respond(503, service_unavailable(&rid), &rid);
    }
    let (status, xml) = sts.handle(&sreq, OffsetDateTime::now_utc(), &rid);
    if is_assume_role && status == 200 {
        Control::bump(&sts.control.assume_role_succeeded);
    }
    respond(status, xml, &rid)
}

/// The Query protocol's answer of an overloaded service (HTTP 503).
fn service_unavailable(request_id: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"{XMLNS}\">\n  <Error>\n    <Type>Receiver</Type>\n    <Code>ServiceUnavailable</Code>\n    <Message>Service is unable to handle request.</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n"
    )
}

fn respond(status: u16, body: String, rid: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str("text/xml") {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = hyper::header::HeaderValue::from_str(rid) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    resp
}
