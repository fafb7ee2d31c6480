//! A logged-in session handed over as its TLS stream, for programs that speak PostgreSQL's
//! protocol themselves: a local auth proxy relays it to a client that brought no password.
//!
//! The login is the connector's (fresh token or stored password, verified TLS, one
//! deadline, a retry with refreshed credentials or a re-read password when the login is
//! refused); only the startup exchange is
//! done here rather than by tokio-postgres, which keeps the stream to itself. It stops at
//! the server's first `ReadyForQuery`: what the server said after `AuthenticationOk`
//! (`ParameterStatus`, `BackendKeyData`, notices, `ReadyForQuery`) is kept, byte for byte,
//! for the relay to hand to its client.

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::classify::{login_failure, login_reason};
use crate::error::{ConfigError, Error, Reason};
use crate::login::LoginPassword;
use crate::tls::TlsStream;

/// The key a server gives a session for cancelling its queries (`BackendKeyData`): a
/// `CancelRequest` sent on a new connection with this key interrupts the running query.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendKey {
    /// The server's process ID for the session (RDS Proxy gives its own).
    pub process_id: i32,
    /// The secret that proves the request comes from the session's client.
    pub secret_key: i32,
}

impl fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret lets anyone who has it cancel the session's queries: not for logs.
        f.debug_struct("BackendKey")
            .field("process_id", &self.process_id)
            .finish_non_exhaustive()
    }
}

impl BackendKey {
    /// The 16-byte `CancelRequest` packet for this key.
    pub fn cancel_request(&self) -> [u8; 16] {
        let mut packet = [0u8; 16];
        packet[0..4].copy_from_slice(&16u32.to_be_bytes());
        packet[4..8].copy_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        packet[8..12].copy_from_slice(&self.process_id.to_be_bytes());
        packet[12..16].copy_from_slice(&self.secret_key.to_be_bytes());
        packet
    }
}

/// `CancelRequest`'s code (1234 << 16 | 5678).
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// A session that has logged in, as its stream: see
/// [`Connector::connect_stream`](crate::Connector::connect_stream).
pub struct LoggedInStream {
    stream: TlsStream,
    greeting: Vec<u8>,
    backend_key: Option<BackendKey>,
}

impl fmt::Debug for LoggedInStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggedInStream")
            .field("greeting_bytes", &self.greeting.len())
            .field("backend_key", &self.backend_key)
            .finish_non_exhaustive()
    }
}

impl LoggedInStream {
    /// What the server sent after `AuthenticationOk`, up to and including its first
    /// `ReadyForQuery`, as raw protocol messages: send `AuthenticationOk` and these to a
    /// client and it is logged in.
    pub fn greeting(&self) -> &[u8] {
        &self.greeting
    }

    /// The session's cancel key, when the server sent one.
    pub fn backend_key(&self) -> Option<BackendKey> {
        self.backend_key
    }

    /// The stream, positioned after the greeting: the session is idle.
    pub fn into_stream(self) -> TlsStream {
        self.stream
    }
}

/// Startup parameters a caller may not set: the connector decides who logs in and with
/// what protocol.
const RESERVED_PARAMETERS: &[&str] = &["user", "replication"];

/// Checks the caller's extra startup parameters before any I/O.
pub(crate) fn check_parameters(parameters: &[(&str, &str)]) -> Result<(), Error> {
    for (name, value) in parameters {
        if RESERVED_PARAMETERS.contains(name) {
            return Err(ConfigError::invalid(
                "startup parameters",
                format!("`{name}` is set by the connector's configuration, not per session"),
            )
            .into());
        }
        if name.is_empty() || name.contains('\0') || value.contains('\0') {
            return Err(ConfigError::invalid(
                "startup parameters",
                format!("{name:?}: names must be non-empty; names and values may not contain NUL"),
            )
            .into());
        }
    }
    Ok(())
}

/// The startup message: the connector's user, then its settings (`database`,
/// `application_name`, `options`) unless `parameters` give them, then `parameters`.
fn startup_parameters<'a>(
    user: &'a str,
    defaults: &'a tokio_postgres::Config,
    parameters: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut startup = vec![("user", user)];
    let configured = [
        ("database", defaults.get_dbname()),
        ("application_name", defaults.get_application_name()),
        ("options", defaults.get_options()),
    ];
    for (name, value) in configured {
        if let Some(value) = value {
            if !parameters.iter().any(|(given, _)| *given == name) {
                startup.push((name, value));
            }
        }
    }
    startup.extend_from_slice(parameters);
    startup
}

/// The startup message ([`startup_parameters`]), the password as the server asks for it
/// (cleartext for an IAM token; a stored password also by SCRAM-SHA-256), and the greeting
/// up to `ReadyForQuery`.
pub(crate) async fn login(
    mut stream: TlsStream,
    host: &str,
    user: &str,
    defaults: &tokio_postgres::Config,
    parameters: &[(&str, &str)],
    password: &LoginPassword,
) -> Result<LoggedInStream, Error> {
    // A login that failed for no reason the classification knows.
    let failed = |message: &str| login_failure(user, host, Reason::LoginFailed, message, None);
    let io = |e: std::io::Error| failed(&e.to_string()).with_source(e);
    let startup = startup_parameters(user, defaults, parameters);
    let mut out = BytesMut::new();
    frontend::startup_message(startup.iter().copied(), &mut out).map_err(io)?;
    stream.write_all(&out).await.map_err(io)?;

    let mut input = BytesMut::with_capacity(1024);
    let mut greeting = Vec::new();
    let mut backend_key = None;
    let mut authenticated = false;
    let mut scram = None;
    loop {
        let raw = read_message(&mut stream, &mut input).await.map_err(io)?;
        let (tag, body) = (raw[0], &raw[5..]);
        match tag {
            b'R' => {
                let code = body
                    .get(0..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                out.clear();
                match code {
                    Some(0) => authenticated = true,
                    Some(3) if !authenticated => {
                        frontend::password_message(password.as_str().as_bytes(), &mut out)
                            .map_err(io)?;
                    }
                    Some(10) if !authenticated && !password.is_token() => {
                        let offered = body[4..]
                            .split(|b| *b == 0)
                            .any(|m| m == SCRAM_SHA_256.as_bytes());
                        if !offered {
                            let message = "the server offered no SASL mechanism this client speaks (SCRAM-SHA-256)";
                            return Err(failed(message));
                        }
                        let exchange = ScramSha256::new(
                            password.as_str().as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(
                            SCRAM_SHA_256,
                            exchange.message(),
                            &mut out,
                        )
                        .map_err(io)?;
                        scram = Some(exchange);
                    }
                    Some(11) if !authenticated => {
                        let Some(exchange) = scram.as_mut() else {
                            return Err(failed("SASLContinue without a SASL exchange"));
                        };
                        exchange.update(&body[4..]).map_err(io)?;
                        frontend::sasl_response(exchange.message(), &mut out).map_err(io)?;
                    }
                    Some(12) if !authenticated => {
                        let Some(mut exchange) = scram.take() else {
                            return Err(failed("SASLFinal without a SASL exchange"));
                        };
                        // Verifies the server's signature: it knew the password too.
                        exchange.finish(&body[4..]).map_err(io)?;
                    }
                    _ => {
                        let message = if password.is_token() {
                            format!(
                                "the server asked for {}; an IAM token is sent as the cleartext password, over TLS",
                                auth_method(code)
                            )
                        } else {
                            format!(
                                "the server asked for {}; a stored password is sent by SCRAM-SHA-256 or as the cleartext password, over TLS",
                                auth_method(code)
                            )
                        };
                        return Err(failed(&message));
                    }
                }
                if !out.is_empty() {
                    stream.write_all(&out).await.map_err(io)?;
                }
            }
            b'E' => {
                let fields = error_fields(body);
                let text = fields.message.unwrap_or("(no message)");
                let message = format!(
                    "{} {}: {text}",
                    fields.severity.unwrap_or("ERROR"),
                    fields.code.unwrap_or("?????")
                );
                let reason = login_reason(text, fields.code);
                let code = fields.code.map(str::to_owned);
                return Err(login_failure(user, host, reason, &message, code));
            }
            _ if !authenticated => {
                let message = format!(
                    "unexpected message {:?} before authentication ended",
                    char::from(tag)
                );
                return Err(failed(&message));
            }
            b'K' if body.len() == 8 => {
                backend_key = Some(BackendKey {
                    process_id: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    secret_key: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                });
                greeting.extend_from_slice(&raw);
            }
            b'Z' => {
                greeting.extend_from_slice(&raw);
                if !input.is_empty() {
                    // Nothing may follow ReadyForQuery before the client speaks.
                    let message = "the server sent data after ReadyForQuery";
                    return Err(failed(message));
                }
                return Ok(LoggedInStream {
                    stream,
                    greeting,
                    backend_key,
                });
            }
            _ => greeting.extend_from_slice(&raw),
        }
    }
}

/// The largest message accepted during the login (PostgreSQL's own limit for startup
/// packets is 10,000 bytes; parameter values and error texts stay far below this).
const MAX_LOGIN_MESSAGE: usize = 64 * 1024;

/// One backend message, raw (tag and length included: the body starts at byte 5).
async fn read_message(stream: &mut TlsStream, input: &mut BytesMut) -> std::io::Result<Vec<u8>> {
    use std::io::{Error as IoError, ErrorKind};
    loop {
        if input.len() >= 5 {
            let len = u32::from_be_bytes([input[1], input[2], input[3], input[4]]) as usize;
            if !(4..=MAX_LOGIN_MESSAGE).contains(&len) {
                return Err(IoError::new(
                    ErrorKind::InvalidData,
                    format!("not a PostgreSQL server: message length {len}"),
                ));
            }
            if input.len() > len {
                return Ok(input.split_to(len + 1).to_vec());
            }
        }
        if stream.read_buf(input).await? == 0 {
            return Err(IoError::new(
                ErrorKind::UnexpectedEof,
                "the server closed the connection during the login",
            ));
        }
    }
}

/// The fields of an `ErrorResponse` the classification needs.
struct ErrorFields<'a> {
    severity: Option<&'a str>,
    code: Option<&'a str>,
    message: Option<&'a str>,
}

fn error_fields(body: &[u8]) -> ErrorFields<'_> {
    let mut fields = ErrorFields {
        severity: None,
        code: None,
        message: None,
    };
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = std::str::from_utf8(&tail[..end]).ok();
        match kind {
            // V: the severity that is never localised (protocol 3.0, PostgreSQL 9.6+).
            b'V' => fields.severity = value.or(fields.severity),
            b'S' if fields.severity.is_none() => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    fields
}

fn auth_method(code: Option<u32>) -> String {
    match code {
        Some(5) => "an MD5 password".to_owned(),
        Some(10) => "SASL (SCRAM)".to_owned(),
        Some(7 | 8) => "GSSAPI".to_owned(),
        Some(9) => "SSPI".to_owned(),
        Some(3) => "a second password".to_owned(),
        Some(other) => format!("authentication method {other}"),
        None => "an unreadable authentication request".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_are_read_from_an_error_response() {
        let body = b"SFATAL\0VFATAL\0C28P01\0MIAM authentication failed\0\0";
        let fields = error_fields(body);
        assert_eq!(fields.severity, Some("FATAL"));
        assert_eq!(fields.code, Some("28P01"));
        assert_eq!(fields.message, Some("IAM authentication failed"));
        let truncated = error_fields(b"C28P0");
        assert_eq!(truncated.code, Some("28P0"));
        assert_eq!(error_fields(b"").message, None);
    }

    #[test]
    fn reserved_and_malformed_parameters_are_refused() {
        assert!(check_parameters(&[("application_name", "x"), ("database", "d")]).is_ok());
        let user = check_parameters(&[("user", "other")]).unwrap_err();
        assert_eq!(user.reason(), Reason::InvalidConfig);
        assert!(user.to_string().contains("`user` is set by the connector"));
        assert!(check_parameters(&[("replication", "true")]).is_err());
        assert!(check_parameters(&[("", "x")]).is_err());
        assert!(check_parameters(&[("options", "a\0b")]).is_err());
    }

    #[test]
    fn configured_settings_are_defaults_the_caller_may_replace() {
        let mut defaults = tokio_postgres::Config::new();
        defaults.dbname("orders").application_name("svc");
        let given = [("database", "other"), ("TimeZone", "UTC")];
        assert_eq!(
            startup_parameters("app", &defaults, &given),
            [
                ("user", "app"),
                ("application_name", "svc"),
                ("database", "other"),
                ("TimeZone", "UTC")
            ]
        );
        assert_eq!(
            startup_parameters("app", &defaults, &[]),
            [
                ("user", "app"),
                ("database", "orders"),
                ("application_name", "svc")
            ]
        );
    }

    #[test]
    fn the_cancel_request_packet_is_postgresqls() {
        let key = BackendKey {
            process_id: 4242,
            secret_key: -7,
        };
        let p = key.cancel_request();
        assert_eq!(&p[0..8], &[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e]);
        assert_eq!(i32::from_be_bytes([p[8], p[9], p[10], p[11]]), 4242);
        assert_eq!(i32::from_be_bytes([p[12], p[13], p[14], p[15]]), -7);
        assert!(!format!("{key:?}").contains("-7"));
    }
}
