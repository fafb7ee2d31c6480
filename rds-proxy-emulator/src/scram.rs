//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677), as PostgreSQL and RDS Proxy
//! play it for password logins (`ClientPasswordAuthType: POSTGRES_SCRAM_SHA_256`).
//!
//! The proxy derives [`ScramKeys`] from the user's current password (SASLprep-normalised
//! as PostgreSQL does; a password SASLprep rejects is used as its raw bytes, as PostgreSQL
//! and libpq do), then runs one [`ScramServer`] per login over the bodies of the SASL
//! messages: client-first → server-first, client-final → server-final. Only the mechanism
//! without channel binding is offered (`SCRAM-SHA-256`), so the client's GS2 header is
//! `n,,` or `y,,`. The password itself is not kept.
//!
//! Written for the stand-in rather than shared with `rds-iam-auth-proxy`'s verifier: that
//! one is private to its crate and built on other hash crates; this one uses the
//! emulator's `aws-lc-rs`.

use std::num::NonZeroU32;

use aws_lc_rs::{constant_time, digest, hmac, pbkdf2};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::iam::random_bytes;

/// The mechanism offered in AuthenticationSASL.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// PostgreSQL's default `scram_iterations`.
const ITERATIONS: u32 = 4096;

/// Why an exchange failed. Only the caller's log sees the detail: the client is told the
/// password failed, whatever the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A malformed or unexpected message.
    #[error("malformed SCRAM message: {0}")]
    Protocol(&'static str),
    /// The client's proof does not match the password.
    #[error("wrong password (the client proof does not match)")]
    WrongProof,
}

/// The keys derived from a password and a salt (`Debug` shows none of them).
#[derive(Clone)]
pub struct ScramKeys {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

impl ScramKeys {
    /// Keys for `password` with a new random salt and PostgreSQL's default iterations.
    pub fn new(password: &str) -> ScramKeys {
        ScramKeys::with_salt(password, &random_bytes(16), ITERATIONS)
    }

    /// Keys for `password` with the given salt and iterations (for known test vectors).
    pub fn with_salt(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let normalized = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned().into_bytes(),
            Err(_) => password.as_bytes().to_vec(),
        };
        let mut salted = [0u8; 32];
        let rounds = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            salt,
            &normalized,
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let mut stored_key = [0u8; 32];
        stored_key.copy_from_slice(digest::digest(&digest::SHA256, &client_key).as_ref());
        ScramKeys {
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }
}

/// One exchange after the client-first message.
#[derive(Debug)]
pub struct ScramServer {
    keys: ScramKeys,
    gs2_header: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

fn utf8(data: &[u8]) -> Result<&str, ScramError> {
    std::str::from_utf8(data).map_err(|_| ScramError::Protocol("not UTF-8"))
}

impl ScramServer {
    /// Reads the client-first message and answers the server-first one, with a random
    /// server nonce.
    pub fn start(
        keys: ScramKeys,
        client_first: &[u8],
    ) -> Result<(ScramServer, String), ScramError> {
        let server_nonce = STANDARD.encode(random_bytes(18));
        ScramServer::start_with_nonce(keys, client_first, &server_nonce)
    }

    /// [`ScramServer::start`] with a given server nonce (for known test vectors).
    pub fn start_with_nonce(
        keys: ScramKeys,
        client_first: &[u8],
        server_nonce: &str,
    ) -> Result<(ScramServer, String), ScramError> {
        let text = utf8(client_first)?;
        let (gs2_header, bare) = match text.get(..3) {
            Some("n,," | "y,,") => (&text[..3], &text[3..]),
            Some(h) if h.starts_with('p') => {
                return Err(ScramError::Protocol("channel binding was not offered"))
            }
            _ => return Err(ScramError::Protocol("unsupported GS2 header")),
        };
        let mut attributes = bare.split(',');
        if !attributes.next().is_some_and(|n| n.starts_with("n=")) {
            return Err(ScramError::Protocol("no user name attribute"));
        }
        let client_nonce = attributes
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .filter(|r| !r.is_empty() && r.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Protocol("no valid client nonce"))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&keys.salt),
            keys.iterations
        );
        Ok((
            ScramServer {
                keys,
                gs2_header: gs2_header.to_string(),
                nonce,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
            },
            server_first,
        ))
    }

    /// Checks the client-final message's proof and returns the server-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = utf8(client_final)?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Protocol("no proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes.next().and_then(|c| c.strip_prefix("c="));
        if binding != Some(STANDARD.encode(&self.gs2_header).as_str()) {
            return Err(ScramError::Protocol(
                "channel binding does not repeat the GS2 header",
            ));
        }
        if attributes.next().and_then(|r| r.strip_prefix("r=")) != Some(self.nonce.as_str()) {
            return Err(ScramError::Protocol("nonce does not match"));
        }
        let proof = STANDARD
            .decode(proof)
            .ok()
            .filter(|p| p.len() == 32)
            .ok_or(ScramError::Protocol("proof is not 32 bytes of base64"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = hmac_sha256(&self.keys.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let stored = digest::digest(&digest::SHA256, &client_key);
        constant_time::verify_slices_are_equal(stored.as_ref(), &self.keys.stored_key)
            .map_err(|_| ScramError::WrongProof)?;
        let server_signature = hmac_sha256(&self.keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn rfc_7677_test_vector() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = ScramKeys::with_salt("pencil", &salt, 4096);
        let (server, first) = ScramServer::start_with_nonce(
            keys,
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = server
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(last, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    fn exchange(
        server_password: &str,
        client_password: &str,
        binding: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(client_password.as_bytes(), binding);
        let (server, first) =
            ScramServer::start(ScramKeys::new(server_password), client.message())?;
        client
            .update(first.as_bytes())
            .map_err(|_| ScramError::Protocol("client rejected server-first"))?;
        let last = server.finish(client.message())?;
        client
            .finish(last.as_bytes())
            .map_err(|_| ScramError::Protocol("client rejected the server signature"))
    }

    #[test]
    fn the_postgres_client_agrees_with_the_server() {
        assert_eq!(
            exchange("s3cret-Ω", "s3cret-Ω", ChannelBinding::unsupported()),
            Ok(())
        );
        assert_eq!(
            exchange("s3cret", "s3cret", ChannelBinding::unrequested()),
            Ok(())
        );
        assert_eq!(
            exchange("s3cret", "wrong", ChannelBinding::unsupported()),
            Err(ScramError::WrongProof)
        );
    }

    #[test]
    fn channel_binding_is_refused_as_it_was_not_offered() {
        let mut client = ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(vec![1; 32]));
        let err = ScramServer::start(ScramKeys::new("pw"), client.message()).unwrap_err();
        assert_eq!(err, ScramError::Protocol("channel binding was not offered"));
        let _ = client.update(b"");
    }
}
