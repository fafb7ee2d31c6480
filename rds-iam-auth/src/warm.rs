//! Work a short-lived process can do before its first connect: [`Connector::warm_up`].

use std::time::Duration;

use crate::connector::Connector;
use crate::error::classify::{fetch_stage, refresh_lost};
use crate::error::Error;

impl Connector {
    /// Does ahead of time what the first connect would otherwise do on its critical path,
    /// for a process whose first connect is the one that counts (a Lambda function's init):
    ///
    /// - fetches credentials into the cache ([`CredentialCache::prefetch`]): the base
    ///   chain and, with a role, `AssumeRole`, which also opens the STS client's connection;
    ///   with a stored password, reads it into its cache too;
    /// - seeds the TLS crypto provider's random number generator (aws-lc's): a one-time cost
    ///   per process that the first TLS handshake would pay otherwise. With aws-lc's CPU
    ///   jitter entropy source that is tens of milliseconds of CPU; it runs on a blocking
    ///   thread here, off the async runtime;
    /// - resolves the dial target's name once when it is not an address, which loads the
    ///   system resolver. Nothing is kept: every connect resolves again.
    ///
    /// The three run at once. This waits at most `limit` and returns the credentials'
    /// outcome: `Ok` once they are cached, the fetch's error (naming its stage), or a
    /// timeout of that stage when `limit` passed first. What has not finished by then goes
    /// on in the background, and a connect that needs credentials meanwhile waits for that
    /// same fetch rather than starting another. A failure here does not make the next
    /// caller wait out a backoff: the first connect tries again and reports its own error.
    ///
    /// Nothing here is needed for correctness: a connector that was never warmed up works
    /// the same, its first connect is only slower.
    ///
    /// [`CredentialCache::prefetch`]: crate::CredentialCache::prefetch
    pub async fn warm_up(&self, limit: Duration) -> Result<(), Error> {
        let until = crate::runner::instant_after(limit);
        let rng = tokio::task::spawn_blocking(|| {
            let mut seed = [0u8; 32];
            let _ = rustls::crypto::aws_lc_rs::default_provider()
                .secure_random
                .fill(&mut seed);
        });
        let dns = match self.inner.dial.literal() {
            Some(_) => None,
            None => {
                let connector = self.clone();
                Some(tokio::spawn(async move {
                    let _ = connector.inner.dial.resolve().await;
                }))
            }
        };
        // A task of its own, so that the outcome is dealt with (see `prefetch`) even when
        // it comes after `limit`.
        let connector = self.clone();
        let credentials = tokio::spawn(async move {
            let inner = &connector.inner;
            // A parameter is read with the base credentials (the SDK client asks the chain);
            // a secret with the cache's, fetched first.
            let parameter = matches!(
                connector.password_source(),
                Some(crate::PasswordSource::Parameter { .. })
            );
            if !parameter {
                inner.credentials.prefetch().await?;
            }
            match &inner.password {
                Some(password) => password.prefetch().await,
                None => Ok(()),
            }
        });

        let role = self.inner.credentials.assumed_role().map(|r| r.role_arn());
        let outcome = match tokio::time::timeout_at(until, credentials).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(join)) => Err(refresh_lost(
                role,
                &format!("the credential fetch did not finish: {join}"),
            )),
            Err(_) => Err(Error::timeout(fetch_stage(role), limit)),
        };
        // The rest only shortens the first connect: give it what is left of `limit`.
        let _ = tokio::time::timeout_at(until, async {
            let _ = rng.await;
            if let Some(dns) = dns {
                let _ = dns.await;
            }
        })
        .await;
        outcome
    }
}
