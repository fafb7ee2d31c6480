//! The Secrets Manager stand-in: a store of versioned secrets ([`SecretStore`]) and the
//! `GetSecretValue` / `PutSecretValue` operations over the JSON protocol
//! ([`SecretsManager`], served by [`crate::aws_json`]).
//!
//! Who may read a secret follows the three checks of cross-account access in the
//! Secrets Manager user guide ("Access AWS Secrets Manager secrets from a different
//! account"), reduced to the two the configuration describes:
//!
//! | situation | HTTP | `__type`, message |
//! |---|---|---|
//! | caller not in the secret's resource policy (`readers`) | 400 | `AccessDeniedException`, `User: CALLER is not authorized to perform: secretsmanager:GetSecretValue on resource: SECRET because no resource-based policy allows the secretsmanager:GetSecretValue action` |
//! | secret encrypted with the AWS managed key `aws/secretsmanager`, caller in another account | 400 | `AccessDeniedException`, `Access to KMS is not allowed` (that key's policy trusts its own account only) |
//! | no such secret (name, or ARN with this region and the caller's account) | 400 | `ResourceNotFoundException`, `Secrets Manager can't find the specified secret.` |
//! | ARN of another account that does not exist | 400 | `AccessDeniedException` (no resource policy exists to allow it) |
//! | no version with that `VersionId` / `VersionStage` | 400 | `ResourceNotFoundException` |
//!
//! A name is looked up in the caller's own account, as AWS does; reading another account's
//! secret takes its ARN. `PutSecretValue` is allowed to callers of the secret's own account.
//! Staging labels move as in the service: a label given to a new version leaves the
//! version that had it; when `AWSCURRENT` moves, the version that had it becomes
//! `AWSPREVIOUS`.

use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::aws_json::{
    caller_is_one_of, epoch_seconds, required_string, string_member, JsonError, JsonService,
};
use crate::config::{account_of_arn, KmsKey, SecretConfig};
use crate::control::{Control, ServiceFault};
use crate::iam::{random_bytes, random_from, Caller, Iam};

/// The staging label of the version clients should use.
pub const AWSCURRENT: &str = "AWSCURRENT";
/// The staging label of a version being rotated in.
pub const AWSPENDING: &str = "AWSPENDING";
/// The staging label of the version AWSCURRENT had before it last moved.
pub const AWSPREVIOUS: &str = "AWSPREVIOUS";

const NOT_FOUND: &str = "Secrets Manager can't find the specified secret.";

/// A secret and its versions.
struct Secret {
    arn: String,
    name: String,
    account: String,
    readers: Vec<String>,
    kms_key: KmsKey,
    versions: Vec<Version>,
}

struct Version {
    id: String,
    value: String,
    stages: Vec<String>,
    created: OffsetDateTime,
}

/// One version of a secret as read from the store. `Debug` does not show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretVersion {
    /// The secret's ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// The version's id (a UUID).
    pub version_id: String,
    /// The secret string.
    pub value: String,
    /// Its staging labels.
    pub stages: Vec<String>,
    /// When the version was created.
    pub created: OffsetDateTime,
}

impl std::fmt::Debug for SecretVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVersion")
            .field("arn", &self.arn)
            .field("version_id", &self.version_id)
            .field("value", &"<redacted>")
            .field("stages", &self.stages)
            .finish()
    }
}

/// Which version to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector<'a> {
    /// The version with this staging label.
    Stage(&'a str),
    /// The version with this id.
    Id(&'a str),
}

/// The secrets of a stack, in memory. Shared by the stand-in (clients' reads), the proxy
/// (the password of `auth = "secret"` users, read at each login) and rotation.
pub struct SecretStore {
    region: String,
    secrets: Mutex<Vec<Secret>>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// A version id in the shape Secrets Manager uses (a random UUID).
fn new_version_id() -> String {
    let h = hex::encode(random_bytes(16));
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A new database password: 32 characters from a 64-character alphabet (192 bits),
/// without the characters RDS excludes from generated passwords (`/`, `@`, `"`, space).
pub fn generate_password() -> String {
    random_from(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        32,
    )
}

/// The secret string of an RDS database secret (the JSON RDS and its rotation functions
/// write).
pub fn rds_secret_string(
    host: &str,
    port: u16,
    username: &str,
    password: &str,
    dbname: &str,
) -> String {
    json!({
        "engine": "postgres",
        "host": host,
        "port": port,
        "username": username,
        "password": password,
        "dbname": dbname,
    })
    .to_string()
}

/// The `password` of an RDS database secret string.
pub fn password_of(secret_string: &str) -> Option<String> {
    let v: Value = serde_json::from_str(secret_string).ok()?;
    v.get("password")?.as_str().map(str::to_string)
}

/// `secret_string` with its `password` replaced (other members kept).
pub fn with_password(secret_string: &str, password: &str) -> Option<String> {
    let mut v: Map<String, Value> = serde_json::from_str(secret_string).ok()?;
    v.insert("password".into(), Value::String(password.into()));
    Some(Value::Object(v).to_string())
}

impl SecretStore {
    /// An empty store for `region`.
    pub fn new(region: impl Into<String>) -> SecretStore {
        SecretStore {
            region: region.into(),
            secrets: Mutex::new(Vec::new()),
        }
    }

    /// Creates the secret `config` describes with a first version (`AWSCURRENT`) holding
    /// `value`; returns its ARN (the name, `-` and six random characters, as AWS makes them).
    pub fn create(&self, config: &SecretConfig, value: String, now: OffsetDateTime) -> String {
        let suffix = random_from(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            6,
        );
        let arn = format!(
            "arn:aws:secretsmanager:{}:{}:secret:{}-{suffix}",
            self.region, config.account, config.name
        );
        let secret = Secret {
            arn: arn.clone(),
            name: config.name.clone(),
            account: config.account.clone(),
            readers: config.readers.clone(),
            kms_key: config.kms_key,
            versions: vec![Version {
                id: new_version_id(),
                value,
                stages: vec![AWSCURRENT.into()],
                created: now,
            }],
        };
        if let Ok(mut secrets) = self.secrets.lock() {
            secrets.push(secret);
        }
        arn
    }

    /// The ARN of the secret named `name`.
    pub fn arn_of(&self, name: &str) -> Option<String> {
        let secrets = self.secrets.lock().ok()?;
        secrets
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.arn.clone())
    }

    /// Finds a secret by ARN (full, or without the random suffix) or by name within
    /// `account`; an ARN of another region finds nothing.
    fn position(secrets: &[Secret], region: &str, secret_id: &str, account: &str) -> Option<usize> {
        if let Some(rest) = secret_id.strip_prefix("arn:") {
            let parts: Vec<&str> = rest.splitn(6, ':').collect();
            if parts.len() != 6
                || parts[1] != "secretsmanager"
                || parts[2] != region
                || parts[4] != "secret"
            {
                return None;
            }
            return secrets.iter().position(|s| {
                s.arn == secret_id || s.arn.get(..s.arn.len() - 7) == Some(secret_id)
            });
        }
        secrets
            .iter()
            .position(|s| s.name == secret_id && s.account == account)
    }

    /// Reads a version of a secret by name or ARN (no access checks: for the proxy, the
    /// stack and tests).
    pub fn read(&self, secret_id: &str, selector: VersionSelector<'_>) -> Option<SecretVersion> {
        let secrets = self.secrets.lock().ok()?;
        let secret = secrets
            .iter()
            .find(|s| s.name == secret_id || s.arn == secret_id)?;
        Self::version(secret, selector)
    }

    fn version(secret: &Secret, selector: VersionSelector<'_>) -> Option<SecretVersion> {
        let v = secret.versions.iter().find(|v| match selector {
            VersionSelector::Stage(stage) => v.stages.iter().any(|s| s == stage),
            VersionSelector::Id(id) => v.id == id,
        })?;
        Some(SecretVersion {
            arn: secret.arn.clone(),
            name: secret.name.clone(),
            version_id: v.id.clone(),
            value: v.value.clone(),
            stages: v.stages.clone(),
            created: v.created,
        })
    }

    /// The `password` of the AWSCURRENT version of the secret named `name`.
    pub fn current_password(&self, name: &str) -> Option<String> {
        password_of(&self.read(name, VersionSelector::Stage(AWSCURRENT))?.value)
    }

    /// Adds a version holding `value` with `stages` (each label leaves the version that had
    /// it; a moved AWSCURRENT leaves AWSPREVIOUS behind). Reusing a version id with the same
    /// value returns that version, with another value is `ResourceExistsException`.
    pub fn put(
        &self,
        secret_id: &str,
        value: String,
        stages: &[String],
        version_id: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<SecretVersion, JsonError> {
        let not_found = || JsonError::client("ResourceNotFoundException", NOT_FOUND);
        let mut secrets = self.secrets.lock().map_err(|_| not_found())?;
        let secret = secrets
            .iter_mut()
            .find(|s| s.name == secret_id || s.arn == secret_id)
            .ok_or_else(not_found)?;
        if let Some(id) = version_id {
            if let Some(existing) = secret.versions.iter().find(|v| v.id == id) {
                if existing.value != value {
                    return Err(JsonError::client(
                        "ResourceExistsException",
                        "You can't modify an existing version, you can only create a new version.",
                    ));
                }
                return Self::version(secret, VersionSelector::Id(id)).ok_or_else(not_found);
            }
        }
        let id = version_id
            .map(str::to_string)
            .unwrap_or_else(new_version_id);
        secret.versions.push(Version {
            id: id.clone(),
            value,
            stages: Vec::new(),
            created: now,
        });
        for stage in stages {
            Self::move_stage(secret, stage, &id);
        }
        Self::version(secret, VersionSelector::Id(&id)).ok_or_else(not_found)
    }

    /// Moves `stage` to the version `version_id` of the secret named `name` (rotation's
    /// finishSecret step moves AWSCURRENT, which also clears AWSPENDING from it).
    pub fn promote(&self, name: &str, version_id: &str) -> bool {
        let Ok(mut secrets) = self.secrets.lock() else {
            return false;
        };
        let Some(secret) = secrets.iter_mut().find(|s| s.name == name) else {
            return false;
        };
        if !secret.versions.iter().any(|v| v.id == version_id) {
            return false;
        }
        Self::move_stage(secret, AWSCURRENT, version_id);
        if let Some(v) = secret.versions.iter_mut().find(|v| v.id == version_id) {
            v.stages.retain(|s| s != AWSPENDING);
        }
        true
    }

    fn move_stage(secret: &mut Secret, stage: &str, to: &str) {
        let previous = secret
            .versions
            .iter()
            .find(|v| v.id != to && v.stages.iter().any(|s| s == stage))
            .map(|v| v.id.clone());
        if stage == AWSCURRENT && previous.is_some() {
            for v in &mut secret.versions {
                v.stages.retain(|s| s != AWSPREVIOUS);
            }
        }
        for v in &mut secret.versions {
            if v.id == to {
                if !v.stages.iter().any(|s| s == stage) {
                    v.stages.push(stage.to_string());
                }
            } else if v.stages.iter().any(|s| s == stage) {
                v.stages.retain(|s| s != stage);
                if stage == AWSCURRENT {
                    v.stages.push(AWSPREVIOUS.into());
                }
            }
        }
    }

    /// `GetSecretValue` for `caller`, with the resource policy and KMS checks.
    fn get_for(
        &self,
        caller: &Caller,
        input: &Map<String, Value>,
    ) -> Result<SecretVersion, JsonError> {
        let secret_id = required_string(input, "SecretId", "InvalidParameterException")?;
        let version_id = string_member(input, "VersionId")?;
        let stage = string_member(input, "VersionStage")?;
        let secrets = self
            .secrets
            .lock()
            .map_err(|_| JsonError::client("InternalServiceError", ""))?;
        let account = if secret_id.starts_with("arn:") {
            account_of_arn(secret_id).unwrap_or_default()
        } else {
            caller.account.as_str()
        };
        let denied = |resource: &str| {
            JsonError::client(
                "AccessDeniedException",
                format!(
                    "User: {} is not authorized to perform: secretsmanager:GetSecretValue on resource: {resource} because no resource-based policy allows the secretsmanager:GetSecretValue action",
                    caller.arn
                ),
            )
        };
        let Some(i) = Self::position(&secrets, &self.region, secret_id, account) else {
            return Err(if account != caller.account {
                denied(secret_id)
            } else {
                JsonError::client("ResourceNotFoundException", NOT_FOUND)
            });
        };
        let secret = &secrets[i];
        if !caller_is_one_of(caller, &secret.readers) {
            tracing::warn!(caller = %caller.arn, secret = %secret.arn, "GetSecretValue refused: not in the resource policy");
            return Err(denied(&secret.arn));
        }
        if secret.kms_key == KmsKey::AwsManaged && caller.account != secret.account {
            tracing::warn!(caller = %caller.arn, secret = %secret.arn, "GetSecretValue refused: the AWS managed key cannot be used from another account");
            return Err(JsonError::client(
                "AccessDeniedException",
                "Access to KMS is not allowed",
            ));
        }
        let found = match (version_id, stage) {
            (Some(id), _) => Self::version(secret, VersionSelector::Id(id))
                .filter(|v| stage.is_none_or(|s| v.stages.iter().any(|x| x == s))),
            (None, s) => Self::version(secret, VersionSelector::Stage(s.unwrap_or(AWSCURRENT))),
        };
        found.ok_or_else(|| {
            let what = match (version_id, stage) {
                (Some(id), _) => format!("VersionId: {id}"),
                (None, s) => format!("staging label: {}", s.unwrap_or(AWSCURRENT)),
            };
            JsonError::client(
                "ResourceNotFoundException",
                format!("Secrets Manager can't find the specified secret value for {what}"),
            )
        })
    }

    fn account_of(&self, secret_id: &str) -> Option<String> {
        let secrets = self.secrets.lock().ok()?;
        secrets
            .iter()
            .find(|s| s.name == secret_id || s.arn == secret_id)
            .map(|s| s.account.clone())
    }
}

/// The Secrets Manager service over a store.
#[derive(Debug)]
pub struct SecretsManager {
    iam: Arc<Iam>,
    store: Arc<SecretStore>,
    control: Arc<Control>,
}

impl SecretsManager {
    /// The service over `store`, authenticating with `iam`, obeying `control`'s
    /// Secrets Manager fault and counting there.
    pub fn new(iam: Arc<Iam>, store: Arc<SecretStore>, control: Arc<Control>) -> SecretsManager {
        SecretsManager {
            iam,
            store,
            control,
        }
    }

    fn put_for(
        &self,
        caller: &Caller,
        input: &Map<String, Value>,
        now: OffsetDateTime,
    ) -> Result<Value, JsonError> {
        let secret_id = required_string(input, "SecretId", "InvalidParameterException")?;
        let value = string_member(input, "SecretString")?.ok_or_else(|| {
            JsonError::client(
                "InvalidRequestException",
                "You must provide either SecretString or SecretBinary.",
            )
        })?;
        let version_id = string_member(input, "ClientRequestToken")?;
        let stages: Vec<String> = match input.get("VersionStages") {
            None | Some(Value::Null) => vec![AWSCURRENT.into()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    JsonError::client(
                        "SerializationException",
                        "VersionStages must be a list of strings",
                    )
                })?,
            Some(_) => {
                return Err(JsonError::client(
                    "SerializationException",
                    "VersionStages must be a list of strings",
                ))
            }
        };
        let in_account = self
            .store
            .account_of(secret_id)
            .is_some_and(|a| a == caller.account)
            || (secret_id.starts_with("arn:")
                && account_of_arn(secret_id) == Some(caller.account.as_str()));
        if !in_account {
            return Err(JsonError::client(
                "AccessDeniedException",
                format!("User: {} is not authorized to perform: secretsmanager:PutSecretValue on resource: {secret_id} because no resource-based policy allows the secretsmanager:PutSecretValue action", caller.arn),
            ));
        }
        let v = self
            .store
            .put(secret_id, value.to_string(), &stages, version_id, now)?;
        Ok(
            json!({ "ARN": v.arn, "Name": v.name, "VersionId": v.version_id, "VersionStages": v.stages }),
        )
    }
}

impl JsonService for SecretsManager {
    const NAME: &'static str = "Secrets Manager";
    const SIGNING_NAME: &'static str = "secretsmanager";
    const TARGET_PREFIX: &'static str = "secretsmanager";

    fn iam(&self) -> &Iam {
        &self.iam
    }

    fn has_operation(&self, operation: &str) -> bool {
        matches!(operation, "GetSecretValue" | "PutSecretValue")
    }

    fn call(
        &self,
        operation: &str,
        caller: &Caller,
        input: &Map<String, Value>,
        now: OffsetDateTime,
    ) -> Result<Value, JsonError> {
        match operation {
            "GetSecretValue" => {
                let v = self.store.get_for(caller, input)?;
                tracing::info!(caller = %caller.arn, secret = %v.arn, version = %v.version_id, "GetSecretValue answered");
                Ok(json!({
                    "ARN": v.arn,
                    "Name": v.name,
                    "VersionId": v.version_id,
                    "SecretString": v.value,
                    "VersionStages": v.stages,
                    "CreatedDate": epoch_seconds(v.created),
                }))
            }
            _ => self.put_for(caller, input, now),
        }
    }

    fn fault(&self) -> Option<watch::Receiver<ServiceFault>> {
        Some(self.control.secrets_watch())
    }

    fn received(&self, operation: &str) {
        if operation == "GetSecretValue" {
            Control::bump(&self.control.get_secret_value_calls);
        }
    }

    fn succeeded(&self, operation: &str) {
        if operation == "GetSecretValue" {
            Control::bump(&self.control.get_secret_value_succeeded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (SecretStore, String) {
        let store = SecretStore::new("us-east-1");
        let config = SecretConfig {
            name: "connectiontest/app_password_user".into(),
            account: "222222222222".into(),
            endpoint: "READ_ONLY".into(),
            readers: Vec::new(),
            kms_key: KmsKey::CustomerManaged,
        };
        let arn = store.create(
            &config,
            rds_secret_string("h", 5432, "u", "one", "d"),
            OffsetDateTime::now_utc(),
        );
        (store, arn)
    }

    #[test]
    fn arns_carry_region_account_name_and_six_characters() {
        let (_, arn) = store();
        let prefix = "arn:aws:secretsmanager:us-east-1:222222222222:secret:connectiontest/app_password_user-";
        assert!(arn.starts_with(prefix), "{arn}");
        assert_eq!(arn.len(), prefix.len() + 6);
    }

    #[test]
    fn rotation_moves_current_and_keeps_previous() {
        let (store, _) = store();
        let name = "connectiontest/app_password_user";
        let pending = store
            .put(
                name,
                rds_secret_string("h", 5432, "u", "two", "d"),
                &[AWSPENDING.into()],
                None,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        assert_eq!(store.current_password(name).as_deref(), Some("one"));
        assert!(store.promote(name, &pending.version_id));
        assert_eq!(store.current_password(name).as_deref(), Some("two"));
        let previous = store
            .read(name, VersionSelector::Stage(AWSPREVIOUS))
            .unwrap();
        assert_eq!(password_of(&previous.value).as_deref(), Some("one"));
        assert!(store
            .read(name, VersionSelector::Stage(AWSPENDING))
            .is_none());
        let current = store
            .read(name, VersionSelector::Stage(AWSCURRENT))
            .unwrap();
        assert_eq!(current.stages, vec![AWSCURRENT.to_string()]);
        assert!(!format!("{current:?}").contains("two"));
    }

    #[test]
    fn generated_passwords_differ_and_avoid_excluded_characters() {
        let (a, b) = (generate_password(), generate_password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(!a.contains(['/', '@', '"', ' ']));
    }
}
