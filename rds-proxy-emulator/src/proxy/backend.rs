//! The backend side of a session: picking a server and logging in to it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::wire::{message, read_message, ConnError, PROTOCOL_3};
use crate::cluster::Topology;
use crate::config::TargetRole;

/// A server for `role` in `topology` (readers taken round robin by `next_reader`), waiting
/// up to `limit` for one to be available.
pub(super) async fn pick_server(
    topology: &watch::Receiver<Topology>,
    next_reader: &AtomicUsize,
    role: TargetRole,
    limit: Duration,
) -> Option<SocketAddr> {
    let pick = |t: &Topology, n: usize| match role {
        TargetRole::ReadWrite => t.writer,
        TargetRole::ReadOnly if t.readers.is_empty() => None,
        TargetRole::ReadOnly => Some(t.readers[n % t.readers.len()]),
    };
    let n = next_reader.fetch_add(1, Ordering::Relaxed);
    let mut rx = topology.clone();
    let ready = tokio::time::timeout(limit, rx.wait_for(|t| pick(t, n).is_some())).await;
    match ready {
        Ok(Ok(t)) => pick(&t, n),
        _ => None,
    }
}

/// How a backend login ended.
pub(super) enum BackendLogin {
    /// Authenticated: the session is ready.
    Ready(TcpStream),
    /// PostgreSQL refused the session: its `ErrorResponse`, to pass on.
    Refused(Vec<u8>),
}

/// Opens a session on `addr` as `user` with the proxy's secret `password` (SCRAM-SHA-256,
/// MD5 or cleartext, as the server asks), forwarding the client's startup `params`.
pub(super) async fn backend_login(
    addr: SocketAddr,
    user: &str,
    database: &str,
    password: &str,
    params: &[(String, String)],
) -> Result<BackendLogin, ConnError> {
    let mut s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)]
        .into_iter()
        .chain(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    s.write_all(&startup).await?;

    let mut scram: Option<ScramSha256> = None;
    loop {
        let (tag, body) = read_message(&mut s).await?;
        match tag {
            b'E' => return Ok(BackendLogin::Refused(message(b'E', &body))),
            b'R' if body.len() >= 4 => {
                let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let data = &body[4..];
                match code {
                    0 => return Ok(BackendLogin::Ready(s)),
                    3 => {
                        let mut p = password.as_bytes().to_vec();
                        p.push(0);
                        s.write_all(&message(b'p', &p)).await?;
                    }
                    5 if data.len() >= 4 => {
                        let hash = postgres_protocol::authentication::md5_hash(
                            user.as_bytes(),
                            password.as_bytes(),
                            [data[0], data[1], data[2], data[3]],
                        );
                        let mut p = hash.into_bytes();
                        p.push(0);
                        s.write_all(&message(b'p', &p)).await?;
                    }
                    10 => {
                        let mechanisms: Vec<&[u8]> = data.split(|b| *b == 0).collect();
                        if !mechanisms.iter().any(|m| *m == b"SCRAM-SHA-256") {
                            return Err(ConnError::Protocol(
                                "backend offers no SCRAM-SHA-256".into(),
                            ));
                        }
                        let sc =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        let first = sc.message().to_vec();
                        let mut p = b"SCRAM-SHA-256\0".to_vec();
                        p.extend_from_slice(&(first.len() as u32).to_be_bytes());
                        p.extend_from_slice(&first);
                        s.write_all(&message(b'p', &p)).await?;
                        scram = Some(sc);
                    }
                    11 => {
                        let sc = scram.as_mut().ok_or_else(|| {
                            ConnError::Protocol("SASLContinue before SASL".into())
                        })?;
                        sc.update(data)?;
                        let m = sc.message().to_vec();
                        s.write_all(&message(b'p', &m)).await?;
                    }
                    12 => {
                        let sc = scram
                            .as_mut()
                            .ok_or_else(|| ConnError::Protocol("SASLFinal before SASL".into()))?;
                        sc.finish(data)?;
                    }
                    other => {
                        return Err(ConnError::Protocol(format!(
                            "unsupported backend auth request {other}"
                        )))
                    }
                }
            }
            b'N' => {} // NoticeResponse during startup: ignore.
            other => {
                return Err(ConnError::Protocol(format!(
                    "unexpected backend message {:?} during login",
                    char::from(other)
                )))
            }
        }
    }
}
