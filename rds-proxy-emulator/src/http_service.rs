//! The HTTP/1 side of the AWS API stand-ins: a loopback listener, each request read into a
//! [`SignedRequest`] (body capped), the injected fault applied, the answer written with a
//! request id. STS, Secrets Manager and Parameter Store differ only in their handler.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accept::{accept_with_backoff, Backoff};
use crate::control::ServiceFault;
use crate::signed_request::SignedRequest;

/// Largest request body accepted (AWS API requests of these services are small).
const MAX_BODY: usize = 64 * 1024;

/// One answer: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

/// A running stand-in: stops when dropped or on [`HttpServer::stop`].
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `listen` and answers every request with `handler(request, request_id)`.
    /// `name` labels errors and logs.
    pub async fn start<H, F>(
        name: &'static str,
        listen: SocketAddr,
        handler: H,
    ) -> Result<HttpServer, crate::Error>
    where
        H: Fn(SignedRequest, String) -> F + Send + Sync + 'static,
        F: Future<Output = HttpAnswer> + Send + 'static,
    {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| crate::Error::io(format!("binding {name} on {listen}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| crate::Error::io(format!("{name} listener address"), e))?;
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new();
            loop {
                let (stream, _) =
                    accept_with_backoff(name, &mut backoff, || listener.accept()).await;
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let handler = Arc::clone(&handler);
                        async move { Ok::<_, Infallible>(serve_one(&*handler, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!("{name} connection: {e}");
                    }
                });
            }
        });
        Ok(HttpServer { addr, task })
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

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request id in AWS's shape (a UUID-like hex string).
pub(crate) fn request_id() -> String {
    let mut random = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut random).is_err() {
        // Request ids need to differ, not to be secret: the clock will do.
        let n = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        random.copy_from_slice(&n.to_be_bytes());
    }
    let h = hex::encode(random);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Applies the service's injected fault to one request: waits while it is
/// [`ServiceFault::Hang`] (forever if the stack goes away meanwhile), and says whether the
/// request must then be refused ([`ServiceFault::Refuse`], possibly set while it waited).
pub(crate) async fn fault_refuses(mut fault: watch::Receiver<ServiceFault>, service: &str) -> bool {
    if *fault.borrow_and_update() == ServiceFault::Hang {
        tracing::warn!("{service} fault: holding a request until the fault is cleared");
        if fault.wait_for(|f| *f != ServiceFault::Hang).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    let refuse = *fault.borrow() == ServiceFault::Refuse;
    if refuse {
        tracing::warn!("{service} fault: refusing a request as an overloaded service");
    }
    refuse
}

async fn serve_one<H, F>(handler: &H, req: Request<Incoming>) -> Response<Full<Bytes>>
where
    H: Fn(SignedRequest, String) -> F,
    F: Future<Output = HttpAnswer>,
{
    let rid = request_id();
    let (parts, body) = req.into_parts();
    let answer = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => {
            let headers = parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(value.as_bytes()).trim().to_string(),
                    )
                })
                .collect();
            let request = SignedRequest {
                method: parts.method.as_str().to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                headers,
                body: b.to_bytes().to_vec(),
            };
            handler(request, rid.clone()).await
        }
        Err(_) => HttpAnswer {
            status: 413,
            content_type: "text/plain",
            body: "request body too large".into(),
        },
    };
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(answer.content_type),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_uuid_shaped_and_differ() {
        let (a, b) = (super::request_id(), super::request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
