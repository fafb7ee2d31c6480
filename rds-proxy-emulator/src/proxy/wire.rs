//! The startup codec and message framing of the PostgreSQL wire protocol, as the proxy reads
//! and writes it.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::scram::{ScramError, ScramKeys, ScramServer, MECHANISM};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol version 3.0, as a `StartupMessage` carries it.
pub(super) const PROTOCOL_3: u32 = 196_608;
const MAX_STARTUP: usize = 10_000;
const MAX_PASSWORD: usize = 16_384;

/// A startup-phase packet, as the proxy reads it from an untrusted client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// `SSLRequest`.
    Ssl,
    /// `GSSENCRequest`.
    GssEnc,
    /// `CancelRequest` (the whole packet, to forward).
    Cancel(Vec<u8>),
    /// A protocol 3.0 `StartupMessage` and its parameters.
    V3(Vec<(String, String)>),
    /// Another protocol version.
    Other(u32),
}

/// Why a connection ended during login: the peer's I/O, or what it sent.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Reads one startup-phase packet (at most `MAX_STARTUP` bytes).
pub(super) async fn read_startup<S: AsyncRead + Unpin>(s: &mut S) -> Result<Startup, ConnError> {
    let len = s.read_u32().await? as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(ConnError::Protocol(format!("startup packet length {len}")));
    }
    let mut packet = vec![0u8; len];
    packet[..4].copy_from_slice(&(len as u32).to_be_bytes());
    s.read_exact(&mut packet[4..]).await?;
    parse_startup_packet(&packet).map_err(ConnError::Protocol)
}

/// Parses one startup-phase packet (length prefix included), as sent by a client.
///
/// ```
/// use rds_proxy_emulator::proxy::{parse_startup_packet, Startup};
/// assert!(parse_startup_packet(&[0, 0, 0, 8, 4, 210, 22, 47]) == Ok(Startup::Ssl));
/// assert!(parse_startup_packet(&[0, 0, 0, 9, 0, 3, 0, 0, b'x']).is_err());
/// let v3 = parse_startup_packet(&[0, 0, 0, 15, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'a', 0]);
/// assert!(v3.is_err()); // no terminating NUL after the parameters
/// let v3 = parse_startup_packet(&[0, 0, 0, 16, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'a', 0, 0]);
/// assert!(v3 == Ok(Startup::V3(vec![("user".into(), "a".into())])));
/// ```
pub fn parse_startup_packet(packet: &[u8]) -> Result<Startup, String> {
    if packet.len() < 8 || packet.len() > MAX_STARTUP {
        return Err(format!("startup packet of {} bytes", packet.len()));
    }
    let len = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]) as usize;
    if len != packet.len() {
        return Err(format!(
            "startup packet length {len}, {} bytes given",
            packet.len()
        ));
    }
    let body = &packet[4..];
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    Ok(match code {
        SSL_REQUEST => Startup::Ssl,
        GSSENC_REQUEST => Startup::GssEnc,
        CANCEL_REQUEST => Startup::Cancel(packet.to_vec()),
        PROTOCOL_3 => {
            // key\0value\0 ... \0: NUL-terminated strings, an empty key ends the list.
            let mut params = Vec::new();
            let mut rest = &body[4..];
            let next = |rest: &mut &[u8]| -> Result<String, String> {
                let end = rest
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(|| "unterminated startup packet".to_string())?;
                let field = String::from_utf8_lossy(&rest[..end]).into_owned();
                *rest = &rest[end + 1..];
                Ok(field)
            };
            loop {
                let k = next(&mut rest)?;
                if k.is_empty() {
                    if !rest.is_empty() {
                        return Err("data after the end of the startup parameters".into());
                    }
                    break;
                }
                let v = next(&mut rest)?;
                params.push((k, v));
            }
            Startup::V3(params)
        }
        other => Startup::Other(other),
    })
}

/// An `ErrorResponse` with severity FATAL.
pub fn fatal_message(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(tag);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Asks for the password (`AuthenticationCleartextPassword`) and reads the client's
/// `PasswordMessage` (at most `MAX_PASSWORD` bytes), without its terminating NUL.
pub(super) async fn ask_password<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<String, ConnError> {
    // AuthenticationCleartextPassword.
    s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    s.flush().await?;
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    if tag != b'p' || !(5..=MAX_PASSWORD).contains(&len) {
        return Err(ConnError::Protocol(format!(
            "expected a password message, got {:?} ({len} bytes)",
            char::from(tag)
        )));
    }
    let mut password = vec![0u8; len - 4];
    s.read_exact(&mut password).await?;
    if password.last() == Some(&0) {
        password.pop();
    }
    Ok(String::from_utf8_lossy(&password).into_owned())
}

/// Reads one `p` message (PasswordMessage, SASLInitialResponse, SASLResponse: the tag is
/// shared) of at most `MAX_PASSWORD` bytes and returns its body.
async fn read_password_message<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, ConnError> {
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    if tag != b'p' || !(4..=MAX_PASSWORD).contains(&len) {
        return Err(ConnError::Protocol(format!(
            "expected a SASL response, got {:?} ({len} bytes)",
            char::from(tag)
        )));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// An `AuthenticationSASL*` message: its code and data.
fn authentication(code: u32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    message(b'R', &body)
}

/// Runs the SASL exchange of a SCRAM-SHA-256 login with `keys` (AuthenticationSASL,
/// SASLInitialResponse, AuthenticationSASLContinue, SASLResponse,
/// AuthenticationSASLFinal); the caller sends AuthenticationOk or the refusal. The outer
/// error is the connection's; the inner one is a failed authentication.
pub(super) async fn sasl_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    keys: ScramKeys,
) -> Result<Result<(), ScramError>, ConnError> {
    let mut offer = MECHANISM.as_bytes().to_vec();
    offer.extend_from_slice(&[0, 0]);
    s.write_all(&authentication(10, &offer)).await?;
    s.flush().await?;
    let initial = read_password_message(s).await?;
    // SASLInitialResponse: mechanism (C string), length of the data (-1: none), data.
    let Some(nul) = initial.iter().position(|b| *b == 0) else {
        return Ok(Err(ScramError::Protocol("no mechanism")));
    };
    if &initial[..nul] != MECHANISM.as_bytes() {
        return Ok(Err(ScramError::Protocol("mechanism not offered")));
    }
    let Some(data) = initial.get(nul + 5..) else {
        return Ok(Err(ScramError::Protocol("no client-first message")));
    };
    let (server, server_first) = match ScramServer::start(keys, data) {
        Ok(started) => started,
        Err(e) => return Ok(Err(e)),
    };
    s.write_all(&authentication(11, server_first.as_bytes()))
        .await?;
    s.flush().await?;
    let client_final = read_password_message(s).await?;
    match server.finish(&client_final) {
        Ok(server_final) => {
            s.write_all(&authentication(12, server_final.as_bytes()))
                .await?;
            Ok(Ok(()))
        }
        Err(e) => Ok(Err(e)),
    }
}

/// A tagged message: the tag, the length, the body.
pub(super) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}
