//! SigV4 building blocks shared by the STS stand-in (header-signed requests) and the token
//! verifier (query-presigned URLs). Written from the AWS specification, independent of any
//! signing library in this workspace.

use aws_lc_rs::{digest, hmac};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// `YYYYMMDDTHHMMSSZ` (SigV4's `X-Amz-Date`).
const AMZ_DATE: &[FormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// Hex SHA-256 of the empty payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The only algorithm SigV4 defines.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// RFC 3986 encoding as SigV4 wants it: everything but `A-Za-z0-9-_.~` is `%XX` (upper hex).
///
/// ```
/// assert_eq!(rds_proxy_emulator::sigv4::uri_encode("a b+c/~*"), "a%20b%2Bc%2F~%2A");
/// ```
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`); `None` on a malformed
/// escape or a result that is not UTF-8.
///
/// ```
/// use rds_proxy_emulator::sigv4::percent_decode;
/// assert_eq!(percent_decode("a%20b+c", true).as_deref(), Some("a b c"));
/// assert_eq!(percent_decode("a%2", false), None);
/// ```
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

/// The SigV4 signing key for `secret`, `date` (`YYYYMMDD`), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// The string to sign for a canonical request.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Hex signature of `string_to_sign` with the key of [`signing_key`].
pub fn signature(key: &[u8], string_to_sign: &str) -> String {
    hex::encode(hmac(key, string_to_sign.as_bytes()))
}

/// Constant-time comparison of two signatures (as strings).
pub fn signatures_equal(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The canonical query string of decoded `(name, value)` pairs: encoded, sorted by name
/// then value, joined with `&`.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    // Formatting a UTC date-time with numeric components only fails for years outside
    // 0..=9999, which SigV4 cannot express either.
    t.format(AMZ_DATE).unwrap_or_default()
}

/// Parses `YYYYMMDDTHHMMSSZ` (exactly: 16 ASCII characters, digits where digits belong).
pub fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    if s.len() != 16 || !s.is_ascii() {
        return None;
    }
    PrimitiveDateTime::parse(s, AMZ_DATE)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

/// A parsed `X-Amz-Credential` / `Credential=` value: `AKID/DATE/REGION/SERVICE/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialScope {
    /// Access key id.
    pub access_key_id: String,
    /// `YYYYMMDD`.
    pub date: String,
    /// Region.
    pub region: String,
    /// Service (`sts`, `rds-db`).
    pub service: String,
}

impl CredentialScope {
    /// Parses `AKID/DATE/REGION/SERVICE/aws4_request`.
    pub fn parse(s: &str) -> Option<CredentialScope> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() != 5 || parts[4] != "aws4_request" || parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(CredentialScope {
            access_key_id: parts[0].to_string(),
            date: parts[1].to_string(),
            region: parts[2].to_string(),
            service: parts[3].to_string(),
        })
    }

    /// `DATE/REGION/SERVICE/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }

    /// The hex signature, with `secret_access_key` in this scope, of a canonical request
    /// signed at `amz_date` (what a verifier compares the presented signature with).
    pub fn sign(&self, secret_access_key: &str, amz_date: &str, canonical_request: &str) -> String {
        let key = signing_key(secret_access_key, &self.date, &self.region, &self.service);
        signature(
            &key,
            &string_to_sign(amz_date, &self.scope(), canonical_request),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        let t = parse_amz_date("20161107T173933Z").unwrap();
        assert_eq!(format_amz_date(t), "20161107T173933Z");
        assert!(parse_amz_date("20161307T173933Z").is_none());
        assert!(parse_amz_date("2016110717393Z").is_none());
        assert!(parse_amz_date("+0161107T173933Z").is_none());
    }

    #[test]
    fn aws_documented_signing_key() {
        // From the AWS SigV4 documentation ("Examples of how to derive a signing key").
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn encode_decode() {
        let s = "user+name@x.y/z=1&a b~*";
        assert_eq!(uri_encode(s), "user%2Bname%40x.y%2Fz%3D1%26a%20b~%2A");
        assert_eq!(percent_decode(&uri_encode(s), false).unwrap(), s);
    }
}
