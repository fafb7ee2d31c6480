//! The proxy's metrics, named and defined as RDS Proxy's CloudWatch metrics ("Monitoring
//! RDS Proxy metrics with Amazon CloudWatch"): gauges of what is open now, counters since
//! the stack started, and the average database response latency.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Live gauges and counters, updated by the sessions and the pools.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    pub(super) client_connections: AtomicI64,
    pub(super) client_connections_no_tls: AtomicI64,
    pub(super) client_connections_setup_failed_auth: AtomicU64,
    pub(super) database_connections: AtomicI64,
    pub(super) borrowed: AtomicI64,
    pub(super) session_pinned: AtomicI64,
    pub(super) in_transaction: AtomicI64,
    pub(super) database_connection_requests: AtomicU64,
    pub(super) borrow_timeouts: AtomicU64,
    pub(super) max_allowed: AtomicI64,
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
}

/// The metrics at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// `ClientConnections`: client connections open now.
    pub client_connections: u64,
    /// `ClientConnectionsNoTLS`: client connections open now without TLS (the stand-in, as
    /// a proxy that requires TLS, only holds these while it refuses them).
    pub client_connections_no_tls: u64,
    /// `ClientConnectionsSetupFailedAuth`: client connection attempts that failed for
    /// misconfigured authentication or TLS (IAM refusals, no secret, TLS required), since
    /// start.
    pub client_connections_setup_failed_auth: u64,
    /// `DatabaseConnections`: database connections open now (idle in the pools or
    /// borrowed).
    pub database_connections: u64,
    /// `DatabaseConnectionsCurrentlyBorrowed`: database connections a client holds now.
    pub database_connections_currently_borrowed: u64,
    /// `DatabaseConnectionsCurrentlySessionPinned`: database connections a client keeps
    /// for the rest of its session (a pinning condition, or prepared statements it holds).
    pub database_connections_currently_session_pinned: u64,
    /// `DatabaseConnectionsCurrentlyInTransaction`: database connections in a transaction
    /// block now.
    pub database_connections_currently_in_transaction: u64,
    /// `DatabaseConnectionRequests`: database connections the proxy asked to open, since
    /// start.
    pub database_connection_requests: u64,
    /// `MaxDatabaseConnectionsAllowed`: the pools' cap (`max_connections` ×
    /// `MaxConnectionsPercent`), summed over the servers seen so far.
    pub max_database_connections_allowed: u64,
    /// Borrows that gave up after `ConnectionBorrowTimeout` (no CloudWatch metric of its
    /// own; RDS Proxy logs these).
    pub borrow_timeouts: u64,
    /// `QueryDatabaseResponseLatency`: average time, in microseconds, from a request sent
    /// to the database to the first byte of its answer (0 before any).
    pub query_database_response_latency_us: u64,
}

impl MetricsSnapshot {
    /// `Name value` lines, CloudWatch's names.
    pub fn render(&self) -> String {
        let rows: [(&str, u64); 11] = [
            ("ClientConnections", self.client_connections),
            ("ClientConnectionsNoTLS", self.client_connections_no_tls),
            (
                "ClientConnectionsSetupFailedAuth",
                self.client_connections_setup_failed_auth,
            ),
            ("DatabaseConnections", self.database_connections),
            (
                "DatabaseConnectionsCurrentlyBorrowed",
                self.database_connections_currently_borrowed,
            ),
            (
                "DatabaseConnectionsCurrentlySessionPinned",
                self.database_connections_currently_session_pinned,
            ),
            (
                "DatabaseConnectionsCurrentlyInTransaction",
                self.database_connections_currently_in_transaction,
            ),
            (
                "DatabaseConnectionRequests",
                self.database_connection_requests,
            ),
            (
                "MaxDatabaseConnectionsAllowed",
                self.max_database_connections_allowed,
            ),
            ("BorrowTimeouts", self.borrow_timeouts),
            (
                "QueryDatabaseResponseLatency",
                self.query_database_response_latency_us,
            ),
        ];
        rows.iter().map(|(k, v)| format!("{k} {v}\n")).collect()
    }
}

impl ProxyMetrics {
    /// The metrics now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |a: &AtomicI64| u64::try_from(a.load(Ordering::Relaxed)).unwrap_or(0);
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let n = c(&self.latency_count);
        MetricsSnapshot {
            client_connections: g(&self.client_connections),
            client_connections_no_tls: g(&self.client_connections_no_tls),
            client_connections_setup_failed_auth: c(&self.client_connections_setup_failed_auth),
            database_connections: g(&self.database_connections),
            database_connections_currently_borrowed: g(&self.borrowed),
            database_connections_currently_session_pinned: g(&self.session_pinned),
            database_connections_currently_in_transaction: g(&self.in_transaction),
            database_connection_requests: c(&self.database_connection_requests),
            max_database_connections_allowed: g(&self.max_allowed),
            borrow_timeouts: c(&self.borrow_timeouts),
            query_database_response_latency_us: c(&self.latency_sum_us).checked_div(n).unwrap_or(0),
        }
    }

    pub(super) fn latency(&self, us: u64) {
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn add(gauge: &AtomicI64, by: i64) {
        gauge.fetch_add(by, Ordering::Relaxed);
    }

    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
