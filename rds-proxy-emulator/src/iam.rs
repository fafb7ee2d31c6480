//! The identities the stack knows: long-term principals from the configuration and the
//! session credentials the STS stand-in has issued. Shared by STS (who is calling?) and the
//! proxy (who signed this token, and may that role `rds-db:connect`?).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use time::OffsetDateTime;

use crate::config::{account_of_arn, role_name_of_arn, RoleConfig, StackConfig};
use crate::token::KnownCredential;

/// Temporary credentials issued for a role (what `AssumeRole` returns).
#[derive(Clone, PartialEq, Eq)]
pub struct TemporaryCredentials {
    /// `ASIA...`.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token (contains `/`, `+` and `=`, as real ones do).
    pub session_token: String,
    /// Expiration.
    pub expiration: OffsetDateTime,
    /// The role assumed.
    pub role_arn: String,
    /// `arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`.
    pub assumed_role_arn: String,
    /// `AROA...:SESSION`.
    pub assumed_role_id: String,
}

impl std::fmt::Debug for TemporaryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporaryCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expiration", &self.expiration)
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish()
    }
}

/// Who holds an access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's ARN (principal ARN, or the assumed-role session ARN).
    pub arn: String,
    /// Account id.
    pub account: String,
    /// `UserId` as `GetCallerIdentity` reports it.
    pub user_id: String,
    /// The role behind session credentials (`None` for long-term keys).
    pub role_arn: Option<String>,
}

/// The identity store.
#[derive(Debug)]
pub struct Iam {
    config: Arc<StackConfig>,
    sessions: Mutex<HashMap<String, TemporaryCredentials>>,
    /// Logins still to be refused whatever their token (see [`Iam::refuse_next_logins`]).
    forced_refusals: AtomicU64,
}

const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

impl Iam {
    /// A store for `config`'s principals and roles, with no sessions yet.
    pub fn new(config: Arc<StackConfig>) -> Iam {
        Iam {
            config,
            sessions: Mutex::new(HashMap::new()),
            forced_refusals: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// Looks up an access key: its credential (for signature checks) and who holds it.
    pub fn lookup(&self, access_key_id: &str) -> Option<(KnownCredential, Caller)> {
        if let Some(p) = self
            .config
            .principals
            .iter()
            .find(|p| p.access_key_id == access_key_id)
        {
            let account = account_of_arn(&p.arn).unwrap_or_default().to_string();
            return Some((
                KnownCredential {
                    secret_access_key: p.secret_access_key.clone(),
                    session_token: None,
                    expires_at: None,
                },
                Caller {
                    arn: p.arn.clone(),
                    user_id: format!("AIDA{}", &p.access_key_id.get(4..).unwrap_or("")),
                    account,
                    role_arn: None,
                },
            ));
        }
        let sessions = self.sessions.lock().ok()?;
        let s = sessions.get(access_key_id)?;
        Some((
            KnownCredential {
                secret_access_key: s.secret_access_key.clone(),
                session_token: Some(s.session_token.clone()),
                expires_at: Some(s.expiration),
            },
            Caller {
                arn: s.assumed_role_arn.clone(),
                account: account_of_arn(&s.role_arn).unwrap_or_default().to_string(),
                user_id: s.assumed_role_id.clone(),
                role_arn: Some(s.role_arn.clone()),
            },
        ))
    }

    /// The role configuration for an ARN.
    pub fn role(&self, arn: &str) -> Option<&RoleConfig> {
        self.config.roles.iter().find(|r| r.arn == arn)
    }

    /// Issues session credentials for `role_arn` expiring at `expiration` (no trust check:
    /// [`crate::sts`] does that; tests use this to make, e.g., already-expired credentials).
    pub fn issue(
        &self,
        role_arn: &str,
        session_name: &str,
        expiration: OffsetDateTime,
    ) -> Option<TemporaryCredentials> {
        let role = self.role(role_arn)?;
        let name = role_name_of_arn(&role.arn)?;
        let account = account_of_arn(&role.arn)?;
        let role_id = format!("AROA{}", random_from(UPPER_ALNUM, 17));
        let creds = TemporaryCredentials {
            access_key_id: format!("ASIA{}", random_from(UPPER_ALNUM, 16)),
            secret_access_key: base64(&random_bytes(30)),
            // Real session tokens are long base64 strings; make sure ours carry `/`, `+`
            // and `=` so that clients' encoding of X-Amz-Security-Token is exercised.
            session_token: format!(
                "IQoJb3JpZ2luX2VjE/+{}==",
                base64(&random_bytes(240)).trim_end_matches('=')
            ),
            expiration: expiration.replace_nanosecond(0).unwrap_or(expiration),
            role_arn: role.arn.clone(),
            assumed_role_arn: format!("arn:aws:sts::{account}:assumed-role/{name}/{session_name}"),
            assumed_role_id: format!("{role_id}:{session_name}"),
        };
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(creds.access_key_id.clone(), creds.clone());
        }
        Some(creds)
    }

    /// Revokes the session credentials with this access key, as IAM's "revoke active
    /// sessions" does: tokens they sign are refused from now on, as with unknown keys.
    /// Returns whether such a session existed.
    pub fn revoke(&self, access_key_id: &str) -> bool {
        self.sessions
            .lock()
            .map(|mut s| s.remove(access_key_id).is_some())
            .unwrap_or(false)
    }

    /// Refuses the next `n` IAM logins that would have succeeded, with the proxy's IAM
    /// message: a transient refusal (an IAM hiccup at the proxy) for testing clients that
    /// react to one.
    pub fn refuse_next_logins(&self, n: u64) {
        self.forced_refusals.store(n, Ordering::SeqCst);
    }

    /// Whether `caller` (session credentials of a role) may `rds-db:connect` to `resource`.
    pub fn may_connect(&self, caller: &Caller, resource: &str) -> bool {
        let Some(role_arn) = &caller.role_arn else {
            return false;
        };
        let forced = self
            .forced_refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if forced.is_ok() {
            return false;
        }
        self.role(role_arn).is_some_and(|r| {
            r.rds_db_connect
                .iter()
                .any(|pattern| wildcard_match(pattern.as_bytes(), resource.as_bytes()))
        })
    }
}

/// `n` bytes from the system's random generator.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    if aws_lc_rs::rand::fill(&mut buf).is_err() {
        // The system RNG does not fail on Linux; fall back to the clock rather than panic.
        let seed = OffsetDateTime::now_utc().unix_timestamp_nanos();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(31);
        }
    }
    buf
}

/// `n` random characters of `alphabet` (at most 256 characters long; a power of two
/// keeps them uniform).
pub(crate) fn random_from(alphabet: &[u8], n: usize) -> String {
    random_bytes(n)
        .iter()
        .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
        .collect()
}

/// IAM-style resource matching: `*` any run of characters, `?` one character.
///
/// ```
/// use rds_proxy_emulator::iam::wildcard_match;
/// assert!(wildcard_match(b"arn:aws:rds-db:*:1:dbuser:prx-*/app_user", b"arn:aws:rds-db:us-east-1:1:dbuser:prx-x/app_user"));
/// assert!(!wildcard_match(b"arn:aws:rds-db:*:1:dbuser:prx-*/app_user", b"arn:aws:rds-db:us-east-1:1:dbuser:prx-x/other"));
/// ```
pub fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Standard base64 with padding.
pub(crate) fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known() {
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn issue_and_lookup() {
        let iam = Iam::new(Arc::new(StackConfig::demo()));
        let role = "arn:aws:iam::222222222222:role/proxy-cross-account-rds-connect-role";
        let exp = OffsetDateTime::now_utc() + time::Duration::hours(1);
        let c = iam.issue(role, "s1", exp).unwrap();
        assert!(c.access_key_id.starts_with("ASIA") && c.access_key_id.len() == 20);
        let (known, caller) = iam.lookup(&c.access_key_id).unwrap();
        assert_eq!(
            known.session_token.as_deref(),
            Some(c.session_token.as_str())
        );
        assert_eq!(
            caller.arn,
            "arn:aws:sts::222222222222:assumed-role/proxy-cross-account-rds-connect-role/s1"
        );
        let resource = iam.config().dbuser_arn("app_user");
        assert!(iam.may_connect(&caller, &resource));
        assert!(!iam.may_connect(&caller, &iam.config().dbuser_arn("other")));
        assert!(iam.issue("arn:aws:iam::1:role/none", "s", exp).is_none());
    }
}
