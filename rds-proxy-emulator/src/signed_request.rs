//! An HTTP request to one of the AWS API stand-ins (STS, Secrets Manager, Parameter Store)
//! and its SigV4 `Authorization` header check, shared by all of them.
//!
//! [`authenticate`] finds who signed a request: a principal with long-term keys from the
//! configuration, or session credentials the STS stand-in issued (with their session
//! token, before expiry). It reports a refusal as an [`AuthFailure`]; each protocol turns
//! that into its own error document (STS: `InvalidClientTokenId`, ...; the JSON protocol
//! of Secrets Manager and Parameter Store: `UnrecognizedClientException`, ...).

use time::{Duration, OffsetDateTime};

use crate::iam::{Caller, Iam};
use crate::sigv4::{self, CredentialScope, ALGORITHM};

/// One parsed HTTP request, reduced to what SigV4 and the AWS protocols need.
#[derive(Debug, Clone)]
pub struct SignedRequest {
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

/// Why a request's signature does not admit it. The texts are AWS's; the codes differ by
/// protocol, so each stand-in maps the kind to its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// The header lacks `Credential`, `SignedHeaders` or `Signature`, or is not SigV4.
    Incomplete(String),
    /// Unknown access key, or a session token that is missing or wrong.
    UnknownKey,
    /// Session credentials past their expiration.
    Expired,
    /// The signature (or the scope, date or payload hash) does not match.
    Signature(String),
}

impl AuthFailure {
    /// AWS's text for the failure.
    pub fn message(&self) -> String {
        match self {
            AuthFailure::Missing => "Request is missing Authentication Token".into(),
            AuthFailure::Incomplete(m) | AuthFailure::Signature(m) => m.clone(),
            AuthFailure::UnknownKey => {
                "The security token included in the request is invalid.".into()
            }
            AuthFailure::Expired => "The security token included in the request is expired".into(),
        }
    }
}

/// AWS's text for a signature that does not match.
pub const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

const CONTENT_SHA256_MISMATCH: &str =
    "The provided 'x-amz-content-sha256' header does not match what was computed.";

impl SignedRequest {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn canonical_request(&self, signed_headers: &str) -> Result<String, AuthFailure> {
        let mismatch = || AuthFailure::Signature(SIGNATURE_MISMATCH.into());
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
        // altered body, or `UNSIGNED-PAYLOAD`, which these services do not take) is refused.
        let payload_hash = sigv4::sha256_hex(&self.body);
        if let Some(claimed) = self.header("x-amz-content-sha256") {
            if !claimed.eq_ignore_ascii_case(&payload_hash) {
                return Err(AuthFailure::Signature(CONTENT_SHA256_MISMATCH.into()));
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

/// Verifies the request's SigV4 `Authorization` header for `service` at `now` (allowing
/// `max_skew` between the signer's clock and ours) and returns the caller.
pub fn authenticate(
    iam: &Iam,
    req: &SignedRequest,
    service: &str,
    now: OffsetDateTime,
    max_skew: Duration,
) -> Result<Caller, AuthFailure> {
    let auth = req.header("authorization").ok_or(AuthFailure::Missing)?;
    let incomplete = || {
        AuthFailure::Incomplete(format!("Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters. Authorization={ALGORITHM}"))
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
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(incomplete());
    };
    let scope = CredentialScope::parse(credential).ok_or_else(incomplete)?;
    if !signed_headers.split(';').any(|h| h == "host") {
        return Err(AuthFailure::Signature(
            "'Host' must be a 'SignedHeader' in the AWS Authorization.".into(),
        ));
    }
    let (known, caller) = iam
        .lookup(&scope.access_key_id)
        .ok_or(AuthFailure::UnknownKey)?;
    let token_ok = match (&known.session_token, req.header("x-amz-security-token")) {
        (Some(t), Some(p)) => sigv4::signatures_equal(t, p),
        (None, None) => true,
        _ => false,
    };
    if !token_ok {
        return Err(AuthFailure::UnknownKey);
    }
    if known.expires_at.is_some_and(|exp| now >= exp) {
        return Err(AuthFailure::Expired);
    }
    let amz_date = req.header("x-amz-date").unwrap_or_default();
    let signed_at = sigv4::parse_amz_date(amz_date)
        .filter(|_| amz_date.get(..8) == Some(scope.date.as_str()))
        .ok_or_else(|| AuthFailure::Signature(SIGNATURE_MISMATCH.into()))?;
    if signed_at > now + max_skew || signed_at < now - max_skew {
        return Err(AuthFailure::Signature(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - {} min.)",
            sigv4::format_amz_date(now - max_skew),
            sigv4::format_amz_date(now),
            max_skew.whole_minutes()
        )));
    }
    if scope.service != service {
        return Err(AuthFailure::Signature(format!(
            "Credential should be scoped to correct service: '{service}'. "
        )));
    }
    let creq = req.canonical_request(signed_headers)?;
    let key = sigv4::signing_key(
        &known.secret_access_key,
        &scope.date,
        &scope.region,
        service,
    );
    let expected = sigv4::signature(
        &key,
        &sigv4::string_to_sign(amz_date, &scope.scope(), &creq),
    );
    if !sigv4::signatures_equal(&expected, signature) {
        tracing::warn!(caller = %caller.arn, service, "signature does not match");
        return Err(AuthFailure::Signature(SIGNATURE_MISMATCH.into()));
    }
    Ok(caller)
}
