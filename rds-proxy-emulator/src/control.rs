//! Fault injection and counters, for testing clients against a misbehaving or busy stack.
//!
//! One [`Control`] is shared by the STS stand-in and the proxy of a stack. Tests reach it
//! through [`crate::LocalStack`] (`set_sts_fault`, `set_proxy_stall`, `clear_faults`,
//! `counters`); `rds-proxy-emulator fault ...` reaches the one of a running `serve`.
//!
//! | fault | effect |
//! |---|---|
//! | [`StsFault::Hang`] | STS reads each request and does not answer until the fault is cleared (then it answers normally): a client without a deadline waits forever |
//! | [`StsFault::Refuse`] | STS answers every request `503 Service Unavailable` with the `ServiceUnavailable` error document of the Query protocol (`Type` `Receiver`), which the AWS SDKs treat as retryable |
//! | proxy stall | the proxy accepts each new TCP connection and never sends a byte on it (it reads and discards what the client sends until the client closes): for testing connect and login deadlines |

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// A fault of the STS stand-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StsFault {
    /// Normal service.
    #[default]
    None,
    /// Accept each request and do not answer until the fault is cleared.
    Hang,
    /// Answer `503 ServiceUnavailable` to every request.
    Refuse,
}

impl StsFault {
    /// `none`, `hang` or `refuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            StsFault::None => "none",
            StsFault::Hang => "hang",
            StsFault::Refuse => "refuse",
        }
    }
}

/// A snapshot of a stack's counters (since it started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// `AssumeRole` requests STS received (whatever became of them, hung or refused too).
    pub assume_role_calls: u64,
    /// `AssumeRole` requests answered with credentials.
    pub assume_role_succeeded: u64,
    /// Client logins the proxy accepted (a session to the database was opened).
    pub logins_accepted: u64,
    /// Client logins the proxy refused with an error message (TLS required, IAM
    /// authentication failed, too many connections, database unreachable, ...).
    pub logins_refused: u64,
    /// Client sessions that met a pinning condition (counted once per session).
    pub sessions_pinned: u64,
    /// Client sessions closed by a failover: those in a request or a transaction, or
    /// pinned, when their database connection's server was stopped (idle clients keep
    /// their connection).
    pub sessions_closed_by_failover: u64,
}

/// Shared fault switches and counters.
#[derive(Debug)]
pub struct Control {
    sts: watch::Sender<StsFault>,
    proxy_stall: watch::Sender<bool>,
    pub(crate) assume_role_calls: AtomicU64,
    pub(crate) assume_role_succeeded: AtomicU64,
    pub(crate) logins_accepted: AtomicU64,
    pub(crate) logins_refused: AtomicU64,
    pub(crate) sessions_pinned: AtomicU64,
    pub(crate) sessions_closed_by_failover: AtomicU64,
}

impl Default for Control {
    fn default() -> Self {
        Control::new()
    }
}

impl Control {
    /// No faults, counters at zero.
    pub fn new() -> Control {
        Control {
            sts: watch::channel(StsFault::None).0,
            proxy_stall: watch::channel(false).0,
            assume_role_calls: AtomicU64::new(0),
            assume_role_succeeded: AtomicU64::new(0),
            logins_accepted: AtomicU64::new(0),
            logins_refused: AtomicU64::new(0),
            sessions_pinned: AtomicU64::new(0),
            sessions_closed_by_failover: AtomicU64::new(0),
        }
    }

    /// Sets the STS fault (`StsFault::None` clears it; hung requests then get answered).
    pub fn set_sts_fault(&self, fault: StsFault) {
        self.sts.send_replace(fault);
    }

    /// The STS fault in force.
    pub fn sts_fault(&self) -> StsFault {
        *self.sts.borrow()
    }

    pub(crate) fn sts_watch(&self) -> watch::Receiver<StsFault> {
        self.sts.subscribe()
    }

    /// Makes the proxy stall new connections (or stop doing so).
    pub fn set_proxy_stall(&self, stall: bool) {
        self.proxy_stall.send_replace(stall);
    }

    /// Whether the proxy stalls new connections.
    pub fn proxy_stall(&self) -> bool {
        *self.proxy_stall.borrow()
    }

    /// Clears every fault.
    pub fn clear(&self) {
        self.set_sts_fault(StsFault::None);
        self.set_proxy_stall(false);
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        Counters {
            assume_role_calls: get(&self.assume_role_calls),
            assume_role_succeeded: get(&self.assume_role_succeeded),
            logins_accepted: get(&self.logins_accepted),
            logins_refused: get(&self.logins_refused),
            sessions_pinned: get(&self.sessions_pinned),
            sessions_closed_by_failover: get(&self.sessions_closed_by_failover),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
}
