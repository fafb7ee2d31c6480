//! What the proxy counts, per target, and its rendering as Prometheus text (exposition
//! format 0.0.4, what `/metrics` serves).
//!
//! Every client connection updates these counters, so they are plain atomics: no lock on
//! the hot path. Targets are known at start and addressed by their index in the targets
//! file; each one's name is the `target` label. The credential caches' counters are read
//! when the text is rendered, not copied here.
// used by the session and listener modules, written alongside

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rds_iam_auth::{CredentialCache, Stage};

/// The common prefix of every metric name.
const PREFIX: &str = "rds_iam_auth_proxy_";

/// Upper bounds of the connect-time histogram's buckets, in seconds: from a few
/// milliseconds (a warm path inside one region) to the default connect timeout.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why a client connection was turned away locally, before any upstream work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The startup message named a user this listener does not serve.
    User,
    /// The client's password (the optional local one) was wrong.
    Password,
    /// `--max-connections` connections were open already.
    MaxConnections,
    /// The client broke the protocol (a malformed or unexpected message).
    Protocol,
}

impl Refusal {
    /// Every reason, in the order they are rendered.
    const ALL: [Refusal; 4] = [
        Refusal::User,
        Refusal::Password,
        Refusal::MaxConnections,
        Refusal::Protocol,
    ];

    /// The `reason` label's value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::User => "user",
            Refusal::Password => "password",
            Refusal::MaxConnections => "max_connections",
            Refusal::Protocol => "protocol",
        }
    }

    /// Its position in [`Refusal::ALL`] (the variants are declared in that order).
    fn index(self) -> usize {
        self as usize
    }
}

/// What the library counts for one target, read when the metrics are rendered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    /// The target's credential cache (refreshes and their failures).
    pub(crate) credentials: &'a CredentialCache,
    /// Tokens its connector signed ([`rds_iam_auth::Connector::tokens_signed`]).
    pub(crate) tokens_signed: u64,
}

/// The proxy's counters for every target.
#[derive(Debug)]
pub(crate) struct Metrics {
    targets: Box<[Target]>,
    /// Client connections open now, over all targets: kept apart from the per-target gauges
    /// so that the readiness check reads one atomic.
    open: AtomicUsize,
}

/// One target's counters.
#[derive(Debug)]
struct Target {
    name: String,
    open: AtomicUsize,
    opened: AtomicU64,
    failed: [AtomicU64; Stage::ALL.len()],
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Connect times per bucket, not cumulative (the last one counts the times above every
    /// bound): each observation touches one counter, and rendering adds them up.
    connect_buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the connect times, in nanoseconds (wraps after 584 years of connecting).
    connect_nanos: AtomicU64,
    to_server: AtomicU64,
    to_client: AtomicU64,
}

impl Target {
    fn new(name: String) -> Self {
        Self {
            name,
            open: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
            failed: Default::default(),
            refused: Default::default(),
            connect_buckets: Default::default(),
            connect_nanos: AtomicU64::new(0),
            to_server: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        }
    }
}

/// Decrements a gauge, stopping at zero: an unmatched `closed` is a caller's bug that
/// must not show as billions of open connections. Returns whether it was above zero.
fn decrement(gauge: &AtomicUsize) -> bool {
    gauge
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

impl Metrics {
    /// Counters, all zero, for the targets named (index `t` in the other calls is the
    /// position in this list).
    pub(crate) fn new(target_names: Vec<String>) -> Self {
        Self {
            targets: target_names.into_iter().map(Target::new).collect(),
            open: AtomicUsize::new(0),
        }
    }

    /// The target at index `t`. An index outside the list is a caller's bug: counted
    /// nowhere (debug builds stop on it), since a metric must never take the proxy down.
    fn target(&self, t: usize) -> Option<&Target> {
        debug_assert!(t < self.targets.len(), "no target at index {t}");
        self.targets.get(t)
    }

    /// Admits a client connection to target `t` unless `max` (over all targets; 0: no
    /// limit) are open: one atomic step, so a burst cannot overshoot the limit.
    pub(crate) fn try_open(&self, t: usize, max: usize) -> bool {
        let Some(target) = self.target(t) else {
            return false;
        };
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            target.opened.fetch_add(1, Ordering::Relaxed);
            target.open.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// An admitted client connection to target `t` ended, whatever the outcome.
    pub(crate) fn closed(&self, t: usize) {
        // The total follows the target's gauge: an unmatched close of one target must not
        // take a connection off another's count.
        if let Some(target) = self.target(t) {
            if decrement(&target.open) {
                decrement(&self.open);
            }
        }
    }

    /// Opening the upstream session for a client of target `t` failed at `stage`.
    pub(crate) fn failed(&self, t: usize, stage: Stage) {
        let Some(target) = self.target(t) else {
            return;
        };
        // `Stage` is non-exhaustive, but `Stage::ALL` lists every stage.
        if let Some(i) = Stage::ALL.iter().position(|s| *s == stage) {
            target.failed[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client of target `t` was turned away locally, before any upstream work.
    pub(crate) fn refused(&self, t: usize, reason: Refusal) {
        if let Some(target) = self.target(t) {
            target.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A client of target `t` waited `d` from its startup message to a ready upstream
    /// session.
    pub(crate) fn connect_time(&self, t: usize, d: Duration) {
        let Some(target) = self.target(t) else {
            return;
        };
        let seconds = d.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        target.connect_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        target.connect_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Bytes relayed for a client of target `t`, in each direction.
    pub(crate) fn bytes(&self, t: usize, to_server: u64, to_client: u64) {
        if let Some(target) = self.target(t) {
            if to_server > 0 {
                target.to_server.fetch_add(to_server, Ordering::Relaxed);
            }
            if to_client > 0 {
                target.to_client.fetch_add(to_client, Ordering::Relaxed);
            }
        }
    }

    /// Client connections open now, over all targets (readiness compares it with
    /// `--max-connections`).
    pub(crate) fn open_total(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// How many targets there are.
    pub(crate) fn target_count(&self) -> usize {
        self.targets.len()
    }

    /// The name of target `t` (its `target` label).
    pub(crate) fn target_name(&self, t: usize) -> Option<&str> {
        self.targets.get(t).map(|target| target.name.as_str())
    }

    /// Every metric in the Prometheus text format 0.0.4. `caches[t]` is target `t`'s
    /// credential cache (its refresh counters are read now); a target without one has no
    /// credential lines.
    pub(crate) fn render(&self, sources: &[Source<'_>]) -> String {
        let mut out = String::with_capacity(4096 + self.targets.len() * 3072);
        let targets = &self.targets;

        family(
            &mut out,
            "connections_open",
            "gauge",
            "Client connections open now.",
        );
        for t in targets.iter() {
            let open = t.open.load(Ordering::Relaxed);
            sample(&mut out, "connections_open", t, &[], open);
        }

        family(
            &mut out,
            "connections_opened_total",
            "counter",
            "Client connections admitted.",
        );
        for t in targets.iter() {
            sample(
                &mut out,
                "connections_opened_total",
                t,
                &[],
                load(&t.opened),
            );
        }

        family(
            &mut out,
            "connections_failed_total",
            "counter",
            "Client connections whose upstream session could not be opened, by the stage that failed.",
        );
        for t in targets.iter() {
            for (stage, count) in Stage::ALL.iter().zip(&t.failed) {
                let name = stage.name();
                sample(
                    &mut out,
                    "connections_failed_total",
                    t,
                    &[("stage", name)],
                    load(count),
                );
            }
        }

        family(
            &mut out,
            "connections_refused_total",
            "counter",
            "Client connections turned away locally, before any upstream work, by reason.",
        );
        for t in targets.iter() {
            for (reason, count) in Refusal::ALL.iter().zip(&t.refused) {
                sample(
                    &mut out,
                    "connections_refused_total",
                    t,
                    &[("reason", reason.label())],
                    load(count),
                );
            }
        }

        family(
            &mut out,
            "connect_seconds",
            "histogram",
            "Time from a client's startup message to its upstream session being ready.",
        );
        for t in targets.iter() {
            // Each bucket's count is read once; the cumulative counts and the total come
            // from the same reads, so `+Inf` always equals `_count`.
            let mut cumulative = 0u64;
            for (i, count) in t.connect_buckets.iter().enumerate() {
                cumulative += load(count);
                let le = match BUCKETS.get(i) {
                    Some(bound) => bound.to_string(),
                    None => "+Inf".to_owned(),
                };
                sample(
                    &mut out,
                    "connect_seconds_bucket",
                    t,
                    &[("le", &le)],
                    cumulative,
                );
            }
            let sum = Duration::from_nanos(load(&t.connect_nanos)).as_secs_f64();
            sample(&mut out, "connect_seconds_sum", t, &[], sum);
            sample(&mut out, "connect_seconds_count", t, &[], cumulative);
        }

        family(
            &mut out,
            "bytes_total",
            "counter",
            "Bytes relayed between clients and the database, by direction.",
        );
        for t in targets.iter() {
            let directions = [("to_server", &t.to_server), ("to_client", &t.to_client)];
            for (direction, count) in directions {
                sample(
                    &mut out,
                    "bytes_total",
                    t,
                    &[("direction", direction)],
                    load(count),
                );
            }
        }

        family(
            &mut out,
            "credential_refreshes_total",
            "counter",
            "Credential fetches (base chain, then AssumeRole when a role is assumed).",
        );
        for (t, source) in targets.iter().zip(sources) {
            sample(
                &mut out,
                "credential_refreshes_total",
                t,
                &[],
                source.credentials.refresh_count(),
            );
        }

        family(
            &mut out,
            "credential_refresh_failures_total",
            "counter",
            "Credential fetches that failed.",
        );
        for (t, source) in targets.iter().zip(sources) {
            sample(
                &mut out,
                "credential_refresh_failures_total",
                t,
                &[],
                source.credentials.failed_refresh_count(),
            );
        }

        family(
            &mut out,
            "tokens_signed_total",
            "counter",
            "IAM auth tokens signed (one per upstream login attempt).",
        );
        for (t, source) in targets.iter().zip(sources) {
            sample(
                &mut out,
                "tokens_signed_total",
                t,
                &[],
                source.tokens_signed,
            );
        }

        out
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The `# HELP` and `# TYPE` lines of one metric family (the help texts are constants
/// without backslashes or line breaks, so they need no escaping).
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
}

/// One sample line: `name{target="...",label="..."} value`.
fn sample(
    out: &mut String,
    name: &str,
    target: &Target,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    let _ = write!(out, "{PREFIX}{name}{{target=\"");
    escape_label_value(out, &target.name);
    out.push('"');
    for (label, value) in labels {
        let _ = write!(out, ",{label}=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    let _ = writeln!(out, "}} {value}");
}

/// A label value as the text format requires: backslash, double quote and line feed
/// escaped (`\\`, `\"`, `\n`); everything else, any UTF-8, as is.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_credential_types::Credentials;

    /// A cache over fixed long-term keys: no AWS call, never expires.
    fn static_cache() -> CredentialCache {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let keys = Credentials::from_keys("AKIDMETRICS", "secret", None);
        CredentialCache::new(SharedCredentialsProvider::new(keys), None, &sdk)
    }

    #[tokio::test]
    async fn renders_one_target_exactly() {
        let metrics = Metrics::new(vec!["app".to_owned()]);
        assert!(metrics.try_open(0, 0));
        assert!(metrics.try_open(0, 0));
        metrics.closed(0);
        metrics.failed(0, Stage::AssumeRole);
        metrics.failed(0, Stage::Login);
        metrics.failed(0, Stage::Login);
        metrics.refused(0, Refusal::Password);
        metrics.refused(0, Refusal::MaxConnections);
        metrics.connect_time(0, Duration::from_millis(5)); // on the bound: le="0.005"
        metrics.connect_time(0, Duration::from_millis(30));
        metrics.connect_time(0, Duration::from_millis(700));
        metrics.connect_time(0, Duration::from_secs(12)); // above every bound
        metrics.bytes(0, 100, 2500);
        metrics.bytes(0, 1, 0);
        let cache = static_cache();
        cache.prefetch().await.expect("static keys");

        let text = metrics.render(&[Source {
            credentials: &cache,
            tokens_signed: 3,
        }]);
        let expected = r#"# HELP rds_iam_auth_proxy_connections_open Client connections open now.
# TYPE rds_iam_auth_proxy_connections_open gauge
rds_iam_auth_proxy_connections_open{target="app"} 1
# HELP rds_iam_auth_proxy_connections_opened_total Client connections admitted.
# TYPE rds_iam_auth_proxy_connections_opened_total counter
rds_iam_auth_proxy_connections_opened_total{target="app"} 2
# HELP rds_iam_auth_proxy_connections_failed_total Client connections whose upstream session could not be opened, by the stage that failed.
# TYPE rds_iam_auth_proxy_connections_failed_total counter
rds_iam_auth_proxy_connections_failed_total{target="app",stage="parameters"} 0
rds_iam_auth_proxy_connections_failed_total{target="app",stage="config"} 0
rds_iam_auth_proxy_connections_failed_total{target="app",stage="credentials"} 0
rds_iam_auth_proxy_connections_failed_total{target="app",stage="assume-role"} 1
rds_iam_auth_proxy_connections_failed_total{target="app",stage="secret"} 0
rds_iam_auth_proxy_connections_failed_total{target="app",stage="token"} 0
rds_iam_auth_proxy_connections_failed_total{target="app",stage="dns"} 0
rds_iam_auth_proxy_connections_failed_total{target="app",stage="tcp"} 0
rds_iam_auth_proxy_connections_failed_total{target="app",stage="tls"} 0
rds_iam_auth_proxy_connections_failed_total{target="app",stage="login"} 2
rds_iam_auth_proxy_connections_failed_total{target="app",stage="query"} 0
# HELP rds_iam_auth_proxy_connections_refused_total Client connections turned away locally, before any upstream work, by reason.
# TYPE rds_iam_auth_proxy_connections_refused_total counter
rds_iam_auth_proxy_connections_refused_total{target="app",reason="user"} 0
rds_iam_auth_proxy_connections_refused_total{target="app",reason="password"} 1
rds_iam_auth_proxy_connections_refused_total{target="app",reason="max_connections"} 1
rds_iam_auth_proxy_connections_refused_total{target="app",reason="protocol"} 0
# HELP rds_iam_auth_proxy_connect_seconds Time from a client's startup message to its upstream session being ready.
# TYPE rds_iam_auth_proxy_connect_seconds histogram
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="0.005"} 1
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="0.01"} 1
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="0.025"} 1
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="0.05"} 2
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="0.1"} 2
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="0.25"} 2
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="0.5"} 2
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="1"} 3
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="2.5"} 3
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="5"} 3
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="10"} 3
rds_iam_auth_proxy_connect_seconds_bucket{target="app",le="+Inf"} 4
rds_iam_auth_proxy_connect_seconds_sum{target="app"} 12.735
rds_iam_auth_proxy_connect_seconds_count{target="app"} 4
# HELP rds_iam_auth_proxy_bytes_total Bytes relayed between clients and the database, by direction.
# TYPE rds_iam_auth_proxy_bytes_total counter
rds_iam_auth_proxy_bytes_total{target="app",direction="to_server"} 101
rds_iam_auth_proxy_bytes_total{target="app",direction="to_client"} 2500
# HELP rds_iam_auth_proxy_credential_refreshes_total Credential fetches (base chain, then AssumeRole when a role is assumed).
# TYPE rds_iam_auth_proxy_credential_refreshes_total counter
rds_iam_auth_proxy_credential_refreshes_total{target="app"} 1
# HELP rds_iam_auth_proxy_credential_refresh_failures_total Credential fetches that failed.
# TYPE rds_iam_auth_proxy_credential_refresh_failures_total counter
rds_iam_auth_proxy_credential_refresh_failures_total{target="app"} 0
# HELP rds_iam_auth_proxy_tokens_signed_total IAM auth tokens signed (one per upstream login attempt).
# TYPE rds_iam_auth_proxy_tokens_signed_total counter
rds_iam_auth_proxy_tokens_signed_total{target="app"} 3
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new(vec!["a\"b\\c\nd é".to_owned()]);
        let text = metrics.render(&[]);
        assert!(
            text.contains("rds_iam_auth_proxy_connections_open{target=\"a\\\"b\\\\c\\nd é\"} 0\n"),
            "{text}"
        );
        // Escaped, the name stays on its line: no sample line is split.
        check_shape(&text);
    }

    #[test]
    fn counts_open_connections_over_targets() {
        let metrics = Metrics::new(vec!["a".to_owned(), "b".to_owned()]);
        assert!(metrics.try_open(0, 0));
        assert!(metrics.try_open(1, 0));
        assert!(metrics.try_open(1, 0));
        assert_eq!(metrics.open_total(), 3);
        metrics.closed(1);
        assert_eq!(metrics.open_total(), 2);
        metrics.closed(0);
        metrics.closed(1);
        assert_eq!(metrics.open_total(), 0);
        assert_eq!(metrics.target_count(), 2);
        assert_eq!(metrics.target_name(1), Some("b"));
        assert_eq!(metrics.target_name(2), None);
    }

    #[test]
    fn unmatched_close_stops_at_zero() {
        let metrics = Metrics::new(vec!["a".to_owned(), "b".to_owned()]);
        assert!(metrics.try_open(0, 0));
        metrics.closed(0);
        metrics.closed(0);
        assert_eq!(metrics.open_total(), 0);
        assert!(metrics.try_open(1, 0));
        metrics.closed(0);
        assert_eq!(metrics.open_total(), 1, "b's connection is still open");
        assert!(metrics
            .render(&[])
            .contains("rds_iam_auth_proxy_connections_open{target=\"a\"} 0\n"));
    }

    #[test]
    fn counters_are_safe_to_update_from_many_threads() {
        let metrics = std::sync::Arc::new(Metrics::new(vec!["a".to_owned()]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        assert!(metrics.try_open(0, 0));
                        metrics.connect_time(0, Duration::from_millis(20));
                        metrics.closed(0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        let text = metrics.render(&[]);
        assert!(text.contains("connections_opened_total{target=\"a\"} 4000\n"));
        assert!(text.contains("connect_seconds_count{target=\"a\"} 4000\n"));
        assert!(text.contains("connect_seconds_bucket{target=\"a\",le=\"0.025\"} 4000\n"));
        assert_eq!(metrics.open_total(), 0);
    }

    #[tokio::test]
    async fn output_has_the_format_shape() {
        let metrics = Metrics::new(vec!["one".to_owned(), "two".to_owned()]);
        for stage in Stage::ALL {
            metrics.failed(1, stage);
        }
        metrics.connect_time(0, Duration::from_micros(1));
        let (a, b) = (static_cache(), static_cache());
        let text = metrics.render(&[
            Source {
                credentials: &a,
                tokens_signed: 0,
            },
            Source {
                credentials: &b,
                tokens_signed: 0,
            },
        ]);
        check_shape(&text);
        // Every family has samples for both targets.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).expect("name");
            for target in ["one", "two"] {
                assert!(
                    text.lines().any(|l| l.starts_with(name)
                        && l.contains(&format!("target=\"{target}\""))),
                    "{name} has no sample for {target}"
                );
            }
        }
    }

    /// Checks what a Prometheus parser needs: `# HELP name text` then `# TYPE name kind`
    /// before a family's samples, and every other line `name{label="value",...} number`,
    /// its name that of the family (histograms add `_bucket`, `_sum`, `_count`).
    fn check_shape(text: &str) {
        assert!(text.ends_with('\n'));
        let mut family: Option<(String, String)> = None;
        let mut helped: Option<String> = None;
        let mut seen_families = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a text");
                assert!(!help.is_empty());
                helped = Some(name.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert_eq!(helped.as_deref(), Some(name), "HELP comes before TYPE");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{kind}");
                assert!(seen_families.insert(name.to_owned()), "{name} twice");
                family = Some((name.to_owned(), kind.to_owned()));
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let (name, kind) = family.as_ref().expect("a sample before any TYPE");
            let open = line.find('{').expect("labels");
            let close = line.rfind("} ").expect("labels end");
            let sample_name = &line[..open];
            let valid_name = |n: &str| {
                n.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            };
            assert!(valid_name(sample_name), "{line}");
            if kind == "histogram" {
                let suffix = sample_name.strip_prefix(name.as_str()).expect(line);
                assert!(["_bucket", "_sum", "_count"].contains(&suffix), "{line}");
            } else {
                assert_eq!(sample_name, name, "{line}");
            }
            let labels = &line[open + 1..close];
            let mut rest = labels;
            while !rest.is_empty() {
                let (label, after) = rest.split_once("=\"").expect(line);
                assert!(valid_name(label), "{line}");
                // The value runs to the first quote not escaped by a backslash.
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("closed quote") {
                        (_, '\\') => {
                            let (_, escaped) = chars.next().expect("escaped char");
                            assert!(['\\', '"', 'n'].contains(&escaped), "{line}");
                        }
                        (i, '"') => break i,
                        _ => {}
                    }
                };
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            let value = &line[close + 2..];
            assert!(
                value.parse::<f64>().is_ok() || value == "+Inf",
                "not a number: {line}"
            );
        }
    }
}
