//! Whether a client's password (its IAM token) admits it as a db user: every token
//! acceptance rule, in one function.

use time::OffsetDateTime;

use super::endpoint::EndpointSpec;
use super::messages::{msg_iam_failed, msg_no_credentials, SQLSTATE_IAM};
use crate::config::{DbUserConfig, StackConfig};
use crate::iam::{Caller, Iam};
use crate::token::{verify_token, Expected};

/// A login the token admits.
#[derive(Debug)]
pub(super) struct Accepted<'a> {
    /// The db user, with the proxy's secret for the backend login.
    pub(super) db_user: &'a DbUserConfig,
    /// Who signed the token.
    pub(super) caller: Caller,
}

/// A refused login: what the client is told, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    /// SQLSTATE of the FATAL sent to the client.
    pub(super) sqlstate: &'static str,
    /// The RDS Proxy text the client sees.
    pub(super) message: String,
    /// The precise reason, for the proxy's log only: RDS Proxy tells the client no more
    /// than its message, and neither does the stand-in.
    pub(super) reason: String,
}

/// Decides whether `token`, presented by `user` to the endpoint `spec` at `now`, admits
/// the login.
///
/// In order: the proxy holds a secret for `user`; the token verifies
/// ([`crate::token::verify_token`]: its shape, signature, host, port, region and `DBUser`,
/// its `X-Amz-Expires` window and the clock-skew allowance for tokens from the future,
/// and signing credentials that STS issued and that have not expired or been revoked); it
/// was signed less than `token_lifetime_seconds` ago; and its caller may `rds-db:connect`
/// on `arn:aws:rds-db:REGION:ACCOUNT:dbuser:prx-ID/USER`.
pub(super) fn authorize<'c>(
    config: &'c StackConfig,
    iam: &Iam,
    spec: &EndpointSpec,
    user: &str,
    token: &str,
    now: OffsetDateTime,
) -> Result<Accepted<'c>, Refusal> {
    let Some(db_user) = config.proxy.db_users.iter().find(|u| u.name == user) else {
        return Err(Refusal {
            sqlstate: SQLSTATE_IAM,
            message: msg_no_credentials(user),
            reason: "no secret (credentials) for this db user".to_string(),
        });
    };
    let iam_failed = |reason: String| Refusal {
        sqlstate: SQLSTATE_IAM,
        message: msg_iam_failed(user),
        reason: format!("IAM authentication failed: {reason}"),
    };
    let expected = Expected {
        hostname: &spec.hostname,
        port: spec.port,
        region: &config.region,
        db_user: user,
        now,
        max_clock_skew: time::Duration::seconds(i64::from(config.proxy.max_clock_skew_seconds)),
    };
    let mut caller = None;
    let verified = verify_token(token, &expected, |akid| {
        iam.lookup(akid).map(|(known, c)| {
            caller = Some(c);
            known
        })
    })
    .map_err(|reason| iam_failed(reason.to_string()))?;
    let lifetime = time::Duration::seconds(i64::from(config.proxy.token_lifetime_seconds));
    if expected.now - verified.signed_at >= lifetime {
        return Err(iam_failed(format!(
            "token signed at {} is older than token_lifetime_seconds ({} s)",
            verified.signed_at,
            lifetime.whole_seconds()
        )));
    }
    let Some(caller) = caller else {
        return Err(iam_failed("no caller for the access key".to_string()));
    };
    let resource = config.dbuser_arn(user);
    if !iam.may_connect(&caller, &resource) {
        return Err(iam_failed(format!(
            "{} is not allowed rds-db:connect on {resource}",
            caller.arn
        )));
    }
    Ok(Accepted { db_user, caller })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn setup() -> (StackConfig, Iam, EndpointSpec) {
        let config = StackConfig::demo();
        let iam = Iam::new(Arc::new(config.clone()));
        let e = &config.proxy.endpoints[0];
        let spec = EndpointSpec {
            name: e.name.clone(),
            hostname: e.hostname.clone(),
            port: e.port,
            target_role: e.target_role,
        };
        (config, iam, spec)
    }

    #[test]
    fn a_user_without_a_secret_is_refused_before_the_token_is_read() {
        let (config, iam, spec) = setup();
        let refusal = authorize(
            &config,
            &iam,
            &spec,
            "nobody",
            "x",
            OffsetDateTime::now_utc(),
        )
        .expect_err("refused");
        assert_eq!(
            refusal,
            Refusal {
                sqlstate: SQLSTATE_IAM,
                message: msg_no_credentials("nobody"),
                reason: "no secret (credentials) for this db user".into(),
            }
        );
    }

    #[test]
    fn a_bad_token_is_refused_with_the_iam_message_and_the_verifier_reason() {
        let (config, iam, spec) = setup();
        let user = &config.proxy.db_users[0].name;
        let refusal = authorize(
            &config,
            &iam,
            &spec,
            user,
            "not a token",
            OffsetDateTime::now_utc(),
        )
        .expect_err("refused");
        assert_eq!(refusal.sqlstate, SQLSTATE_IAM);
        assert_eq!(refusal.message, msg_iam_failed(user));
        assert_eq!(
            refusal.reason,
            "IAM authentication failed: malformed token: not HOST:PORT/?QUERY"
        );
    }
}
