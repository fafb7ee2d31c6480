//! RDS IAM auth tokens: the independent verifier the proxy stand-in runs.
//!
//! It follows AWS's SigV4 query-signing specification ("Create a signed AWS API request",
//! "Authenticating requests: using query parameters") for the `rds-db` service, as the AWS
//! SDKs' RDS auth token generators sign (`generate-db-auth-token`), and is checked against
//! golden tokens from those generators. It recomputes the signature from the token's own
//! parameters (in any order), so it accepts exactly the tokens AWS would accept for the
//! same credentials. The emulator has no signer of its own: its tests sign with the AWS
//! SDK's `aws-sigv4` crate.
//!
//! ```
//! use rds_proxy_emulator::token::{verify_token, Expected, KnownCredential};
//! use time::macros::datetime;
//!
//! // `aws rds generate-db-auth-token` for key akid/skid at 2016-11-07T17:39:33Z.
//! let token = "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=someusername&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20161107%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20161107T173933Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=d1138cdbc0ca63eec012ec0fc6c2267e03642168f5884a7795320d4c18374c61";
//! let expected = Expected {
//!     hostname: "prod-instance.us-east-1.rds.amazonaws.com",
//!     port: 3306,
//!     region: "us-east-1",
//!     db_user: "someusername",
//!     now: datetime!(2016-11-07 17:40:00 UTC),
//!     max_clock_skew: time::Duration::minutes(5),
//! };
//! let lookup = |akid: &str| (akid == "akid").then(|| KnownCredential { secret_access_key: "skid".into(), session_token: None, expires_at: None });
//! assert!(verify_token(token, &expected, lookup).is_ok());
//! ```

use time::{Duration, OffsetDateTime};

use crate::sigv4::{self, CredentialScope, ALGORITHM, EMPTY_SHA256};

/// The service name RDS IAM tokens are signed for.
pub const SERVICE: &str = "rds-db";
/// Largest `X-Amz-Expires` RDS accepts.
pub const MAX_EXPIRES: u32 = 900;

/// The value of the signed `host` header: lowercased host, `:port` unless 443 (botocore).
fn host_header(host: &str, port: u16) -> String {
    if port == 443 {
        host.to_ascii_lowercase()
    } else {
        format!("{}:{port}", host.to_ascii_lowercase())
    }
}

fn canonical_request(canonical_query: &str, host_header: &str) -> String {
    format!("GET\n/\n{canonical_query}\nhost:{host_header}\n\nhost\n{EMPTY_SHA256}")
}

/// A credential the verifier knows (from the STS stand-in's records).
#[derive(Clone)]
pub struct KnownCredential {
    /// Secret access key.
    pub secret_access_key: String,
    /// The session token that must accompany it (temporary credentials), or `None`
    /// for long-term keys (then the token must carry none).
    pub session_token: Option<String>,
    /// When the credentials stop being valid.
    pub expires_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for KnownCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownCredential")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What the proxy expects of a token presented to one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Endpoint host name (compared case-insensitively).
    pub hostname: &'a str,
    /// Advertised port.
    pub port: u16,
    /// The proxy's region.
    pub region: &'a str,
    /// The user of the startup packet.
    pub db_user: &'a str,
    /// Verification time.
    pub now: OffsetDateTime,
    /// Allowance for a client clock ahead of ours.
    pub max_clock_skew: Duration,
}

/// A token that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The access key id that signed it.
    pub access_key_id: String,
    /// `X-Amz-Date`.
    pub signed_at: OffsetDateTime,
    /// `X-Amz-Date + X-Amz-Expires`.
    pub expires_at: OffsetDateTime,
}

/// Why a token was refused: the precise internal reason (logged by the proxy, never shown
/// to the client, which only sees the RDS Proxy message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    /// Not `HOST:PORT/?QUERY`, a bad escape, a duplicated or missing parameter.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `X-Amz-Algorithm` is not `AWS4-HMAC-SHA256`.
    #[error("unsupported X-Amz-Algorithm {0:?}")]
    Algorithm(String),
    /// `X-Amz-SignedHeaders` is not `host`.
    #[error("X-Amz-SignedHeaders is {0:?}, expected \"host\"")]
    SignedHeaders(String),
    /// The credential scope names another service.
    #[error("credential scope service is {0:?}, expected \"rds-db\"")]
    Service(String),
    /// The credential scope names another region.
    #[error("token signed for region {got:?}, this proxy is in {expected:?}")]
    Region {
        /// Region in the token.
        got: String,
        /// The proxy's region.
        expected: String,
    },
    /// `X-Amz-Date` and the scope date differ, `X-Amz-Date` is malformed, or its
    /// expiry (`X-Amz-Date + X-Amz-Expires`) is past the end of year 9999.
    #[error(
        "X-Amz-Date {0:?} is malformed, out of range or does not match the credential scope date"
    )]
    Date(String),
    /// `X-Amz-Expires` is not an integer in 1..=900.
    #[error("X-Amz-Expires {0:?} is not an integer between 1 and 900")]
    Expires(String),
    /// `X-Amz-Date` is further in the future than the clock-skew allowance.
    #[error("token signed at {signed_at} is in the future (now {now})")]
    NotYetValid {
        /// `X-Amz-Date`.
        signed_at: OffsetDateTime,
        /// Verification time.
        now: OffsetDateTime,
    },
    /// The token's lifetime has passed.
    #[error("token expired at {expired_at} (now {now})")]
    Expired {
        /// `X-Amz-Date + X-Amz-Expires`.
        expired_at: OffsetDateTime,
        /// Verification time.
        now: OffsetDateTime,
    },
    /// No such access key.
    #[error("unknown access key id {0}")]
    UnknownAccessKey(String),
    /// Temporary credentials without their session token, or with another one.
    #[error("session token missing or not the one issued with access key {0}")]
    SessionToken(String),
    /// The signing credentials had expired when the token was presented.
    #[error("credentials {access_key_id} expired at {expired_at}")]
    CredentialsExpired {
        /// Access key id.
        access_key_id: String,
        /// Their expiration.
        expired_at: OffsetDateTime,
    },
    /// The signature does not match (tampered token or wrong secret).
    #[error("signature does not match (tampered token or wrong secret key)")]
    Signature,
    /// The token was signed for another host or port.
    #[error("token signed for host {got:?}, this endpoint is {expected:?}")]
    Host {
        /// `host:port` in the token (lowercased).
        got: String,
        /// This endpoint's `host:port`.
        expected: String,
    },
    /// `Action` is not `connect`.
    #[error("Action is {0:?}, expected \"connect\"")]
    Action(String),
    /// `DBUser` differs from the startup packet's user.
    #[error("token is for DBUser {got:?}, the connection is for user {expected:?}")]
    DbUser {
        /// `DBUser` in the token.
        got: String,
        /// Startup user.
        expected: String,
    },
}

fn malformed(m: impl Into<String>) -> TokenRejection {
    TokenRejection::Malformed(m.into())
}

/// Verifies a token for `expected`, looking up the signing credentials by access key id.
///
/// Checks, in order: shape; algorithm; signed headers; credential scope (service
/// `rds-db`, region); date; `X-Amz-Expires <= 900`; the time window (with the clock-skew
/// allowance for tokens from the future); the credentials (known, session token, not
/// expired); the signature; then host, `Action` and `DBUser`.
pub fn verify_token<F>(
    token: &str,
    expected: &Expected<'_>,
    lookup: F,
) -> Result<VerifiedToken, TokenRejection>
where
    F: FnOnce(&str) -> Option<KnownCredential>,
{
    let (authority, query) = token
        .split_once("/?")
        .ok_or_else(|| malformed("not HOST:PORT/?QUERY"))?;
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| malformed("no port after the host"))?;
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        return Err(malformed("bad host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p: &u16| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| malformed("bad port"))?;

    let mut params: Vec<(String, String)> = Vec::new();
    let mut signature: Option<String> = None;
    for part in query.split('&') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = sigv4::percent_decode(k, true).ok_or_else(|| malformed("bad escape"))?;
        let v = sigv4::percent_decode(v, true).ok_or_else(|| malformed("bad escape"))?;
        if k.is_empty() {
            return Err(malformed("empty parameter name"));
        }
        if k == "X-Amz-Signature" {
            if signature.replace(v).is_some() {
                return Err(malformed("X-Amz-Signature twice"));
            }
            continue;
        }
        if params.iter().any(|(n, _)| *n == k) {
            return Err(malformed(format!("parameter {k} twice")));
        }
        params.push((k, v));
    }
    let get = |name: &str| -> Result<&str, TokenRejection> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| malformed(format!("missing {name}")))
    };
    let signature = signature.ok_or_else(|| malformed("missing X-Amz-Signature"))?;
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(malformed("X-Amz-Signature is not 64 lowercase hex digits"));
    }
    let algorithm = get("X-Amz-Algorithm")?;
    if algorithm != ALGORITHM {
        return Err(TokenRejection::Algorithm(algorithm.into()));
    }
    let signed_headers = get("X-Amz-SignedHeaders")?;
    if signed_headers != "host" {
        return Err(TokenRejection::SignedHeaders(signed_headers.into()));
    }
    let scope = CredentialScope::parse(get("X-Amz-Credential")?).ok_or_else(|| {
        malformed("X-Amz-Credential is not AKID/DATE/REGION/SERVICE/aws4_request")
    })?;
    if scope.service != SERVICE {
        return Err(TokenRejection::Service(scope.service));
    }
    if scope.region != expected.region {
        return Err(TokenRejection::Region {
            got: scope.region,
            expected: expected.region.into(),
        });
    }
    let amz_date = get("X-Amz-Date")?;
    let signed_at = sigv4::parse_amz_date(amz_date)
        .filter(|_| amz_date.get(..8) == Some(scope.date.as_str()))
        .ok_or_else(|| TokenRejection::Date(amz_date.into()))?;
    let expires_raw = get("X-Amz-Expires")?;
    let expires: u32 = expires_raw
        .parse()
        .ok()
        .filter(|e| {
            (1..=MAX_EXPIRES).contains(e) && expires_raw.bytes().all(|b| b.is_ascii_digit())
        })
        .ok_or_else(|| TokenRejection::Expires(expires_raw.into()))?;
    // The token's date comes from the client: an expiry past the last instant `time`
    // represents (the end of year 9999) is a bad date, not an overflow.
    let expires_at = signed_at
        .checked_add(Duration::seconds(i64::from(expires)))
        .ok_or_else(|| TokenRejection::Date(amz_date.into()))?;
    let not_after = expected
        .now
        .checked_add(expected.max_clock_skew)
        .unwrap_or(OffsetDateTime::new_utc(time::Date::MAX, time::Time::MAX));
    if signed_at > not_after {
        return Err(TokenRejection::NotYetValid {
            signed_at,
            now: expected.now,
        });
    }
    if expected.now >= expires_at {
        return Err(TokenRejection::Expired {
            expired_at: expires_at,
            now: expected.now,
        });
    }

    let known = lookup(&scope.access_key_id)
        .ok_or_else(|| TokenRejection::UnknownAccessKey(scope.access_key_id.clone()))?;
    let presented_session = params
        .iter()
        .find(|(k, _)| k == "X-Amz-Security-Token")
        .map(|(_, v)| v.as_str());
    let session_ok = match (&known.session_token, presented_session) {
        (Some(issued), Some(given)) => sigv4::signatures_equal(issued, given),
        (None, None) => true,
        _ => false,
    };
    if !session_ok {
        return Err(TokenRejection::SessionToken(scope.access_key_id));
    }
    if let Some(exp) = known.expires_at {
        if expected.now >= exp {
            return Err(TokenRejection::CredentialsExpired {
                access_key_id: scope.access_key_id,
                expired_at: exp,
            });
        }
    }

    let creq = canonical_request(&sigv4::canonical_query(&params), &host_header(host, port));
    // The scope's service is `rds-db`: checked above.
    let computed = scope.sign(&known.secret_access_key, amz_date, &creq);
    if !sigv4::signatures_equal(&computed, &signature) {
        return Err(TokenRejection::Signature);
    }

    let got = format!("{}:{port}", host.to_ascii_lowercase());
    let want = format!(
        "{}:{}",
        expected.hostname.to_ascii_lowercase(),
        expected.port
    );
    if got != want {
        return Err(TokenRejection::Host {
            got,
            expected: want,
        });
    }
    let action = get("Action")?;
    if action != "connect" {
        return Err(TokenRejection::Action(action.into()));
    }
    let db_user = get("DBUser")?;
    if db_user != expected.db_user {
        return Err(TokenRejection::DbUser {
            got: db_user.into(),
            expected: expected.db_user.into(),
        });
    }
    Ok(VerifiedToken {
        access_key_id: scope.access_key_id,
        signed_at,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const HOST: &str = "prod-instance.us-east-1.rds.amazonaws.com";

    fn known(akid: &str) -> Option<KnownCredential> {
        (akid == "akid").then(|| KnownCredential {
            secret_access_key: "skid".into(),
            session_token: None,
            expires_at: None,
        })
    }

    /// A token for `HOST:5432`, user `u`, signed with `akid`/`skid` at `amz_date` (the
    /// verifier's own building blocks: only the parameters under test are unusual).
    fn token_at(amz_date: &str, expires: &str) -> String {
        let date = &amz_date[..8];
        let params: Vec<(String, String)> = [
            ("Action", "connect".to_string()),
            ("DBUser", "u".to_string()),
            ("X-Amz-Algorithm", ALGORITHM.to_string()),
            (
                "X-Amz-Credential",
                format!("akid/{date}/us-east-1/{SERVICE}/aws4_request"),
            ),
            ("X-Amz-Date", amz_date.to_string()),
            ("X-Amz-Expires", expires.to_string()),
            ("X-Amz-SignedHeaders", "host".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let query = sigv4::canonical_query(&params);
        let creq = canonical_request(&query, &host_header(HOST, 5432));
        let key = sigv4::signing_key("skid", date, "us-east-1", SERVICE);
        let scope = format!("{date}/us-east-1/{SERVICE}/aws4_request");
        let sig = sigv4::signature(&key, &sigv4::string_to_sign(amz_date, &scope, &creq));
        format!("{HOST}:5432/?{query}&X-Amz-Signature={sig}")
    }

    fn expected(now: OffsetDateTime) -> Expected<'static> {
        Expected {
            hostname: HOST,
            port: 5432,
            region: "us-east-1",
            db_user: "u",
            now,
            max_clock_skew: Duration::minutes(5),
        }
    }

    #[test]
    fn a_well_formed_token_passes() {
        let token = token_at("20240826T220000Z", "900");
        let verified = verify_token(&token, &expected(datetime!(2024-08-26 22:01:00 UTC)), known)
            .expect("valid token");
        assert_eq!(verified.expires_at, datetime!(2024-08-26 22:15:00 UTC));
    }

    /// `X-Amz-Date + X-Amz-Expires` past the last representable instant (the end of year
    /// 9999) is refused as a bad date, whatever the verifier's clock says, instead of
    /// overflowing.
    #[test]
    fn a_date_whose_expiry_overflows_is_refused_not_a_panic() {
        let token = token_at("99991231T235959Z", "900");
        for now in [
            datetime!(2024-08-26 22:00:00 UTC),
            datetime!(9999-12-31 23:59:00 UTC),
        ] {
            let looked_up = std::cell::Cell::new(false);
            let got = verify_token(&token, &expected(now), |akid| {
                looked_up.set(true);
                known(akid)
            });
            assert_eq!(
                got,
                Err(TokenRejection::Date("99991231T235959Z".into())),
                "now {now}"
            );
            assert!(!looked_up.get(), "the key was looked up for a bad date");
        }
        // The last second whose expiry is representable is still judged on its window.
        let token = token_at("99991231T234459Z", "900");
        assert!(matches!(
            verify_token(&token, &expected(datetime!(2024-08-26 22:00:00 UTC)), known),
            Err(TokenRejection::NotYetValid { .. })
        ));
    }
}
