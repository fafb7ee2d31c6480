//! IAM authentication tokens: SigV4 query presigning for `rds-db:connect`.
//!
//! A token is a presigned URL without its scheme:
//!
//! ```text
//! HOST:PORT/?Action=connect&DBUser=USER&X-Amz-Algorithm=AWS4-HMAC-SHA256
//!   &X-Amz-Credential=AKID%2FDATE%2FREGION%2Frds-db%2Faws4_request&X-Amz-Date=...
//!   &X-Amz-Expires=900&X-Amz-SignedHeaders=host[&X-Amz-Security-Token=...]&X-Amz-Signature=...
//! ```
//!
//! The output is byte-identical to `aws rds generate-db-auth-token` (botocore) for every
//! input. The details that matter, and that other generators get wrong:
//!
//! - every query value is RFC 3986 encoded (only `A-Za-z0-9-_.~` stay as they are), so a
//!   user name such as `a+b c` is signed and sent as `a%2Bb%20c`, never as a space;
//! - the signed `host` header is the lowercased host name plus `:PORT`, except that `:443`
//!   is dropped (the default port of the `https://` URL botocore signs); the output keeps
//!   the host exactly as the caller wrote it;
//! - the canonical query is sorted, but the output lists the parameters in botocore's
//!   order, with `X-Amz-Security-Token` after `X-Amz-SignedHeaders`;
//! - the region is never defaulted: it is explicit or read from the endpoint name.
//!
//! [`TokenParams`] holds validated settings as plain data and [`sign`] is a pure function of
//! them, the credentials and the signing time:
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use aws_credential_types::Credentials;
//! use rds_iam_auth::token::{sign, TokenParams};
//!
//! let params = TokenParams::new("mydb.proxy-abc123.us-west-2.rds.amazonaws.com", 5432, "app_reader", None)?;
//! assert_eq!(params.region(), "us-west-2"); // read from the endpoint name
//!
//! let credentials = Credentials::from_keys("AKIDEXAMPLE", "secret", None);
//! let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_478_540_373); // 2016-11-07T17:39:33Z
//! let token = sign(&params, &credentials, at);
//! assert!(token.as_str().starts_with("mydb.proxy-abc123.us-west-2.rds.amazonaws.com:5432/?Action=connect&DBUser=app_reader&"));
//! # Ok::<(), rds_iam_auth::token::TokenError>(())
//! ```

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use sha2::{Digest, Sha256};

/// The longest life RDS accepts for a token, and the one the AWS CLI always uses.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(900);

/// SHA-256 of the empty payload, as hex (a `GET` presign has no body).
const EMPTY_PAYLOAD_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why token settings were refused. Each message says how to fix the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The host name is empty or is not a bare host name.
    #[error("invalid hostname {hostname:?}: {reason}")]
    InvalidHostname {
        /// The host name as given.
        hostname: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Port 0 cannot be connected to.
    #[error("invalid port 0: use the database port (5432 for PostgreSQL)")]
    InvalidPort,
    /// The database user name is empty.
    #[error("the database user name is empty")]
    EmptyUsername,
    /// The region does not look like an AWS region.
    #[error("invalid region {0:?}: expected an AWS region such as us-east-1 or eu-central-2")]
    InvalidRegion(String),
    /// No region was given and the host name does not contain one.
    #[error(
        "no region for {hostname:?}: pass a region explicitly (--region / AWS_REGION), \
         or use an endpoint name of the form NAME.[...].REGION.rds.amazonaws.com"
    )]
    MissingRegion {
        /// The host name that carried no region.
        hostname: String,
    },
    /// `expires_in` was zero or longer than RDS accepts.
    #[error("invalid token lifetime {0:?}: must be between 1 s and 900 s (RDS rejects longer)")]
    InvalidExpiry(Duration),
}

/// Validated inputs of a token, except the credentials and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenParams {
    hostname: String,
    port: u16,
    username: String,
    region: String,
    expires_in: Duration,
    /// `host` header value that is signed: lowercased host, `:port` unless 443.
    signed_host: String,
}

impl TokenParams {
    /// Validates the settings of a token that lives 900 s, the AWS CLI's lifetime.
    ///
    /// `region` may be `None` when the host name is an RDS endpoint name
    /// (`*.REGION.rds.amazonaws.com` or `*.REGION.rds.amazonaws.com.cn`); it is then read
    /// from there. No other default exists.
    pub fn new(
        hostname: &str,
        port: u16,
        username: &str,
        region: Option<&str>,
    ) -> Result<Self, TokenError> {
        validate_target(hostname, port, username)?;
        let region = match region {
            Some(region) => validate_region(region)?.to_owned(),
            None => region_from_hostname(hostname).ok_or_else(|| TokenError::MissingRegion {
                hostname: hostname.to_owned(),
            })?,
        };
        let mut signed_host = hostname.to_ascii_lowercase();
        if port != 443 {
            // `write!` to a String cannot fail.
            let _ = write!(signed_host, ":{port}");
        }
        Ok(Self {
            hostname: hostname.to_owned(),
            port,
            username: username.to_owned(),
            region,
            expires_in: MAX_EXPIRES_IN,
            signed_host,
        })
    }

    /// Sets a shorter token lifetime (1 to 900 s, whole seconds).
    pub fn with_expires_in(mut self, expires_in: Duration) -> Result<Self, TokenError> {
        if expires_in.as_secs() == 0
            || expires_in > MAX_EXPIRES_IN
            || expires_in.subsec_nanos() != 0
        {
            return Err(TokenError::InvalidExpiry(expires_in));
        }
        self.expires_in = expires_in;
        Ok(self)
    }

    /// The host name, as given.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The database user name (`DBUser`).
    pub fn username(&self) -> &str {
        &self.username
    }
    /// The signing region.
    pub fn region(&self) -> &str {
        &self.region
    }
    /// The token lifetime.
    pub fn expires_in(&self) -> Duration {
        self.expires_in
    }
}

/// A signed IAM authentication token: the password for one login.
///
/// It is a bearer secret for up to 15 minutes, so `Debug` does not print it and it has no
/// `Display`: call [`AuthToken::as_str`] where the password is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// The token text, to send as the password.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Consumes the token, returning its text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(** redacted **)")
    }
}

/// Signs a token: the same bytes `aws rds generate-db-auth-token` prints for these inputs.
///
/// Pure and synchronous: no clock, no I/O. Credentials with a session token (from STS)
/// add the signed `X-Amz-Security-Token` parameter.
pub fn sign(params: &TokenParams, credentials: &Credentials, at: SystemTime) -> AuthToken {
    const SIGNED_HEADERS: &str = "&X-Amz-SignedHeaders=host";
    let formatted = format_amz_date(at);
    let (date_time, date) = (formatted.date_time(), formatted.date());
    let session_token = credentials.session_token();

    // The output is written once. The canonical query is the same pieces in sorted order,
    // which differs only by where the security token goes, so it is hashed from slices of
    // the output instead of being built a second time.
    let mut out = String::with_capacity(
        params.hostname.len()
            + 300
            + params.username.len() * 3
            + session_token.map_or(0, |t| t.len() * 3 / 2),
    );
    out.push_str(&params.hostname);
    out.push(':');
    push_decimal(&mut out, u64::from(params.port));
    out.push_str("/?");
    let head_start = out.len();
    out.push_str("Action=connect&DBUser=");
    encode_into(&mut out, &params.username);
    out.push_str("&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=");
    encode_into(&mut out, credentials.access_key_id());
    out.push_str("%2F");
    out.push_str(date);
    out.push_str("%2F");
    out.push_str(&params.region);
    out.push_str("%2Frds-db%2Faws4_request&X-Amz-Date=");
    out.push_str(date_time);
    out.push_str("&X-Amz-Expires=");
    push_decimal(&mut out, params.expires_in.as_secs());
    let head_end = out.len();
    out.push_str(SIGNED_HEADERS);
    let security_start = out.len();
    if let Some(token) = session_token {
        out.push_str("&X-Amz-Security-Token=");
        encode_into(&mut out, token);
    }
    let security_end = out.len();

    let mut hasher = Sha256::new();
    hasher.update(b"GET\n/\n");
    hasher.update(&out.as_bytes()[head_start..head_end]);
    hasher.update(&out.as_bytes()[security_start..security_end]);
    hasher.update(SIGNED_HEADERS.as_bytes());
    hasher.update(b"\nhost:");
    hasher.update(params.signed_host.as_bytes());
    hasher.update(b"\n\nhost\n");
    hasher.update(EMPTY_PAYLOAD_SHA256.as_bytes());
    let mut canonical_hash = [0u8; 64];
    hex_into(&hasher.finalize(), &mut canonical_hash);

    let mut string_to_sign = Vec::with_capacity(128);
    for part in [
        b"AWS4-HMAC-SHA256\n".as_slice(),
        date_time.as_bytes(),
        b"\n",
        date.as_bytes(),
        b"/",
        params.region.as_bytes(),
        b"/rds-db/aws4_request\n",
        &canonical_hash,
    ] {
        string_to_sign.extend_from_slice(part);
    }
    let key = signing_key(credentials.secret_access_key(), at, date, &params.region);

    out.push_str("&X-Amz-Signature=");
    out.push_str(&calculate_signature(key, &string_to_sign));
    AuthToken(out)
}

fn push_decimal(out: &mut String, n: u64) {
    let _ = write!(out, "{n}");
}

fn hex_into(bytes: &[u8], out: &mut [u8; 64]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().take(32).enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Reads the region from an RDS endpoint name: `*.REGION.rds.amazonaws.com(.cn)`.
///
/// ```
/// use rds_iam_auth::token::region_from_hostname;
/// assert_eq!(region_from_hostname("app.proxy-abc.eu-west-1.rds.amazonaws.com").as_deref(), Some("eu-west-1"));
/// assert_eq!(region_from_hostname("DB.cluster-x.CN-NORTH-1.rds.amazonaws.com.cn").as_deref(), Some("cn-north-1"));
/// assert_eq!(region_from_hostname("localhost"), None);
/// ```
pub fn region_from_hostname(hostname: &str) -> Option<String> {
    let host = hostname
        .strip_suffix('.')
        .unwrap_or(hostname)
        .to_ascii_lowercase();
    let before = [".rds.amazonaws.com", ".rds.amazonaws.com.cn"]
        .iter()
        .find_map(|suffix| host.strip_suffix(suffix))?;
    // NAME.[...].REGION: at least one label in front of the region.
    let (_, region) = before.rsplit_once('.')?;
    validate_region(region).ok().map(str::to_owned)
}

/// Checks that a region looks like an AWS region: `us-east-1`, `us-gov-west-1`,
/// `cn-north-1`, `eu-isoe-west-1`. Returns it unchanged.
pub fn validate_region(region: &str) -> Result<&str, TokenError> {
    let invalid = || TokenError::InvalidRegion(region.to_owned());
    let mut parts = region.split('-');
    let first = parts.next().ok_or_else(invalid)?;
    let labels: Vec<&str> = parts.collect();
    let Some((number, middle)) = labels.split_last() else {
        return Err(invalid());
    };
    let is_lower_word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    if first.len() != 2
        || !is_lower_word(first)
        || middle.is_empty()
        || !middle.iter().all(|s| is_lower_word(s))
        || number.is_empty()
        || number.len() > 2
        || !number.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    Ok(region)
}

/// Checks host name, port and user: everything of a token but its region.
pub(crate) fn validate_target(hostname: &str, port: u16, username: &str) -> Result<(), TokenError> {
    validate_hostname(hostname)?;
    if port == 0 {
        return Err(TokenError::InvalidPort);
    }
    if username.is_empty() {
        return Err(TokenError::EmptyUsername);
    }
    Ok(())
}

pub(crate) fn validate_hostname(hostname: &str) -> Result<(), TokenError> {
    let invalid = |reason| TokenError::InvalidHostname {
        hostname: hostname.to_owned(),
        reason,
    };
    if hostname.is_empty() {
        return Err(invalid("it is empty"));
    }
    if hostname.contains("://") {
        return Err(invalid(
            "give the bare endpoint name, without a scheme such as https://",
        ));
    }
    if hostname.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    if hostname.contains(':') {
        return Err(invalid(
            "it contains ':'; give the port separately (--port), not as host:port",
        ));
    }
    if let Some(c) = hostname
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(invalid(if c == '/' {
            "it contains '/'; give only the endpoint name, without a path"
        } else if c.is_whitespace() {
            "it contains white space"
        } else {
            "only letters, digits, '.', '-' and '_' are allowed in a host name"
        }));
    }
    Ok(())
}

/// RFC 3986 unreserved bytes: `A-Z a-z 0-9 - _ . ~`.
const UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'~';
        i += 1;
    }
    table
};

/// Appends `input` RFC 3986 encoded: unreserved bytes as they are, all else `%XX`.
///
/// Runs of unreserved bytes are copied as one slice: session tokens are long and mostly
/// unreserved, and this is the hottest loop of signing.
fn encode_into(out: &mut String, input: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = input.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if UNRESERVED[usize::from(b)] {
            continue;
        }
        // A non-empty run is unreserved ASCII, so it starts and ends on char boundaries;
        // `get` also makes the empty run after a multi-byte lead byte a no-op.
        if let Some(run) = input.get(run_start..i) {
            out.push_str(run);
        }
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
        run_start = i + 1;
    }
    if let Some(run) = input.get(run_start..) {
        out.push_str(run);
    }
}

/// The SigV4 signing key of (secret, date, region) for `rds-db`, from `aws-sigv4`.
///
/// Deriving it costs four HMACs and changes once a day per credentials, so the last one is
/// kept per thread, identified by a SHA-256 of the secret (the secret itself is not
/// copied): signing many tokens with the same credentials derives it once. The output does
/// not depend on the memo.
fn signing_key(secret: &str, at: SystemTime, date: &str, region: &str) -> [u8; 32] {
    use std::cell::RefCell;
    struct Memo {
        secret_hash: [u8; 32],
        date: String,
        region: String,
        key: [u8; 32],
    }
    thread_local! {
        static LAST: RefCell<Option<Memo>> = const { RefCell::new(None) };
    }
    let secret_hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(memo) = last.as_ref() {
            if memo.secret_hash == secret_hash && memo.date == date && memo.region == region {
                return memo.key;
            }
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(generate_signing_key(secret, at, region, "rds-db").as_ref());
        *last = Some(Memo {
            secret_hash,
            date: date.to_owned(),
            region: region.to_owned(),
            key,
        });
        key
    })
}

/// `YYYYMMDDTHHMMSSZ` (UTC), formatted once; the date is its first 8 characters.
///
/// `time` does the calendar; the digits are written here because `time`'s general
/// formatter (parsing a format description, writing through `io::Write`) costs more than
/// the rest of signing on this hot path.
fn format_amz_date(at: SystemTime) -> FormattedTime {
    let t = time::OffsetDateTime::from(at);
    let mut buf = *b"00000000T000000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    // Signing times are years 1970..=9999; anything else is clamped into 4 digits.
    put(0, 4, t.year().clamp(0, 9999) as u64);
    put(4, 2, u64::from(u8::from(t.month())));
    put(6, 2, u64::from(t.day()));
    put(9, 2, u64::from(t.hour()));
    put(11, 2, u64::from(t.minute()));
    put(13, 2, u64::from(t.second()));
    FormattedTime(buf)
}

/// An `X-Amz-Date` value: ASCII digits, `T` and `Z` only.
struct FormattedTime([u8; 16]);

impl FormattedTime {
    fn date_time(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
    fn date(&self) -> &str {
        self.date_time().get(..8).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }
    /// 2016-11-07T17:39:33Z, the time of botocore's test vectors.
    const T2016: u64 = 1_478_540_373;
    /// 2024-08-26T22:00:00Z
    const T2024: u64 = 1_724_709_600;

    fn token(
        host: &str,
        port: u16,
        user: &str,
        region: &str,
        creds: Credentials,
        secs: u64,
    ) -> String {
        let params = TokenParams::new(host, port, user, Some(region)).expect("valid params");
        sign(&params, &creds, at(secs)).into_string()
    }

    fn signature(token: &str) -> &str {
        token.rsplit("X-Amz-Signature=").next().unwrap_or_default()
    }

    #[test]
    fn golden_botocore_basic() {
        let t = token(
            "prod-instance.us-east-1.rds.amazonaws.com",
            3306,
            "someusername",
            "us-east-1",
            Credentials::from_keys("akid", "skid", None),
            T2016,
        );
        assert_eq!(
            t,
            "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=someusername&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20161107%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20161107T173933Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=d1138cdbc0ca63eec012ec0fc6c2267e03642168f5884a7795320d4c18374c61"
        );
    }

    #[test]
    fn golden_mysql_user() {
        let t = token(
            "host.us-east-1.amazonaws.com",
            3306,
            "mySQLUser",
            "us-east-1",
            Credentials::from_keys("access_key", "secret_key", None),
            T2016,
        );
        assert_eq!(
            signature(&t),
            "87ab58107ef49f1c311a412f98b7f976b0b5152ffb559f0d36c6c9a0c5e0e362"
        );
    }

    #[test]
    fn golden_2024() {
        let t = token(
            "prod-instance.us-east-1.rds.amazonaws.com",
            3306,
            "peccy",
            "us-east-1",
            Credentials::from_keys("akid", "secret", None),
            T2024,
        );
        assert_eq!(
            signature(&t),
            "dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89"
        );
        assert!(t.contains("&X-Amz-Date=20240826T220000Z&"));
    }

    #[test]
    fn golden_session_token() {
        let t = token(
            "mydb.123456789012.us-west-2.rds.amazonaws.com",
            5432,
            "iam_user",
            "us-west-2",
            Credentials::from_keys(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                Some("AQoDYXdzEJr//+session/token==".to_owned()),
            ),
            T2016,
        );
        assert_eq!(
            t,
            "mydb.123456789012.us-west-2.rds.amazonaws.com:5432/?Action=connect&DBUser=iam_user&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20161107%2Fus-west-2%2Frds-db%2Faws4_request&X-Amz-Date=20161107T173933Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=AQoDYXdzEJr%2F%2F%2Bsession%2Ftoken%3D%3D&X-Amz-Signature=047364df404f53b742a94bb554160d206aa4b725c55ba138e28fbd64edb5bdee"
        );
    }

    #[test]
    fn golden_username_needing_encoding() {
        let t = token(
            "prod-instance.us-east-1.rds.amazonaws.com",
            5432,
            "user+name@x.y/z=1&a b~*",
            "us-east-1",
            Credentials::from_keys("akid", "skid", None),
            T2016,
        );
        assert!(t.starts_with("prod-instance.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=user%2Bname%40x.y%2Fz%3D1%26a%20b~%2A&X-Amz-Algorithm="));
        assert_eq!(
            signature(&t),
            "ab9a8e94d6a203357ed1d9aeac98c02c655df9a83613f9e8b22941cab3778f6d"
        );
    }

    #[test]
    fn golden_mixed_case_host_port_443() {
        let t = token(
            "Prod-Instance.US-EAST-1.rds.amazonaws.com",
            443,
            "someusername",
            "us-east-1",
            Credentials::from_keys("akid", "skid", None),
            T2016,
        );
        assert!(t.starts_with("Prod-Instance.US-EAST-1.rds.amazonaws.com:443/?Action=connect&"));
        assert_eq!(
            signature(&t),
            "289116e2abe3db2b09962194992765bef1bb70285fe1c387dcfdd997149d9a98"
        );
    }

    #[test]
    fn region_is_read_from_endpoint_names() {
        for (host, region) in [
            ("a.proxy-abc.us-east-1.rds.amazonaws.com", "us-east-1"),
            (
                "ro.endpoint.proxy-abc.eu-central-2.rds.amazonaws.com",
                "eu-central-2",
            ),
            (
                "db.cluster-ro-x.cn-north-1.rds.amazonaws.com.cn",
                "cn-north-1",
            ),
            ("db.x.us-gov-west-1.rds.amazonaws.com.", "us-gov-west-1"),
        ] {
            assert_eq!(
                region_from_hostname(host).as_deref(),
                Some(region),
                "{host}"
            );
            let p = TokenParams::new(host.trim_end_matches('.'), 5432, "u", None).expect(host);
            assert_eq!(p.region(), region);
        }
        for host in [
            "localhost",
            "rds.amazonaws.com",
            "us-east-1.rds.amazonaws.com",
            "db.notaregion.rds.amazonaws.com",
            "db.us-east-1.rds.amazonaws.com.evil.example",
        ] {
            assert_eq!(region_from_hostname(host), None, "{host}");
        }
    }

    #[test]
    fn missing_region_names_both_fixes() {
        let err = TokenParams::new("localhost", 5432, "u", None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--region"), "{msg}");
        assert!(msg.contains("REGION.rds.amazonaws.com"), "{msg}");
    }

    #[test]
    fn bad_inputs_are_refused_with_reasons() {
        let e = |h: &str, p: u16, u: &str, r: Option<&str>| {
            TokenParams::new(h, p, u, r).unwrap_err().to_string()
        };
        assert!(e("https://db.x", 5432, "u", Some("us-east-1")).contains("without a scheme"));
        assert!(e("", 5432, "u", Some("us-east-1")).contains("empty"));
        assert!(e("db.x:5432", 5432, "u", Some("us-east-1")).contains("--port"));
        assert!(e("db x", 5432, "u", Some("us-east-1")).contains("white space"));
        assert!(e("db.x", 0, "u", Some("us-east-1")).contains("port 0"));
        assert!(e("db.x", 5432, "", Some("us-east-1")).contains("user name is empty"));
        for region in [
            "",
            "useast1",
            "US-EAST-1",
            "us-east",
            "us-east-1a",
            "u-east-1",
        ] {
            assert!(
                e("db.x", 5432, "u", Some(region)).contains("invalid region"),
                "{region}"
            );
        }
        for region in [
            "us-east-1",
            "us-gov-west-1",
            "eu-isoe-west-1",
            "ap-southeast-5",
        ] {
            assert!(TokenParams::new("db.x", 1, "u", Some(region)).is_ok());
        }
    }

    #[test]
    fn expiry_is_capped_at_900_seconds() {
        let p = TokenParams::new("db.x", 5432, "u", Some("us-east-1")).expect("valid");
        assert_eq!(p.expires_in(), Duration::from_secs(900));
        assert!(p.clone().with_expires_in(Duration::from_secs(901)).is_err());
        assert!(p.clone().with_expires_in(Duration::ZERO).is_err());
        let short = p
            .with_expires_in(Duration::from_secs(60))
            .expect("60 s is fine");
        let t = sign(&short, &Credentials::from_keys("a", "b", None), at(T2016));
        assert!(t.as_str().contains("&X-Amz-Expires=60&"));
    }

    #[test]
    fn debug_does_not_print_the_token() {
        let p = TokenParams::new("db.x", 5432, "u", Some("us-east-1")).expect("valid");
        let t = sign(&p, &Credentials::from_keys("a", "b", None), at(T2016));
        assert_eq!(format!("{t:?}"), "AuthToken(** redacted **)");
    }

    #[test]
    fn the_signing_key_memo_never_mixes_credentials() {
        // Alternate secrets, regions and days on one thread: each token must equal the
        // one signed by a fresh thread (no memo).
        let cases = [
            ("akid", "skid", "us-east-1", T2016),
            ("akid", "other", "us-east-1", T2016),
            ("akid", "skid", "eu-west-1", T2016),
            ("akid", "skid", "us-east-1", T2016 + 86_400),
            ("akid", "skid", "us-east-1", T2016),
        ];
        let sign_case = |(k, s, r, t): (&str, &str, &str, u64)| {
            let p = TokenParams::new("db.x", 5432, "u", Some(r)).expect("valid");
            sign(&p, &Credentials::from_keys(k, s, None), at(t)).into_string()
        };
        for case in cases {
            let fresh = std::thread::spawn(move || sign_case(case))
                .join()
                .expect("thread");
            assert_eq!(sign_case(case), fresh, "{case:?}");
        }
    }

    #[test]
    fn amz_dates() {
        let date = |secs| format_amz_date(at(secs)).date_time().to_owned();
        assert_eq!(date(0), "19700101T000000Z");
        assert_eq!(date(17_112 * 86_400), "20161107T000000Z");
        assert_eq!(date(11_016 * 86_400), "20000229T000000Z");
        assert_eq!(date(20_088 * 86_400 + 86_399), "20241231T235959Z");
        assert_eq!(format_amz_date(at(T2016)).date(), "20161107");
    }
}
