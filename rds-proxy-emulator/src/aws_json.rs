//! The AWS JSON 1.1 protocol, shared by the Secrets Manager and Parameter Store stand-ins:
//! `POST /` with `Content-Type: application/x-amz-json-1.1` and
//! `X-Amz-Target: PREFIX.Operation`, SigV4-signed for the service's signing name; answers
//! are JSON objects, refusals `{"__type":"Code","message":"..."}` with AWS's HTTP status.
//!
//! A service implements [`JsonService`] (its names, its operations over parsed input);
//! [`serve`] runs it over HTTP with the shared request handling of
//! [`crate::http_service`]. Authentication failures get the JSON protocol's codes:
//!
//! | situation | HTTP | `__type` |
//! |---|---|---|
//! | no `Authorization` | 400 | `MissingAuthenticationTokenException` |
//! | malformed `Authorization` | 400 | `IncompleteSignatureException` |
//! | unknown access key, wrong session token | 400 | `UnrecognizedClientException` |
//! | expired session credentials | 400 | `ExpiredTokenException` |
//! | signature, scope or payload hash does not match | 400 | `InvalidSignatureException` |
//! | unknown `X-Amz-Target` | 400 | `UnknownOperationException` |
//! | body not a JSON object | 400 | `SerializationException` |

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::control::ServiceFault;
use crate::http_service::{fault_refuses, HttpAnswer, HttpServer};
use crate::iam::{Caller, Iam};
use crate::signed_request::{authenticate, AuthFailure, SignedRequest};

/// The protocol's content type.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A refusal: HTTP status, `__type` and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// HTTP status.
    pub status: u16,
    /// The error code (`__type`).
    pub code: &'static str,
    /// The message (may be empty: some AWS errors carry none).
    pub message: String,
}

impl JsonError {
    /// A refusal with status 400, the status of nearly every client error of the protocol.
    pub fn client(code: &'static str, message: impl Into<String>) -> JsonError {
        JsonError {
            status: 400,
            code,
            message: message.into(),
        }
    }

    /// The error document.
    pub fn body(&self) -> String {
        if self.message.is_empty() {
            json!({ "__type": self.code }).to_string()
        } else {
            json!({ "__type": self.code, "message": self.message }).to_string()
        }
    }

    fn answer(&self) -> HttpAnswer {
        HttpAnswer {
            status: self.status,
            content_type: CONTENT_TYPE,
            body: self.body(),
        }
    }
}

/// One service of the JSON protocol.
pub trait JsonService: Send + Sync + 'static {
    /// The name the service is known by in logs ("Secrets Manager").
    const NAME: &'static str;
    /// The SigV4 signing name (`secretsmanager`, `ssm`).
    const SIGNING_NAME: &'static str;
    /// The `X-Amz-Target` prefix before the dot (`secretsmanager`, `AmazonSSM`).
    const TARGET_PREFIX: &'static str;

    /// The identity store that authenticates callers.
    fn iam(&self) -> &Iam;

    /// Whether the service has `operation`.
    fn has_operation(&self, operation: &str) -> bool;

    /// Runs `operation` for an authenticated `caller` on its JSON input.
    fn call(
        &self,
        operation: &str,
        caller: &Caller,
        input: &Map<String, Value>,
        now: OffsetDateTime,
    ) -> Result<Value, JsonError>;

    /// The service's injected fault, if it has one.
    fn fault(&self) -> Option<watch::Receiver<ServiceFault>> {
        None
    }

    /// Called for each request of `operation` on arrival (before any fault).
    fn received(&self, _operation: &str) {}

    /// Called when `operation` was answered with success.
    fn succeeded(&self, _operation: &str) {}
}

/// The operation named by the request's `X-Amz-Target` for this service.
fn operation<S: JsonService>(req: &SignedRequest) -> Option<&str> {
    req.header("x-amz-target")?
        .strip_prefix(S::TARGET_PREFIX)?
        .strip_prefix('.')
}

/// Handles one request at time `now` (everything but faults).
pub fn handle<S: JsonService>(service: &S, req: &SignedRequest, now: OffsetDateTime) -> HttpAnswer {
    match dispatch(service, req, now) {
        Ok(value) => HttpAnswer {
            status: 200,
            content_type: CONTENT_TYPE,
            body: value.to_string(),
        },
        Err(e) => e.answer(),
    }
}

fn dispatch<S: JsonService>(
    service: &S,
    req: &SignedRequest,
    now: OffsetDateTime,
) -> Result<Value, JsonError> {
    let op = operation::<S>(req)
        .filter(|op| req.method == "POST" && service.has_operation(op))
        .ok_or_else(|| JsonError::client("UnknownOperationException", ""))?;
    let skew =
        time::Duration::seconds(i64::from(service.iam().config().sts.max_clock_skew_seconds));
    let caller =
        authenticate(service.iam(), req, S::SIGNING_NAME, now, skew).map_err(|failure| {
            let code = match &failure {
                AuthFailure::Missing => "MissingAuthenticationTokenException",
                AuthFailure::Incomplete(_) => "IncompleteSignatureException",
                AuthFailure::UnknownKey => "UnrecognizedClientException",
                AuthFailure::Expired => "ExpiredTokenException",
                AuthFailure::Signature(_) => "InvalidSignatureException",
            };
            JsonError::client(code, failure.message())
        })?;
    let input: Map<String, Value> = serde_json::from_slice(&req.body).map_err(|_| {
        JsonError::client(
            "SerializationException",
            "Start of structure or map found where not expected.",
        )
    })?;
    service.call(op, &caller, &input, now)
}

/// Serves `service` on `listen`.
pub async fn serve<S: JsonService>(
    service: Arc<S>,
    listen: SocketAddr,
) -> Result<HttpServer, crate::Error> {
    HttpServer::start(S::NAME, listen, move |req, _rid| {
        let service = Arc::clone(&service);
        async move {
            let op = operation::<S>(&req).map(str::to_string);
            if let Some(op) = &op {
                service.received(op);
            }
            if let Some(fault) = service.fault() {
                if fault_refuses(fault, S::NAME).await {
                    return JsonError {
                        status: 500,
                        code: "InternalServiceError",
                        message: "An error occurred on the server side.".into(),
                    }
                    .answer();
                }
            }
            let answer = handle(&*service, &req, OffsetDateTime::now_utc());
            if let (Some(op), 200) = (&op, answer.status) {
                service.succeeded(op);
            }
            answer
        }
    })
    .await
}

/// Input helpers: a string member, or a validation error naming it as AWS does.
pub fn string_member<'a>(
    input: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, JsonError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JsonError::client(
            "SerializationException",
            format!("STRING_VALUE can not be converted to {name}"),
        )),
    }
}

/// A required string member.
pub fn required_string<'a>(
    input: &'a Map<String, Value>,
    name: &str,
    exception: &'static str,
) -> Result<&'a str, JsonError> {
    string_member(input, name)?.ok_or_else(|| {
        let mut field = name.to_string();
        if let Some(first) = field.get_mut(..1) {
            first.make_ascii_lowercase();
        }
        JsonError::client(
            exception,
            format!("1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"),
        )
    })
}

/// Seconds since the epoch with fractions, as the JSON protocol writes timestamps.
pub fn epoch_seconds(t: OffsetDateTime) -> Value {
    json!(t.unix_timestamp_nanos() as f64 / 1e9)
}

/// Whether `caller` is one of `principals`: its own ARN, or for session credentials the
/// role they were issued for (a resource policy naming a role admits its sessions).
pub fn caller_is_one_of(caller: &Caller, principals: &[String]) -> bool {
    principals
        .iter()
        .any(|p| *p == caller.arn || caller.role_arn.as_deref() == Some(p.as_str()))
}
