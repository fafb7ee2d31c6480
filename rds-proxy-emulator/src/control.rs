//! Fault injection and counters, for testing clients against a misbehaving or busy stack.
//!
//! One [`Control`] is shared by the STS, Secrets Manager and Parameter Store stand-ins and
//! the proxy of a stack. Tests reach it through [`crate::LocalStack`] (`set_sts_fault`,
//! `set_secrets_fault`, `set_proxy_stall`, `clear_faults`, `counters`);
//! `rds-proxy-emulator fault ...` reaches the one of a running `serve`.
//!
//! | fault | effect |
//! |---|---|
//! | [`ServiceFault::Hang`] (STS or Secrets Manager) | the service reads each request and does not answer until the fault is cleared (then it answers normally): a client without a deadline waits forever |
//! | [`ServiceFault::Refuse`] on STS | STS answers every request `503 Service Unavailable` with the `ServiceUnavailable` error document of the Query protocol (`Type` `Receiver`), which the AWS SDKs treat as retryable |
//! | [`ServiceFault::Refuse`] on Secrets Manager | every request gets `500` with the JSON protocol's `InternalServiceError` document, which the AWS SDKs retry (a 5xx status) |
//! | proxy stall | the proxy accepts each new TCP connection and never sends a byte on it (it reads and discards what the client sends until the client closes): for testing connect and login deadlines |

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// A fault of an AWS API stand-in (STS, Secrets Manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceFault {
    /// Normal service.
    #[default]
    None,
    /// Accept each request and do not answer until the fault is cleared.
    Hang,
    /// Answer every request with the protocol's retryable server error.
    Refuse,
}

/// The faults of the STS stand-in (the name it had before other services had faults).
pub type StsFault = ServiceFault;

impl ServiceFault {
    /// `none`, `hang` or `refuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceFault::None => "none",
            ServiceFault::Hang => "hang",
            ServiceFault::Refuse => "refuse",
        }
    }

    /// Parses `none`, `hang` or `refuse`.
    pub fn parse(s: &str) -> Option<ServiceFault> {
        [ServiceFault::None, ServiceFault::Hang, ServiceFault::Refuse]
            .into_iter()
            .find(|f| f.as_str() == s)
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
    /// `GetSecretValue` requests Secrets Manager received (hung or refused too); the
    /// proxy's own reads of a secret at login are not requests and are not counted.
    pub get_secret_value_calls: u64,
    /// `GetSecretValue` requests answered with a secret value.
    pub get_secret_value_succeeded: u64,
    /// Secret rotations completed (AWSCURRENT moved to a new password).
    pub secret_rotations: u64,
}

/// Shared fault switches and counters.
#[derive(Debug)]
pub struct Control {
    sts: watch::Sender<ServiceFault>,
    secrets: watch::Sender<ServiceFault>,
    proxy_stall: watch::Sender<bool>,
    pub(crate) assume_role_calls: AtomicU64,
    pub(crate) assume_role_succeeded: AtomicU64,
    pub(crate) logins_accepted: AtomicU64,
    pub(crate) logins_refused: AtomicU64,
    pub(crate) sessions_pinned: AtomicU64,
    pub(crate) sessions_closed_by_failover: AtomicU64,
    pub(crate) get_secret_value_calls: AtomicU64,
    pub(crate) get_secret_value_succeeded: AtomicU64,
    pub(crate) secret_rotations: AtomicU64,
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
            sts: watch::channel(ServiceFault::None).0,
            secrets: watch::channel(ServiceFault::None).0,
            proxy_stall: watch::channel(false).0,
            assume_role_calls: AtomicU64::new(0),
            assume_role_succeeded: AtomicU64::new(0),
            logins_accepted: AtomicU64::new(0),
            logins_refused: AtomicU64::new(0),
            sessions_pinned: AtomicU64::new(0),
            sessions_closed_by_failover: AtomicU64::new(0),
            get_secret_value_calls: AtomicU64::new(0),
            get_secret_value_succeeded: AtomicU64::new(0),
            secret_rotations: AtomicU64::new(0),
        }
    }

    /// Sets the STS fault (`ServiceFault::None` clears it; hung requests then get answered).
    pub fn set_sts_fault(&self, fault: StsFault) {
        self.sts.send_replace(fault);
    }

    /// The STS fault in force.
    pub fn sts_fault(&self) -> StsFault {
        *self.sts.borrow()
    }

    pub(crate) fn sts_watch(&self) -> watch::Receiver<ServiceFault> {
        self.sts.subscribe()
    }

    /// Sets the Secrets Manager fault (`ServiceFault::None` clears it).
    pub fn set_secrets_fault(&self, fault: ServiceFault) {
        self.secrets.send_replace(fault);
    }

    /// The Secrets Manager fault in force.
    pub fn secrets_fault(&self) -> ServiceFault {
        *self.secrets.borrow()
    }

    pub(crate) fn secrets_watch(&self) -> watch::Receiver<ServiceFault> {
        self.secrets.subscribe()
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
        self.set_sts_fault(ServiceFault::None);
        self.set_secrets_fault(ServiceFault::None);
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
            get_secret_value_calls: get(&self.get_secret_value_calls),
            get_secret_value_succeeded: get(&self.get_secret_value_succeeded),
            secret_rotations: get(&self.secret_rotations),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }
}
