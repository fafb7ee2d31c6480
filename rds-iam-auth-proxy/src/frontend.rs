//! The client's side of PostgreSQL's protocol, up to the point where the upstream session
//! takes over: the startup packet, the answer to a TLS request, the checks on the user and
//! the startup parameters, and the error a refused client reads.
//!
//! The local side has no TLS (the traffic stays on the machine, or in a directory only the
//! owner can open): an `SSLRequest` is answered `N`, as a PostgreSQL server without TLS
//! answers it, so `sslmode=prefer` (libpq's default) goes on in the clear and
//! `sslmode=require` gets libpq's own "server does not support SSL" error.

use rds_iam_auth::BackendKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u32 = 196_608;
/// PostgreSQL's own limit for a startup packet.
const MAX_STARTUP: usize = 10_000;

/// SQLSTATEs the proxy answers with itself.
pub(crate) mod sqlstate {
    /// invalid_authorization_specification: the wrong user.
    pub(crate) const AUTH_SPEC: &str = "28000";
    /// invalid_password: a wrong local password, or the IAM login refused upstream.
    pub(crate) const INVALID_PASSWORD: &str = "28P01";
    /// feature_not_supported: a protocol or option RDS Proxy does not take.
    pub(crate) const FEATURE: &str = "0A000";
    /// too_many_connections.
    pub(crate) const TOO_MANY: &str = "53300";
    /// sqlclient_unable_to_establish_sqlconnection: the upstream session could not be
    /// opened (credentials, network, TLS).
    pub(crate) const CANNOT_CONNECT: &str = "08001";
    /// protocol_violation.
    pub(crate) const PROTOCOL: &str = "08P01";
}

/// Startup parameters RDS Proxy accepts from a client (its "Troubleshooting for RDS Proxy"
/// page lists the refusal for any other): passed on. `user` is checked here.
pub(crate) const ACCEPTED_PARAMETERS: &[&str] = &[
    "database",
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
    "search_path",
];

/// RDS Proxy's refusal of a startup parameter it does not take, word for word, so that a
/// client sees here what it would see there.
pub(crate) fn option_refused(option: &str) -> String {
    format!("Feature not supported: RDS Proxy currently doesn't support the option {option}.")
}

/// What a client's first packet asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Opening {
    /// A session: the startup parameters, in the client's order.
    Startup(Vec<(String, String)>),
    /// Cancel the query of the session with this key.
    Cancel(BackendKey),
}

/// Why a client's opening could not be read.
#[derive(Debug)]
pub(crate) enum OpeningError {
    /// The connection closed or failed (nothing to answer).
    Io(std::io::Error),
    /// Not a startup the proxy serves: a FATAL with this SQLSTATE and text is owed.
    Refused(&'static str, String),
}

impl From<std::io::Error> for OpeningError {
    fn from(e: std::io::Error) -> Self {
        OpeningError::Io(e)
    }
}

/// Reads the client's opening: answers TLS and GSS encryption requests with `N`, then
/// returns the startup parameters or the cancel key.
pub(crate) async fn read_opening<S>(stream: &mut S) -> Result<Opening, OpeningError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A client asks for TLS and for GSS encryption at most once each.
    for _ in 0..3 {
        let packet = read_packet(stream).await?;
        match parse_opening(&packet)? {
            Parsed::Opening(opening) => return Ok(opening),
            Parsed::EncryptionRequest => stream.write_all(b"N").await?,
        }
    }
    Err(OpeningError::Refused(
        sqlstate::PROTOCOL,
        "too many encryption requests".to_owned(),
    ))
}

/// One startup-phase packet (length-prefixed, no tag), without its length.
async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, OpeningError> {
    let len = stream.read_u32().await? as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(OpeningError::Refused(
            sqlstate::PROTOCOL,
            format!("invalid startup packet length {len}"),
        ));
    }
    let mut packet = vec![0u8; len - 4];
    stream.read_exact(&mut packet).await?;
    Ok(packet)
}

enum Parsed {
    Opening(Opening),
    EncryptionRequest,
}

/// A startup-phase packet (after its length).
fn parse_opening(packet: &[u8]) -> Result<Parsed, OpeningError> {
    let refused = |state, text: &str| OpeningError::Refused(state, text.to_owned());
    let Some((code, body)) = packet.split_first_chunk::<4>() else {
        return Err(refused(sqlstate::PROTOCOL, "startup packet too short"));
    };
    match u32::from_be_bytes(*code) {
        SSL_REQUEST | GSSENC_REQUEST if body.is_empty() => Ok(Parsed::EncryptionRequest),
        CANCEL_REQUEST => match body {
            [a, b, c, d, e, f, g, h] => Ok(Parsed::Opening(Opening::Cancel(BackendKey {
                process_id: i32::from_be_bytes([*a, *b, *c, *d]),
                secret_key: i32::from_be_bytes([*e, *f, *g, *h]),
            }))),
            _ => Err(refused(sqlstate::PROTOCOL, "malformed cancel request")),
        },
        PROTOCOL_3 => parse_parameters(body).map(|p| Parsed::Opening(Opening::Startup(p))),
        other => Err(OpeningError::Refused(
            sqlstate::FEATURE,
            format!(
                "unsupported frontend protocol {}.{}: this proxy (and RDS Proxy) speaks 3.0",
                other >> 16,
                other & 0xffff
            ),
        )),
    }
}

/// `name\0value\0...\0`: the parameters of a 3.0 startup packet.
fn parse_parameters(body: &[u8]) -> Result<Vec<(String, String)>, OpeningError> {
    let malformed = || {
        OpeningError::Refused(
            sqlstate::PROTOCOL,
            "malformed startup packet: parameters must be NUL-terminated UTF-8 pairs".to_owned(),
        )
    };
    let Some((&0, pairs)) = body.split_last() else {
        return Err(malformed());
    };
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let fields: Vec<&[u8]> = pairs
        .strip_suffix(b"\0")
        .ok_or_else(malformed)?
        .split(|&b| b == 0)
        .collect();
    if !fields.len().is_multiple_of(2) {
        return Err(malformed());
    }
    fields
        .chunks(2)
        .map(|pair| {
            let name = std::str::from_utf8(pair[0]).map_err(|_| malformed())?;
            let value = std::str::from_utf8(pair[1]).map_err(|_| malformed())?;
            if name.is_empty() {
                return Err(malformed());
            }
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The startup parameters to send upstream, or the refusal a client is owed: the user
/// must be the target's database user (or absent), and every other parameter one RDS
/// Proxy accepts. An empty `database` is left out (the configured one is used).
pub(crate) fn upstream_parameters<'a>(
    parameters: &'a [(String, String)],
    db_user: &str,
) -> Result<Vec<(&'a str, &'a str)>, (&'static str, String)> {
    let mut upstream = Vec::with_capacity(parameters.len());
    for (name, value) in parameters {
        match name.as_str() {
            "user" if value == db_user || value.is_empty() => {}
            "user" => {
                return Err((
                    sqlstate::AUTH_SPEC,
                    format!(
                        "this listener serves the database user \"{db_user}\", not \"{value}\": connect as {db_user} (with no password)"
                    ),
                ))
            }
            "database" if value.is_empty() => {}
            _ if ACCEPTED_PARAMETERS.contains(&name.as_str()) => {
                upstream.push((name.as_str(), value.as_str()))
            }
            _ => return Err((sqlstate::FEATURE, option_refused(name))),
        }
    }
    Ok(upstream)
}

/// The largest message a client may send before its session is open (a SASL message;
/// PostgreSQL allows a few kilobytes).
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// One tagged message from the client during authentication: (tag, body).
pub(crate) async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(u8, Vec<u8>), OpeningError> {
    let tag = stream.read_u8().await?;
    let len = stream.read_u32().await? as usize;
    if !(4..=MAX_AUTH_MESSAGE).contains(&len) {
        return Err(OpeningError::Refused(
            sqlstate::PROTOCOL,
            format!("invalid message length {len} during authentication"),
        ));
    }
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// An `Authentication*` request: code, then data.
pub(crate) fn authentication(code: u32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    message(b'R', &body)
}

/// A protocol message: tag, length, body.
pub(crate) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// `AuthenticationOk`.
pub(crate) const AUTHENTICATION_OK: [u8; 9] = [b'R', 0, 0, 0, 8, 0, 0, 0, 0];

/// An `ErrorResponse` with severity FATAL: what libpq prints as `FATAL:  message`.
pub(crate) fn fatal(sqlstate: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(text.len() + 32);
    for (kind, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', text),
    ] {
        body.push(kind);
        // A NUL inside a field would end it early: such texts never come from here, but an
        // upstream error text is quoted as given.
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    message(b'E', &body)
}

/// Sends a FATAL error and ends the connection (errors writing it are of no use: the
/// client is going away either way).
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, sqlstate: &str, text: &str) {
    let _ = stream.write_all(&fatal(sqlstate, text)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = PROTOCOL_3.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        body
    }

    fn opening(packet: &[u8]) -> Result<Opening, String> {
        match parse_opening(packet) {
            Ok(Parsed::Opening(o)) => Ok(o),
            Ok(Parsed::EncryptionRequest) => Err("encryption request".into()),
            Err(OpeningError::Refused(state, text)) => Err(format!("{state} {text}")),
            Err(OpeningError::Io(e)) => Err(e.to_string()),
        }
    }

    #[test]
    fn startup_parameters_are_read_in_order() {
        let got = opening(&startup(&[("user", "app"), ("database", "db")])).unwrap();
        assert_eq!(
            got,
            Opening::Startup(vec![
                ("user".into(), "app".into()),
                ("database".into(), "db".into())
            ])
        );
        assert_eq!(opening(&startup(&[])).unwrap(), Opening::Startup(vec![]));
    }

    #[test]
    fn cancel_and_encryption_requests_are_recognised() {
        let mut cancel = CANCEL_REQUEST.to_be_bytes().to_vec();
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&(-9i32).to_be_bytes());
        assert_eq!(
            opening(&cancel).unwrap(),
            Opening::Cancel(BackendKey {
                process_id: 7,
                secret_key: -9
            })
        );
        assert_eq!(
            opening(&SSL_REQUEST.to_be_bytes()).unwrap_err(),
            "encryption request"
        );
        assert_eq!(
            opening(&GSSENC_REQUEST.to_be_bytes()).unwrap_err(),
            "encryption request"
        );
    }

    #[test]
    fn malformed_openings_are_refused_not_panicked_on() {
        for bad in [
            &b""[..],
            &[0, 3, 0][..],
            &[0, 3, 0, 0, b'u', 0][..],          // no final NUL pair end
            &[0, 3, 0, 0, b'u', 0, b'x', 0][..], // missing terminator
            &[0, 3, 0, 0, 0, b'x', 0, 0][..],    // empty name
            &[0, 3, 0, 0, b'u', 0, 0][..],       // odd fields
            &[0, 2, 0, 0, 0][..],                // protocol 2
            &[4, 0xd2, 0x16, 0x2e, 1, 2][..],    // short cancel
        ] {
            assert!(opening(bad).is_err(), "{bad:?}");
        }
        assert!(opening(&[0, 2, 0, 0, 0]).unwrap_err().starts_with("0A000"));
    }

    #[test]
    fn the_user_must_be_the_targets_and_options_are_rds_proxys() {
        let p = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let ok = p(&[("user", "app"), ("database", ""), ("TimeZone", "UTC")]);
        assert_eq!(
            upstream_parameters(&ok, "app").unwrap(),
            [("TimeZone", "UTC")]
        );
        let other = upstream_parameters(&p(&[("user", "root")]), "app").unwrap_err();
        assert_eq!(other.0, "28000");
        assert!(other.1.contains("\"app\", not \"root\""), "{}", other.1);
        let option = upstream_parameters(&p(&[("options", "-c x=1")]), "app").unwrap_err();
        assert_eq!(
            option,
            (
                "0A000",
                "Feature not supported: RDS Proxy currently doesn't support the option options."
                    .to_owned()
            )
        );
        let replication = upstream_parameters(&p(&[("replication", "true")]), "app").unwrap_err();
        assert_eq!(replication.0, "0A000");
    }

    #[test]
    fn a_fatal_is_an_error_response() {
        let m = fatal("28000", "no");
        assert_eq!(m[0], b'E');
        assert_eq!(
            u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize,
            m.len() - 1
        );
        assert!(m.ends_with(b"Mno\0\0"));
    }
}
