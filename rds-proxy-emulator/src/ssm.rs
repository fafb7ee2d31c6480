//! The Parameter Store stand-in (AWS Systems Manager): `GetParameter`, `GetParameters` and
//! `GetParametersByPath` over the JSON protocol ([`crate::aws_json`], target prefix
//! `AmazonSSM`, SigV4 service `ssm`), on an in-memory store of `String` and `SecureString`
//! parameters.
//!
//! As in the service: a `SecureString` read without `WithDecryption` gives its ciphertext
//! (base64, never the value); `GetParametersByPath` returns the parameters directly under
//! the path, or all below it with `Recursive`, at most `MaxResults` (1 to 10, default 10)
//! a page with a `NextToken` for the rest; names not found go to `InvalidParameters` of
//! `GetParameters` and are `ParameterNotFound` for `GetParameter`. Only the configured
//! readers (principals, or sessions of the roles named) of the parameters' account may
//! read; anyone else gets `AccessDeniedException`.

use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::aws_json::{caller_is_one_of, epoch_seconds, required_string, JsonError, JsonService};
use crate::iam::{base64, Caller, Iam};
use crate::sigv4::sha256_hex;

/// A parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParameterType {
    /// Plain text.
    String,
    /// Encrypted with KMS; read in the clear only `WithDecryption`.
    SecureString,
}

impl ParameterType {
    fn as_str(self) -> &'static str {
        match self {
            ParameterType::String => "String",
            ParameterType::SecureString => "SecureString",
        }
    }
}

/// One parameter. `Debug` does not show a SecureString's value.
#[derive(Clone, PartialEq, Eq)]
pub struct Parameter {
    /// Its name: a path such as `/connectiontest/db/hostname`.
    pub name: String,
    /// `String` or `SecureString`.
    pub kind: ParameterType,
    /// The value in the clear.
    pub value: String,
    /// Version (1 for a new parameter).
    pub version: u64,
    /// Last change.
    pub last_modified: OffsetDateTime,
}

impl std::fmt::Debug for Parameter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = match self.kind {
            ParameterType::String => self.value.as_str(),
            ParameterType::SecureString => "<redacted>",
        };
        f.debug_struct("Parameter")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("value", &value)
            .finish()
    }
}

/// The parameters of one account in one region, and who may read them.
#[derive(Debug)]
pub struct ParameterStore {
    region: String,
    account: String,
    readers: Vec<String>,
    parameters: Mutex<Vec<Parameter>>,
}

/// The largest `MaxResults` of `GetParametersByPath` (and names of `GetParameters`).
pub const MAX_RESULTS: usize = 10;

impl ParameterStore {
    /// An empty store of `account` in `region`, readable by `readers`.
    pub fn new(
        region: impl Into<String>,
        account: impl Into<String>,
        readers: Vec<String>,
    ) -> ParameterStore {
        ParameterStore {
            region: region.into(),
            account: account.into(),
            readers,
            parameters: Mutex::new(Vec::new()),
        }
    }

    /// Creates or overwrites a parameter (an overwrite adds one to its version).
    pub fn put(
        &self,
        name: &str,
        kind: ParameterType,
        value: impl Into<String>,
        now: OffsetDateTime,
    ) {
        let Ok(mut params) = self.parameters.lock() else {
            return;
        };
        let value = value.into();
        match params.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.kind = kind;
                p.value = value;
                p.version += 1;
                p.last_modified = now;
            }
            None => params.push(Parameter {
                name: name.to_string(),
                kind,
                value,
                version: 1,
                last_modified: now,
            }),
        }
    }

    /// A parameter by name (no access checks: for the stack and tests).
    pub fn get(&self, name: &str) -> Option<Parameter> {
        self.parameters
            .lock()
            .ok()?
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    /// `arn:aws:ssm:REGION:ACCOUNT:parameter/NAME` (the name's leading `/` not doubled).
    fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:ssm:{}:{}:parameter/{}",
            self.region,
            self.account,
            name.trim_start_matches('/')
        )
    }

    /// A name given as a name or as this store's ARN.
    fn name_of<'a>(&self, id: &'a str) -> &'a str {
        let prefix = format!("arn:aws:ssm:{}:{}:parameter", self.region, self.account);
        match id.strip_prefix(&prefix) {
            Some(rest) if rest.starts_with('/') && id.len() > prefix.len() + 1 => {
                let name = &id[prefix.len()..];
                // `parameter/name` for names without a leading slash.
                if self.get(name).is_some() {
                    name
                } else {
                    &name[1..]
                }
            }
            _ => id,
        }
    }

    fn render(&self, p: &Parameter, decrypt: bool) -> Value {
        let value = match (p.kind, decrypt) {
            (ParameterType::SecureString, false) => ciphertext(&self.arn(&p.name), p),
            _ => p.value.clone(),
        };
        json!({
            "Name": p.name,
            "Type": p.kind.as_str(),
            "Value": value,
            "Version": p.version,
            "LastModifiedDate": epoch_seconds(p.last_modified),
            "ARN": self.arn(&p.name),
            "DataType": "text",
        })
    }

    fn check_reader(&self, caller: &Caller, action: &str, resource: &str) -> Result<(), JsonError> {
        if caller.account == self.account && caller_is_one_of(caller, &self.readers) {
            return Ok(());
        }
        tracing::warn!(caller = %caller.arn, %resource, "Parameter Store {action} refused");
        Err(JsonError::client(
            "AccessDeniedException",
            format!("User: {} is not authorized to perform: ssm:{action} on resource: {resource} because no identity-based policy allows the ssm:{action} action", caller.arn),
        ))
    }

    fn decrypt_flag(input: &Map<String, Value>) -> Result<bool, JsonError> {
        match input.get("WithDecryption") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(JsonError::client(
                "SerializationException",
                "WithDecryption must be a boolean",
            )),
        }
    }

    fn get_parameter(
        &self,
        caller: &Caller,
        input: &Map<String, Value>,
    ) -> Result<Value, JsonError> {
        let id = required_string(input, "Name", "ValidationException")?;
        let decrypt = Self::decrypt_flag(input)?;
        let name = self.name_of(id);
        self.check_reader(caller, "GetParameter", &self.arn(name))?;
        let p = self
            .get(name)
            .ok_or_else(|| JsonError::client("ParameterNotFound", ""))?;
        Ok(json!({ "Parameter": self.render(&p, decrypt) }))
    }

    fn get_parameters(
        &self,
        caller: &Caller,
        input: &Map<String, Value>,
    ) -> Result<Value, JsonError> {
        let names: Vec<&str> = match input.get("Names") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if names.is_empty() || names.len() > MAX_RESULTS {
            return Err(JsonError::client(
                "ValidationException",
                format!("1 validation error detected: Value at 'names' failed to satisfy constraint: Member must have length less than or equal to {MAX_RESULTS} and greater than or equal to 1"),
            ));
        }
        let decrypt = Self::decrypt_flag(input)?;
        let (mut found, mut invalid) = (Vec::new(), Vec::new());
        for id in names {
            let name = self.name_of(id);
            self.check_reader(caller, "GetParameters", &self.arn(name))?;
            match self.get(name) {
                Some(p) => found.push(self.render(&p, decrypt)),
                None => invalid.push(Value::String(id.to_string())),
            }
        }
        Ok(json!({ "Parameters": found, "InvalidParameters": invalid }))
    }

    fn get_parameters_by_path(
        &self,
        caller: &Caller,
        input: &Map<String, Value>,
    ) -> Result<Value, JsonError> {
        let path = required_string(input, "Path", "ValidationException")?;
        let decrypt = Self::decrypt_flag(input)?;
        let recursive = matches!(input.get("Recursive"), Some(Value::Bool(true)));
        let max = match input.get("MaxResults") {
            None | Some(Value::Null) => MAX_RESULTS,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=10) => n as usize,
                _ => {
                    return Err(JsonError::client(
                        "ValidationException",
                        format!("1 validation error detected: Value '{v}' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to {MAX_RESULTS}"),
                    ))
                }
            },
        };
        let start = match input.get("NextToken").and_then(Value::as_str) {
            None => 0,
            Some(token) => decode_token(token).ok_or_else(|| {
                JsonError::client("InvalidNextToken", "The specified token isn't valid.")
            })?,
        };
        self.check_reader(caller, "GetParametersByPath", &self.arn(path))?;
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut matching: Vec<Parameter> = self
            .parameters
            .lock()
            .map(|ps| {
                ps.iter()
                    .filter(|p| {
                        p.name.strip_prefix(&prefix).is_some_and(|rest| {
                            !rest.is_empty() && (recursive || !rest.contains('/'))
                        })
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        matching.sort_by(|a, b| a.name.cmp(&b.name));
        let page: Vec<Value> = matching
            .iter()
            .skip(start)
            .take(max)
            .map(|p| self.render(p, decrypt))
            .collect();
        let mut out = json!({ "Parameters": page });
        if start + max < matching.len() {
            out["NextToken"] = Value::String(encode_token(start + max));
        }
        Ok(out)
    }
}

/// What a SecureString looks like read without decryption: base64 of bytes derived from
/// the parameter (not its value), shaped like a KMS ciphertext blob.
fn ciphertext(arn: &str, p: &Parameter) -> String {
    let digest = sha256_hex(
        format!(
            "{arn}#{}#{}",
            p.version,
            p.last_modified.unix_timestamp_nanos()
        )
        .as_bytes(),
    );
    let mut blob = vec![1u8, 2, 2, 0, 0x78];
    blob.extend_from_slice(digest.as_bytes());
    base64(&blob)
}

/// Page tokens: opaque to clients, an offset inside.
fn encode_token(offset: usize) -> String {
    base64(format!("page:{offset}").as_bytes())
}

fn decode_token(token: &str) -> Option<usize> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("page:")?
        .parse()
        .ok()
}

/// The Parameter Store service over a store.
#[derive(Debug)]
pub struct ParameterStoreService {
    iam: Arc<Iam>,
    store: Arc<ParameterStore>,
}

impl ParameterStoreService {
    /// The service over `store`, authenticating with `iam`.
    pub fn new(iam: Arc<Iam>, store: Arc<ParameterStore>) -> ParameterStoreService {
        ParameterStoreService { iam, store }
    }
}

impl JsonService for ParameterStoreService {
    const NAME: &'static str = "Parameter Store";
    const SIGNING_NAME: &'static str = "ssm";
    const TARGET_PREFIX: &'static str = "AmazonSSM";

    fn iam(&self) -> &Iam {
        &self.iam
    }

    fn has_operation(&self, operation: &str) -> bool {
        matches!(
            operation,
            "GetParameter" | "GetParameters" | "GetParametersByPath"
        )
    }

    fn call(
        &self,
        operation: &str,
        caller: &Caller,
        input: &Map<String, Value>,
        _now: OffsetDateTime,
    ) -> Result<Value, JsonError> {
        match operation {
            "GetParameter" => self.store.get_parameter(caller, input),
            "GetParameters" => self.store.get_parameters(caller, input),
            _ => self.store.get_parameters_by_path(caller, input),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> Caller {
        Caller {
            arn: "arn:aws:iam::111111111111:role/app".into(),
            account: "111111111111".into(),
            user_id: "AIDA".into(),
            role_arn: None,
        }
    }

    fn store() -> ParameterStore {
        let s = ParameterStore::new("us-east-1", "111111111111", vec![reader().arn]);
        let now = OffsetDateTime::now_utc();
        for i in 0..12 {
            s.put(
                &format!("/app/db/p{i:02}"),
                ParameterType::String,
                format!("v{i}"),
                now,
            );
        }
        s.put("/app/db/nested/deep", ParameterType::String, "d", now);
        s.put(
            "/app/db/password",
            ParameterType::SecureString,
            "hunter2",
            now,
        );
        s
    }

    fn input(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn by_path_pages_by_ten_and_recurses_only_when_asked() {
        let s = store();
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = json!({ "Path": "/app/db", "MaxResults": 5 });
            if let Some(t) = &token {
                req["NextToken"] = Value::String(t.clone());
            }
            let page = s.get_parameters_by_path(&reader(), &input(req)).unwrap();
            let ps = page["Parameters"].as_array().unwrap();
            assert!(ps.len() <= 5);
            names.extend(ps.iter().map(|p| p["Name"].as_str().unwrap().to_string()));
            match page.get("NextToken").and_then(Value::as_str) {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        assert_eq!(names.len(), 13, "{names:?}");
        assert!(!names.iter().any(|n| n.contains("nested")));
        let all = s
            .get_parameters_by_path(
                &reader(),
                &input(json!({ "Path": "/app", "Recursive": true })),
            )
            .unwrap();
        assert_eq!(all["Parameters"].as_array().unwrap().len(), 10);
        assert!(all.get("NextToken").is_some());
        let e = s
            .get_parameters_by_path(
                &reader(),
                &input(json!({ "Path": "/app", "MaxResults": 11 })),
            )
            .unwrap_err();
        assert_eq!(e.code, "ValidationException");
    }

    #[test]
    fn secure_strings_need_decryption() {
        let s = store();
        let hidden = s
            .get_parameter(&reader(), &input(json!({ "Name": "/app/db/password" })))
            .unwrap();
        assert_ne!(hidden["Parameter"]["Value"], "hunter2");
        assert_eq!(hidden["Parameter"]["Type"], "SecureString");
        let clear = s
            .get_parameter(
                &reader(),
                &input(json!({ "Name": "/app/db/password", "WithDecryption": true })),
            )
            .unwrap();
        assert_eq!(clear["Parameter"]["Value"], "hunter2");
        assert_eq!(
            clear["Parameter"]["ARN"],
            "arn:aws:ssm:us-east-1:111111111111:parameter/app/db/password"
        );
    }

    #[test]
    fn strangers_are_refused_and_missing_names_reported() {
        let s = store();
        let mut other = reader();
        other.arn = "arn:aws:iam::111111111111:role/other".into();
        let e = s
            .get_parameter(&other, &input(json!({ "Name": "/app/db/p01" })))
            .unwrap_err();
        assert_eq!(e.code, "AccessDeniedException");
        let e = s
            .get_parameter(&reader(), &input(json!({ "Name": "/app/none" })))
            .unwrap_err();
        assert_eq!(e.code, "ParameterNotFound");
        let r = s
            .get_parameters(
                &reader(),
                &input(json!({ "Names": ["/app/db/p01", "/app/none"] })),
            )
            .unwrap();
        assert_eq!(r["InvalidParameters"], json!(["/app/none"]));
        assert_eq!(r["Parameters"].as_array().unwrap().len(), 1);
    }
}
