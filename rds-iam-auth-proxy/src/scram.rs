//! The optional client password of the local listeners, checked with SCRAM-SHA-256
//! (RFC 5802, RFC 7677) as a PostgreSQL server checks it.
//!
//! On a shared host the operator may require a password from local clients. The proxy
//! then plays PostgreSQL's part of the SASL exchange:
//!
//! 1. AuthenticationSASL, offering `SCRAM-SHA-256` only: the local side has no TLS, so
//!    there is no channel to bind (`SCRAM-SHA-256-PLUS`);
//! 2. SASLInitialResponse (client-first) → [`ScramExchange::client_first`] →
//!    AuthenticationSASLContinue (server-first);
//! 3. SASLResponse (client-final) → [`ScramExchange::client_final`] →
//!    AuthenticationSASLFinal (server-final, which proves to the client that the proxy knows
//!    the password too), then AuthenticationOk.
//!
//! This module is the state machine over the messages' bodies; the caller does the
//! framing and sends the errors ([`ScramError::sqlstate`], [`ScramError::message`]).
//!
//! The password is normalised with SASLprep (RFC 4013) like PostgreSQL and libpq do; a
//! password that SASLprep rejects (prohibited or unassigned characters) is used as its raw
//! UTF-8 bytes, which is also what both of them do, so every client computes the same key.
//! Only the derived keys are kept, never the password.
// used by the session and listener modules, written alongside

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The one mechanism offered (the AuthenticationSASL list).
pub(crate) const MECHANISM: &str = "SCRAM-SHA-256";

/// PBKDF2 rounds: PostgreSQL's default (`scram_iterations`), which every client accepts.
const ITERATIONS: u32 = 4096;
/// Salt length in bytes, as PostgreSQL generates them.
const SALT_LEN: usize = 16;
/// Random bytes in the server's part of the nonce, as PostgreSQL generates them.
const NONCE_LEN: usize = 18;
/// The base64 of the two GS2 headers without channel binding that the client-final's
/// `c=` must repeat: `n,,` (client does not support channel binding) and `y,,` (it does,
/// but believes the server does not).
const CBIND_N: &str = "biws";
const CBIND_Y: &str = "eSws";

type HmacSha256 = Hmac<Sha256>;

/// The keys a password yields, from which any number of exchanges are verified.
///
/// Computed once at start (4096 rounds of PBKDF2): each client then costs two HMACs and a
/// hash. `Debug` shows nothing secret.
#[derive(Clone)]
pub(crate) struct ScramVerifier {
    keys: Arc<Keys>,
}

struct Keys {
    salt_b64: String,
    iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    server_key: [u8; 32],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.keys.iterations)
            .finish_non_exhaustive()
    }
}

/// Why an exchange failed: what the caller reports to the client (and counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScramError {
    /// The client chose a mechanism that was not offered.
    Mechanism(String),
    /// The client asked for channel binding (`p=` in the GS2 header), which was not offered.
    ChannelBinding,
    /// A message that does not follow RFC 5802: what was wrong.
    Malformed(&'static str),
    /// The client-final's nonce is not the one this exchange agreed on.
    NonceMismatch,
    /// A message arrived out of order, or after the exchange ended.
    OutOfOrder,
    /// The proof does not match the password.
    WrongPassword,
    /// The system's random number generator failed (no nonce or salt could be drawn).
    Random(String),
}

impl ScramError {
    /// The SQLSTATE of the FATAL error the caller sends: `28P01` (invalid_password) for a
    /// wrong password, `08P01` (protocol_violation) for a broken exchange, `XX000` when
    /// this side failed.
    pub(crate) fn sqlstate(&self) -> &'static str {
        match self {
            ScramError::WrongPassword => "28P01",
            ScramError::Random(_) => "XX000",
            _ => "08P01",
        }
    }

    /// The error message for the client, as PostgreSQL words it (`password authentication
    /// failed for user "x"` for a wrong password).
    pub(crate) fn message(&self, user: &str) -> String {
        match self {
            ScramError::WrongPassword => {
                format!("password authentication failed for user \"{user}\"")
            }
            other => other.to_string(),
        }
    }

    /// Whether the client gave a wrong password (rather than breaking the protocol).
    pub(crate) fn is_wrong_password(&self) -> bool {
        matches!(self, ScramError::WrongPassword)
    }
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Mechanism(name) => write!(
                f,
                "client selected an invalid SASL authentication mechanism ({name:?})"
            ),
            ScramError::ChannelBinding => f.write_str(
                "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM \
                 message includes channel binding data.",
            ),
            ScramError::Malformed(what) => write!(f, "malformed SCRAM message: {what}"),
            ScramError::NonceMismatch => {
                f.write_str("invalid SCRAM response: nonce does not match")
            }
            ScramError::OutOfOrder => f.write_str("unexpected SCRAM message"),
            ScramError::WrongPassword => f.write_str("password authentication failed"),
            ScramError::Random(e) => write!(f, "could not generate random SCRAM data: {e}"),
        }
    }
}

impl std::error::Error for ScramError {}

impl ScramVerifier {
    /// Derives the keys of `password` with a fresh random salt.
    pub(crate) fn new(password: &str) -> Result<Self, ScramError> {
        let mut salt = [0u8; SALT_LEN];
        random(&mut salt)?;
        Ok(Self::with_salt(password, &salt, ITERATIONS))
    }

    fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hi(&normalize(password), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        Self {
            keys: Arc::new(Keys {
                salt_b64: STANDARD.encode(salt),
                iterations,
                stored_key,
                server_key,
            }),
        }
    }

    /// A new exchange, for one client.
    pub(crate) fn start(&self) -> ScramExchange {
        ScramExchange {
            keys: self.keys.clone(),
            state: State::Initial,
        }
    }
}

/// One client's SCRAM exchange: [`client_first`](Self::client_first), then
/// [`client_final`](Self::client_final). Any error ends it.
pub(crate) struct ScramExchange {
    keys: Arc<Keys>,
    state: State,
}

impl fmt::Debug for ScramExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "initial",
            State::First { .. } => "server-first sent",
            State::Done => "done",
        };
        f.debug_struct("ScramExchange")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

enum State {
    Initial,
    First {
        /// `biws` or `eSws`: the base64 of the GS2 header the client sent first.
        cbind: &'static str,
        /// The client's nonce followed by the server's.
        nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Done,
}

impl ScramExchange {
    /// Takes the SASLInitialResponse (its mechanism name and data) and returns the
    /// server-first message for AuthenticationSASLContinue.
    pub(crate) fn client_first(
        &mut self,
        mechanism: &str,
        data: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        let State::Initial = self.state else {
            self.state = State::Done;
            return Err(ScramError::OutOfOrder);
        };
        self.state = State::Done;
        let mut server_nonce = [0u8; NONCE_LEN];
        random(&mut server_nonce)?;
        self.first(mechanism, data, &STANDARD.encode(server_nonce))
    }

    fn first(
        &mut self,
        mechanism: &str,
        data: &[u8],
        server_nonce: &str,
    ) -> Result<Vec<u8>, ScramError> {
        if mechanism != MECHANISM {
            return Err(ScramError::Mechanism(mechanism.to_owned()));
        }
        let message = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (cbind, rest) = match message.as_bytes().first() {
            Some(b'n') => (CBIND_N, &message[1..]),
            Some(b'y') => (CBIND_Y, &message[1..]),
            Some(b'p') => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("unexpected channel-binding flag")),
        };
        let rest = rest.strip_prefix(',').ok_or(ScramError::Malformed(
            "comma expected after the channel-binding flag",
        ))?;
        if rest.starts_with("a=") {
            return Err(ScramError::Malformed(
                "client uses authorization identity, but it is not supported",
            ));
        }
        let bare = rest
            .strip_prefix(',')
            .ok_or(ScramError::Malformed("comma expected after the GS2 header"))?;

        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        if bare.starts_with("m=") {
            return Err(ScramError::Malformed(
                "client requires an unsupported SCRAM extension",
            ));
        }
        let mut attributes = bare.split(',');
        // The user name is ignored, as PostgreSQL ignores it: the startup message's user
        // is the one that logs in.
        attribute(attributes.next(), 'n')?;
        let client_nonce = attribute(attributes.next(), 'r')?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(is_printable) {
            return Err(ScramError::Malformed("invalid nonce"));
        }
        // Optional extensions, none of which is supported, are ignored (RFC 5802 §5.1).
        for extension in attributes {
            any_attribute(extension)?;
        }

        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            self.keys.salt_b64, self.keys.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::First {
            cbind,
            nonce,
            client_first_bare: bare.to_owned(),
            server_first,
        };
        Ok(reply)
    }

    /// Takes the SASLResponse (client-final) and, when its proof matches the password,
    /// returns the server-final message for AuthenticationSASLFinal.
    pub(crate) fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::First {
            cbind,
            nonce,
            client_first_bare,
            server_first,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let message = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;

        // client-final-message = "c=" base64 "," "r=" nonce ["," extensions] "," "p=" proof
        let (without_proof, proof) = message.rsplit_once(",p=").ok_or(ScramError::Malformed(
            "proof missing in client-final-message",
        ))?;
        let mut attributes = without_proof.split(',');
        let channel_binding = attribute(attributes.next(), 'c')?;
        if channel_binding != cbind {
            return Err(ScramError::Malformed(
                "unexpected SCRAM channel-binding attribute in client-final-message",
            ));
        }
        let final_nonce = attribute(attributes.next(), 'r')?;
        for extension in attributes {
            any_attribute(extension)?;
        }
        if final_nonce.as_bytes().ct_eq(nonce.as_bytes()).unwrap_u8() != 1 {
            return Err(ScramError::NonceMismatch);
        }
        if proof.contains(',') {
            return Err(ScramError::Malformed(
                "garbage found at the end of client-final-message",
            ));
        }
        let proof = STANDARD
            .decode(proof)
            .map_err(|_| ScramError::Malformed("malformed proof in client-final-message"))?;
        let proof: [u8; 32] = proof
            .try_into()
            .map_err(|_| ScramError::Malformed("malformed proof in client-final-message"))?;

        // AuthMessage = client-first-message-bare "," server-first-message ","
        //               client-final-message-without-proof
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.keys.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let candidate: [u8; 32] = Sha256::digest(client_key).into();
        // Compared in constant time: how much of the key matched must not show in timing.
        if candidate.ct_eq(&self.keys.stored_key).unwrap_u8() != 1 {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

/// The value of attribute `name` (`name=value`), which must be there.
fn attribute(attribute: Option<&str>, name: char) -> Result<&str, ScramError> {
    let malformed = match name {
        'n' => "user name attribute expected",
        'r' => "nonce attribute expected",
        'c' => "channel-binding attribute expected",
        _ => "attribute expected",
    };
    let attribute = attribute.ok_or(ScramError::Malformed(malformed))?;
    let mut chars = attribute.chars();
    match (chars.next(), chars.next()) {
        (Some(c), Some('=')) if c == name => Ok(chars.as_str()),
        _ => Err(ScramError::Malformed(malformed)),
    }
}

/// An extension attribute: a letter, `=`, a value.
fn any_attribute(attribute: &str) -> Result<(), ScramError> {
    let bytes = attribute.as_bytes();
    match bytes {
        [letter, b'=', ..] if letter.is_ascii_alphabetic() => Ok(()),
        _ => Err(ScramError::Malformed("attribute expected")),
    }
}

/// `printable = %x21-2B / %x2D-7E` (RFC 5802): visible ASCII but the comma.
fn is_printable(byte: u8) -> bool {
    matches!(byte, 0x21..=0x2B | 0x2D..=0x7E)
}

/// SASLprep, falling back to the raw bytes as PostgreSQL's `pg_saslprep` callers do.
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// `Hi(str, salt, i)` of RFC 5802: PBKDF2 with HMAC-SHA-256, one block.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let key = HmacSha256::new_from_slice(password).expect("HMAC takes keys of any length");
    let mut mac = key.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut previous: [u8; 32] = mac.finalize().into_bytes().into();
    let mut result = previous;
    for _ in 1..iterations {
        let mut mac = key.clone();
        mac.update(&previous);
        previous = mac.finalize().into_bytes().into();
        for (r, p) in result.iter_mut().zip(previous) {
            *r ^= p;
        }
    }
    result
}

fn random(buf: &mut [u8]) -> Result<(), ScramError> {
    getrandom::fill(buf).map_err(|e| ScramError::Random(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use proptest::prelude::*;

    /// Runs a whole exchange with postgres-protocol's client (tokio-postgres' own):
    /// `Ok` when the proxy accepted the proof and the client accepted the server's
    /// signature.
    fn exchange(
        verifier: &ScramVerifier,
        password: &[u8],
        binding: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password, binding);
        let mut server = verifier.start();
        let server_first = server.client_first(MECHANISM, client.message())?;
        client
            .update(&server_first)
            .expect("client takes server-first");
        let server_final = server.client_final(client.message())?;
        client
            .finish(&server_final)
            .expect("client verifies the server signature");
        Ok(())
    }

    /// A verifier with a fixed salt and few PBKDF2 rounds (both sides run them for every
    /// exchange; the property tests run hundreds), for tests about the messages. The
    /// client follows the server's iteration count.
    fn verifier(password: &str) -> ScramVerifier {
        ScramVerifier::with_salt(password, b"0123456789abcdef", 64)
    }

    #[test]
    fn right_password_passes_and_client_verifies_the_server() {
        let verifier = ScramVerifier::new("correct horse").expect("random salt");
        exchange(&verifier, b"correct horse", ChannelBinding::unsupported()).expect("n,,");
        // `y,,`: a client that could bind a channel but sees no -PLUS mechanism.
        exchange(&verifier, b"correct horse", ChannelBinding::unrequested()).expect("y,,");
    }

    #[test]
    fn wrong_password_fails_as_postgresql_says() {
        let verifier = verifier("correct horse");
        let err = exchange(&verifier, b"battery staple", ChannelBinding::unsupported())
            .expect_err("wrong password");
        assert_eq!(err, ScramError::WrongPassword);
        assert!(err.is_wrong_password());
        assert_eq!(err.sqlstate(), "28P01");
        assert_eq!(
            err.message("app"),
            "password authentication failed for user \"app\""
        );
        let err = exchange(&verifier, b"", ChannelBinding::unsupported()).expect_err("empty");
        assert_eq!(err, ScramError::WrongPassword);
    }

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 §3: user "user", password "pencil".
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("b64");
        let verifier = ScramVerifier::with_salt("pencil", &salt, 4096);
        let mut exchange = verifier.start();
        let server_first = exchange
            .first(
                MECHANISM,
                b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
                "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            )
            .expect("client-first");
        assert_eq!(
            server_first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
              s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = exchange
            .client_final(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .expect("client-final");
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn passwords_are_saslprepped_like_postgresql() {
        // U+00AD (soft hyphen) maps to nothing; U+00A0 (no-break space) to a space.
        let verifier = verifier("pass\u{AD}word\u{A0}1");
        exchange(&verifier, b"password 1", ChannelBinding::unsupported()).expect("prepped");
        exchange(
            &verifier,
            "pass\u{AD}word\u{A0}1".as_bytes(),
            ChannelBinding::unsupported(),
        )
        .expect("the client preps too");
        // A prohibited character (a control character): both sides use the raw bytes.
        let verifier = verifier_raw("bell\u{7}");
        exchange(&verifier, b"bell\x07", ChannelBinding::unsupported()).expect("raw");
        let err = exchange(&verifier, b"bell", ChannelBinding::unsupported()).expect_err("raw");
        assert_eq!(err, ScramError::WrongPassword);
    }

    fn verifier_raw(password: &str) -> ScramVerifier {
        assert!(
            stringprep::saslprep(password).is_err(),
            "SASLprep rejects it"
        );
        verifier(password)
    }

    #[test]
    fn salts_and_nonces_are_random() {
        let a = ScramVerifier::new("x").expect("salt");
        let b = ScramVerifier::new("x").expect("salt");
        assert_ne!(a.keys.salt_b64, b.keys.salt_b64);
        assert_ne!(a.keys.stored_key, b.keys.stored_key);
        let first = |v: &ScramVerifier| {
            v.start()
                .client_first(MECHANISM, b"n,,n=,r=abc")
                .expect("server-first")
        };
        assert_ne!(first(&a), first(&a));
        let text = String::from_utf8(first(&a)).expect("utf-8");
        let nonce = text
            .strip_prefix("r=abc")
            .and_then(|rest| rest.split(',').next())
            .expect("client nonce first");
        assert_eq!(nonce.len(), 24, "18 random bytes in base64: {text}");
        assert!(text.ends_with(",i=4096"), "{text}");
    }

    fn first_error(mechanism: &str, data: &[u8]) -> ScramError {
        verifier("pw")
            .start()
            .client_first(mechanism, data)
            .expect_err("refused")
    }

    #[test]
    fn malformed_client_first_is_refused() {
        assert_eq!(
            first_error("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
            ScramError::Mechanism("SCRAM-SHA-256-PLUS".to_owned())
        );
        assert_eq!(
            first_error(MECHANISM, b"p=tls-server-end-point,,n=,r=abc"),
            ScramError::ChannelBinding
        );
        for (data, what) in [
            (&b""[..], "empty"),
            (b"x,,n=,r=abc", "bad gs2 flag"),
            (b"n,n=,r=abc", "gs2 header cut short"),
            (b"n,a=admin,n=,r=abc", "authzid"),
            (b"n,,m=ext,n=,r=abc", "mandatory extension"),
            (b"n,,r=abc", "no user name"),
            (b"n,,n=", "no nonce"),
            (b"n,,n=,r=", "empty nonce"),
            (b"n,,n=,r=a b", "nonce with a space"),
            (b"n,,n=,r=\xc3\xa9", "nonce not ASCII"),
            (b"n,,n=,r=abc,", "empty extension"),
            (b"n,,n=,r=abc,=x", "extension without a name"),
            (b"n,,\xff", "not UTF-8"),
            (b"n,,n=,x=abc", "nonce attribute misnamed"),
        ] {
            let err = first_error(MECHANISM, data);
            assert!(matches!(err, ScramError::Malformed(_)), "{what}: {err:?}");
            assert_eq!(err.sqlstate(), "08P01", "{what}");
        }
        // Extensions after the nonce are allowed (and ignored).
        verifier("pw")
            .start()
            .client_first(MECHANISM, b"n,,n=user,r=abc,x=ext")
            .expect("extension ignored");
    }

    /// An exchange with a verifier of `pw` after the client-first of a client that knows
    /// `password`: the server's side, and the client with its client-final ready.
    fn started(password: &[u8]) -> (ScramExchange, ScramSha256) {
        let mut client = ScramSha256::new(password, ChannelBinding::unsupported());
        let mut server = verifier("pw").start();
        let server_first = server
            .client_first(MECHANISM, client.message())
            .expect("server-first");
        client.update(&server_first).expect("client-final");
        (server, client)
    }

    /// Sends a client-final built from `template` (`{n}`: the agreed nonce, `{p}`: the
    /// client's valid proof) on a fresh exchange; returns the refusal.
    fn final_error(template: &str) -> ScramError {
        let (mut server, client) = started(b"pw");
        let good = String::from_utf8(client.message().to_vec()).expect("utf-8");
        let (without_proof, proof) = good.rsplit_once(",p=").expect("proof");
        let nonce = without_proof.strip_prefix("c=biws,r=").expect("nonce");
        let message = template.replace("{n}", nonce).replace("{p}", proof);
        server
            .client_final(message.as_bytes())
            .expect_err("refused")
    }

    #[test]
    fn malformed_client_final_is_refused() {
        assert_eq!(
            final_error("c=biws,r={n}x,p={p}"),
            ScramError::NonceMismatch
        );
        assert_eq!(
            final_error("c=biws,r=other,p={p}"),
            ScramError::NonceMismatch
        );
        for (template, what) in [
            ("c=eSws,r={n},p={p}", "channel-binding flag changed"),
            (
                "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r={n},p={p}",
                "channel-binding data",
            ),
            ("r={n},p={p}", "no channel-binding attribute"),
            ("c=biws,r={n}", "no proof"),
            ("c=biws,r={n},p=!!!notbase64", "bad base64"),
            ("c=biws,r={n},p=AAAA", "short proof"),
            ("c=biws,r={n},p={p}A", "proof with an extra character"),
            ("c=biws,p={p},r={n}", "attributes out of order"),
            ("c=biws,r={n},,p={p}", "empty extension"),
            ("c=biws,r={n},p={p},x=1", "garbage after the proof"),
        ] {
            let err = final_error(template);
            assert!(matches!(err, ScramError::Malformed(_)), "{what}: {err:?}");
            assert_eq!(err.sqlstate(), "08P01", "{what}");
        }
        // An extension before the proof is ignored, but it is part of the signed message.
        assert_eq!(
            final_error("c=biws,r={n},x=1,p={p}"),
            ScramError::WrongPassword
        );
        let (mut server, _) = started(b"pw");
        assert!(matches!(
            server.client_final(b"c=biws,r=\xff"),
            Err(ScramError::Malformed(_))
        ));
    }

    #[test]
    fn messages_out_of_order_are_refused() {
        let mut server = verifier("pw").start();
        assert_eq!(
            server
                .client_final(b"c=biws,r=abc,p=AAAA")
                .expect_err("final first"),
            ScramError::OutOfOrder
        );
        let (mut server, client) = started(b"pw");
        assert_eq!(
            server
                .client_first(MECHANISM, b"n,,n=,r=abc")
                .expect_err("first twice"),
            ScramError::OutOfOrder
        );
        assert_eq!(
            server.client_final(client.message()).expect_err("ended"),
            ScramError::OutOfOrder
        );
        // After a success, nothing more is taken.
        let (mut server, client) = started(b"pw");
        server
            .client_final(client.message())
            .expect("right password");
        assert_eq!(
            server.client_final(client.message()).expect_err("replayed"),
            ScramError::OutOfOrder
        );
        // After a failure either.
        let (mut server, client) = started(b"wrong");
        assert_eq!(
            server.client_final(client.message()).expect_err("wrong"),
            ScramError::WrongPassword
        );
        assert_eq!(
            server.client_final(client.message()).expect_err("retried"),
            ScramError::OutOfOrder
        );
    }

    #[test]
    fn a_final_message_from_another_exchange_is_refused() {
        let (_, client) = started(b"pw");
        let (mut other, _) = started(b"pw");
        assert_eq!(
            other.client_final(client.message()).expect_err("replay"),
            ScramError::NonceMismatch
        );
    }

    #[test]
    fn debug_shows_no_keys() {
        let verifier = verifier("hunter2");
        let text = format!("{verifier:?} {:?}", verifier.start());
        assert!(!text.contains("hunter2"));
        assert!(!text.contains(&STANDARD.encode(verifier.keys.stored_key)));
        assert!(text.contains("ScramVerifier"), "{text}");
    }

    /// One edit of a message: a byte replaced, inserted or removed.
    #[derive(Debug, Clone)]
    enum Edit {
        Replace(usize, u8),
        Insert(usize, u8),
        Remove(usize),
    }

    fn apply(message: &[u8], edits: &[Edit]) -> Vec<u8> {
        let mut out = message.to_vec();
        for edit in edits {
            match *edit {
                Edit::Replace(i, b) if !out.is_empty() => {
                    let i = i % out.len();
                    out[i] = b;
                }
                Edit::Insert(i, b) => {
                    let i = i % (out.len() + 1);
                    out.insert(i, b);
                }
                Edit::Remove(i) if !out.is_empty() => {
                    let i = i % out.len();
                    out.remove(i);
                }
                _ => {}
            }
        }
        out
    }

    fn edits() -> impl Strategy<Value = Vec<Edit>> {
        // Bytes from the message's alphabet (attribute letters, `=`, `,`, base64) as well
        // as any byte, so that edits often produce almost-valid messages.
        let byte = prop_oneof![
            prop::sample::select(b"nypacrmsi=,+/biwsAZ09".to_vec()),
            any::<u8>(),
        ];
        prop::collection::vec(
            prop_oneof![
                (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
                (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
                any::<usize>().prop_map(Edit::Remove),
            ],
            1..4,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any client-first, edited or arbitrary: an answer or an error, never a panic.
        #[test]
        fn edited_client_first_never_panics(edits in edits(), junk in prop::collection::vec(any::<u8>(), 0..64)) {
            let verifier = verifier("pw");
            let client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
            let edited = apply(client.message(), &edits);
            let mut server = verifier.start();
            if let Ok(reply) = server.client_first(MECHANISM, &edited) {
                prop_assert!(reply.starts_with(b"r="));
                // Whatever follows must not panic either.
                let _ = server.client_final(&junk);
            }
            let _ = verifier.start().client_first(MECHANISM, &junk);
        }

        /// Any edit of a valid client-final is refused, and never panics: every byte is
        /// either checked or covered by the proof.
        #[test]
        fn edited_client_final_is_refused(edits in edits()) {
            let (mut server, client) = started(b"pw");
            let edited = apply(client.message(), &edits);
            prop_assume!(edited != client.message());
            prop_assert!(server.client_final(&edited).is_err());
        }

        /// Arbitrary bytes as client-final: an error, never a panic.
        #[test]
        fn arbitrary_client_final_is_refused(junk in prop::collection::vec(any::<u8>(), 0..128)) {
            let (mut server, _) = started(b"pw");
            prop_assert!(server.client_final(&junk).is_err());
        }
    }
}
