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

use std::net::SocketAddr;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::control::Control;
use crate::http_service::{fault_refuses, HttpAnswer, HttpServer};
use crate::iam::{Caller, Iam};
use crate::signed_request::{authenticate, AuthFailure};
use crate::sigv4;

/// The request type of the STS stand-in (the same as the other AWS API stand-ins').
pub use crate::signed_request::SignedRequest as StsRequest;

const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

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

/// Query protocol parameters: query string, plus the body for a form POST.
fn query_params(req: &StsRequest) -> Result<Vec<(String, String)>, StsError> {
    let bad = || StsError::sender(400, "MalformedQueryString", "malformed query string");
    let mut params = parse_form(&req.query).ok_or_else(bad)?;
    if req.method == "POST" {
        let body = std::str::from_utf8(&req.body).map_err(|_| bad())?;
        params.extend(parse_form(body).ok_or_else(bad)?);
    }
    Ok(params)
}

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
        let skew = Duration::seconds(i64::from(self.iam.config().sts.max_clock_skew_seconds));
        authenticate(&self.iam, req, "sts", now, skew).map_err(|failure| {
            let (status, code) = match &failure {
                AuthFailure::Missing => (403, "MissingAuthenticationToken"),
                AuthFailure::Incomplete(_) => (400, "IncompleteSignature"),
                AuthFailure::UnknownKey => (403, "InvalidClientTokenId"),
                AuthFailure::Expired => (400, "ExpiredToken"),
                AuthFailure::Signature(_) => (403, "SignatureDoesNotMatch"),
            };
            StsError::sender(status, code, failure.message())
        })
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
        let params = query_params(req)?;
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
    http: HttpServer,
}

impl StsServer {
    /// Binds `listen` and serves until dropped or [`StsServer::stop`] is called.
    pub async fn start(sts: Sts, listen: SocketAddr) -> Result<StsServer, crate::Error> {
        let sts = Arc::new(sts);
        let http = HttpServer::start("STS", listen, move |req, rid| {
            let sts = Arc::clone(&sts);
            async move { serve_one(&sts, req, &rid).await }
        })
        .await?;
        Ok(StsServer { http })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        self.http.stop();
    }
}

async fn serve_one(sts: &Sts, req: StsRequest, rid: &str) -> HttpAnswer {
    let is_assume_role =
        query_params(&req).is_ok_and(|p| p.iter().any(|(k, v)| k == "Action" && v == "AssumeRole"));
    if is_assume_role {
        Control::bump(&sts.control.assume_role_calls);
    }
    if fault_refuses(sts.control.sts_watch(), "STS").await {
        return xml_answer(503, service_unavailable(rid));
    }
    let (status, xml) = sts.handle(&req, OffsetDateTime::now_utc(), rid);
    if is_assume_role && status == 200 {
        Control::bump(&sts.control.assume_role_succeeded);
    }
    xml_answer(status, xml)
}

fn xml_answer(status: u16, body: String) -> HttpAnswer {
    HttpAnswer {
        status,
        content_type: "text/xml",
        body,
    }
}

/// The Query protocol's answer of an overloaded service (HTTP 503).
fn service_unavailable(request_id: &str) -> String {
    format!(
        "<ErrorResponse xmlns=\"{XMLNS}\">\n  <Error>\n    <Type>Receiver</Type>\n    <Code>ServiceUnavailable</Code>\n    <Message>Service is unable to handle request.</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n"
    )
}
