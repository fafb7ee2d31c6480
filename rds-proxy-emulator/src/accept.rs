//! Accept loops that wait out persistent errors.
//!
//! A listener's `accept` can fail for reasons that last: the process is out of file
//! descriptors (EMFILE), the system is (ENFILE), memory for socket buffers is short
//! (ENOBUFS, ENOMEM). Retrying at once then fails at once, forever: the loop takes a core
//! until something else frees a descriptor, and keeps the tasks that would free one from
//! running. So after such an error the loop sleeps, 10 ms at first and twice as long after
//! every further error, up to 1 s, and logs once per run of errors (when it starts, and
//! how many there were when accepting works again).
//!
//! Errors that belong to one incoming connection (it was reset or aborted before it was
//! taken) say nothing about the next one: the loop retries at once.
//!
//! ```
//! use std::time::Duration;
//! use rds_proxy_emulator::accept::Backoff;
//!
//! let mut b = Backoff::new();
//! assert_eq!(b.failed(), (Duration::from_millis(10), true));
//! assert_eq!(b.failed(), (Duration::from_millis(20), false));
//! assert_eq!(b.succeeded(), Some(2));
//! assert_eq!(b.failed(), (Duration::from_millis(10), true));
//! ```

use std::future::Future;
use std::io;
use std::time::Duration;

/// The first wait after an error.
pub const FIRST_WAIT: Duration = Duration::from_millis(10);
/// The longest wait between attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// The waits of one accept loop: doubling from [`FIRST_WAIT`] to [`MAX_WAIT`] while
/// accepting fails, back to the start once it works.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u64,
}

impl Backoff {
    /// No errors yet.
    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// An accept failed: how long to wait before the next, and whether this error starts a
    /// run of errors (the one to log).
    pub fn failed(&mut self) -> (Duration, bool) {
        let first = self.failures == 0;
        // 10 ms << 7 is already past the limit: no overflow, however long the run.
        let shift = self.failures.min(7) as u32;
        self.failures += 1;
        (FIRST_WAIT.saturating_mul(1 << shift).min(MAX_WAIT), first)
    }

    /// An accept worked: ends the run of errors, returning its length if there was one.
    pub fn succeeded(&mut self) -> Option<u64> {
        let n = std::mem::take(&mut self.failures);
        (n > 0).then_some(n)
    }
}

/// Whether an accept error belongs to the one connection being taken (the next accept may
/// well work), rather than to the listener or the process.
pub fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// Calls `accept` until it succeeds, waiting between attempts as [`Backoff`] says after
/// errors that are not [connection errors](is_connection_error). `what` names the
/// listener in the log.
pub async fn accept_with_backoff<T, F, Fut>(what: &str, backoff: &mut Backoff, mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(accepted) => {
                if let Some(n) = backoff.succeeded() {
                    tracing::info!("{what}: accepting connections again after {n} failed attempts");
                }
                return accepted;
            }
            Err(e) if is_connection_error(&e) => {
                tracing::debug!("{what}: a connection was lost before it was accepted: {e}");
            }
            Err(e) => {
                let (wait, first) = backoff.failed();
                if first {
                    tracing::warn!(
                        "{what}: accepting a connection failed: {e}; retrying with waits of {} ms doubling up to {} s until it works",
                        FIRST_WAIT.as_millis(),
                        MAX_WAIT.as_secs()
                    );
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[test]
    fn waits_double_up_to_the_limit_and_restart_after_a_success() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..10).map(|_| b.failed().0.as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        for _ in 0..1000 {
            assert_eq!(b.failed(), (MAX_WAIT, false));
        }
        assert_eq!(b.succeeded(), Some(1010));
        assert_eq!(b.succeeded(), None);
        assert_eq!(b.failed(), (FIRST_WAIT, true));
    }

    /// An accept that always fails with EMFILE is tried a handful of times in 200 ms, not
    /// in a tight loop.
    #[tokio::test]
    async fn a_persistent_error_is_not_retried_in_a_tight_loop() {
        let calls = AtomicU64::new(0);
        let mut backoff = Backoff::new();
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_millis(200),
            accept_with_backoff("test", &mut backoff, || {
                calls.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Err::<(), _>(emfile()))
            }),
        )
        .await;
        assert!(outcome.is_err(), "no accept can succeed");
        let n = calls.load(Ordering::Relaxed);
        // 10 + 20 + 40 + 80 ms of waits fit in 200 ms: 5 attempts (fewer on a slow run).
        assert!(
            (1..=6).contains(&n),
            "{n} attempts in {:?}",
            started.elapsed()
        );
    }

    /// Connection errors are retried at once; the accept after them is returned.
    #[tokio::test]
    async fn connection_errors_are_retried_at_once() {
        let mut backoff = Backoff::new();
        let mut errors = vec![
            io::Error::from(io::ErrorKind::ConnectionAborted),
            io::Error::from_raw_os_error(libc::EPROTO),
        ];
        let started = Instant::now();
        let got = accept_with_backoff("test", &mut backoff, || {
            std::future::ready(errors.pop().map_or(Ok(7), Err))
        })
        .await;
        assert_eq!(got, 7);
        assert!(started.elapsed() < FIRST_WAIT, "{:?}", started.elapsed());
        assert_eq!(backoff.succeeded(), None);
    }

    /// After a run of errors, one success starts the waits over.
    #[tokio::test]
    async fn a_success_ends_the_run() {
        let mut backoff = Backoff::new();
        let mut left = 3;
        let started = Instant::now();
        accept_with_backoff("test", &mut backoff, || {
            left -= 1;
            std::future::ready(if left > 0 { Err(emfile()) } else { Ok(()) })
        })
        .await;
        // Two errors: waits of 10 and 20 ms.
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(left, 0);
        assert_eq!(backoff.failed(), (FIRST_WAIT, true));
    }
}
