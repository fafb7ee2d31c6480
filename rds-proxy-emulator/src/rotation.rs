//! Secrets Manager's single-user rotation of the stack's secrets, step by step as the
//! rotation functions AWS provides for RDS do it ("Rotation by Lambda function" in the
//! Secrets Manager user guide):
//!
//! 1. createSecret: a new password, stored as a new version labelled `AWSPENDING`;
//! 2. setSecret: `ALTER ROLE ... PASSWORD` at the writer;
//! 3. testSecret: a login with the pending password at the writer, then at each reader
//!    once the change has replicated to it;
//! 4. finishSecret: `AWSCURRENT` moved to the new version (the old one becomes
//!    `AWSPREVIOUS`).
//!
//! As with RDS Proxy, the change is not atomic: between steps 2 and 4 the proxy still
//! opens new database connections with the old password, which PostgreSQL refuses. Open
//! connections are unaffected, and client logins check the secret's AWSCURRENT as it is.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, ServerRole};
use crate::config::StackConfig;
use crate::control::Control;
use crate::secrets::{
    generate_password, with_password, SecretStore, VersionSelector, AWSCURRENT, AWSPENDING,
};
use crate::Error;

/// How long testSecret waits for a reader to accept the new password (replication).
const READER_TEST_LIMIT: Duration = Duration::from_secs(10);

/// Rotates every secret of `config`; returns how many were rotated.
pub(crate) async fn rotate_all(
    config: &StackConfig,
    cluster: &Cluster,
    secrets: &SecretStore,
    control: &Control,
) -> Result<usize, Error> {
    let mut rotated = 0;
    for secret in &config.secrets.secrets {
        let Some(user) = config
            .proxy
            .db_users
            .iter()
            .find(|u| u.secret.as_deref() == Some(&secret.name))
        else {
            continue;
        };
        rotate(config, cluster, secrets, &secret.name, &user.name).await?;
        Control::bump(&control.secret_rotations);
        rotated += 1;
    }
    Ok(rotated)
}

async fn rotate(
    config: &StackConfig,
    cluster: &Cluster,
    secrets: &SecretStore,
    name: &str,
    user: &str,
) -> Result<(), Error> {
    let fail = |step: &str, why: String| Error::Postgres(format!("rotating {name}: {step}: {why}"));
    // createSecret
    let current = secrets
        .read(name, VersionSelector::Stage(AWSCURRENT))
        .ok_or_else(|| fail("createSecret", "no AWSCURRENT version".into()))?;
    let password = generate_password();
    let value = with_password(&current.value, &password)
        .ok_or_else(|| fail("createSecret", "the secret is not RDS's JSON".into()))?;
    let pending = secrets
        .put(
            name,
            value,
            &[AWSPENDING.into()],
            None,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| fail("createSecret", e.message))?;
    // setSecret
    let servers = cluster.servers();
    let writer = servers
        .iter()
        .find(|(_, role)| *role == ServerRole::Writer)
        .map(|(s, _)| Arc::clone(s))
        .ok_or_else(|| fail("setSecret", "no writer (failover under way?)".into()))?;
    writer.set_password(user, &password).await?;
    // testSecret
    let database = &config.database.name;
    if !writer.password_works(user, &password, database).await {
        return Err(fail(
            "testSecret",
            "the writer refuses the new password".into(),
        ));
    }
    for (reader, _) in servers
        .iter()
        .filter(|(_, role)| *role == ServerRole::Reader)
    {
        let deadline = tokio::time::Instant::now() + READER_TEST_LIMIT;
        while !reader.password_works(user, &password, database).await {
            if tokio::time::Instant::now() >= deadline {
                return Err(fail(
                    "testSecret",
                    format!("reader {} still refuses the new password", reader.name()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // finishSecret
    if !secrets.promote(name, &pending.version_id) {
        return Err(fail(
            "finishSecret",
            "the pending version disappeared".into(),
        ));
    }
    tracing::info!(secret = %name, version = %pending.version_id, "secret rotated: AWSCURRENT moved to the new version");
    Ok(())
}
