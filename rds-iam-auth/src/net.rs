//! The network stages: resolving the address to dial and opening the TCP connection.
//!
//! A proxy endpoint resolves to one address per availability zone. Each address gets its
//! own share of what is left of the deadline (an address that never answers costs its
//! share, not the whole connect), and when all fail the error lists every attempt.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::classify::{dns_error, tcp_error};
use crate::error::Error;
use crate::runner::Deadline;
use crate::stage::format_duration;

/// TCP keepalive probes on every connection: a peer that vanished (failover, a NAT that
/// dropped the flow) is noticed within `idle + interval * retries` instead of never.
///
/// libpq turns keepalives on and leaves the timings to the OS (two hours idle on Linux);
/// these defaults find a dead peer in under two minutes and cost one small packet per
/// minute on an idle connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Idle time before the first probe (libpq `keepalives_idle`).
    pub idle: Duration,
    /// Time between probes (libpq `keepalives_interval`).
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (libpq `keepalives_count`).
    pub retries: u32,
}

impl Keepalive {
    /// Probes after `idle` without traffic, then every `interval`, dropping the connection
    /// after `retries` unanswered ones (libpq's `keepalives_idle`, `keepalives_interval`,
    /// `keepalives_count`).
    pub fn new(idle: Duration, interval: Duration, retries: u32) -> Self {
        Self {
            idle,
            interval,
            retries,
        }
    }
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            retries: 5,
        }
    }
}

/// Where to dial: the endpoint name, or the override address (`connect_address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DialTarget {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl DialTarget {
    /// The socket address when the host is an IP address (no DNS needed).
    pub(crate) fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }

    /// Resolves the host name (the system resolver, as libpq uses).
    pub(crate) async fn resolve(&self) -> Result<Vec<SocketAddr>, Error> {
        match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
            Ok(addresses) => Ok(addresses.collect()),
            Err(source) => Err(dns_error(&self.host, source)),
        }
    }

    /// Connects to the first address that accepts, in order, each with its share of what
    /// is left of `deadline`; sets `TCP_NODELAY` and the keepalive.
    pub(crate) async fn dial(
        &self,
        addresses: &[SocketAddr],
        deadline: Deadline,
        keepalive: Option<Keepalive>,
    ) -> Result<TcpStream, Error> {
        let mut attempts = Vec::with_capacity(addresses.len());
        let mut last_source = None;
        for (i, addr) in addresses.iter().enumerate() {
            let left = addresses.len() - i;
            let share = deadline.remaining() / u32::try_from(left).unwrap_or(u32::MAX);
            let started = Instant::now();
            let outcome = tokio::time::timeout(share, TcpStream::connect(addr)).await;
            let reason = match outcome {
                Ok(Ok(stream)) => {
                    configure(&stream, keepalive);
                    return Ok(stream);
                }
                Ok(Err(e)) => {
                    let reason = e.to_string();
                    last_source = Some(e);
                    reason
                }
                Err(_) => format!("timed out after {}", format_duration(started.elapsed())),
            };
            attempts.push((addr, reason));
        }
        let (address, reason) = match attempts.as_slice() {
            [] => (
                format!("{}:{}", self.host, self.port),
                "the name resolved to no address".to_owned(),
            ),
            [(addr, reason)] if self.literal().is_some() => (addr.to_string(), reason.clone()),
            [(addr, reason)] => (
                format!("{}:{} ({addr})", self.host, self.port),
                reason.clone(),
            ),
            several => {
                let mut listed = String::new();
                for (addr, reason) in several {
                    if !listed.is_empty() {
                        listed.push_str("; ");
                    }
                    let _ = write!(listed, "{addr}: {reason}");
                }
                (format!("{}:{}", self.host, self.port), listed)
            }
        };
        // The socket error of a single attempt; several are listed in the reason.
        let source = if addresses.len() == 1 {
            last_source
        } else {
            None
        };
        Err(tcp_error(&address, &reason, source))
    }
}

/// Small request/response messages: no waiting for Nagle. Keepalive as configured. Both
/// are best effort: a socket that refuses an option still works.
fn configure(stream: &TcpStream, keepalive: Option<Keepalive>) {
    let _ = stream.set_nodelay(true);
    if let Some(k) = keepalive {
        let settings = socket2::TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.retries);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&settings) {
            tracing::debug!(error = %e, "TCP keepalive not set");
        }
    }
}

/// Parses `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address (libpq's
/// `hostaddr` plus an optional port).
pub(crate) fn parse_address(
    address: &str,
    default_port: u16,
) -> Result<DialTarget, crate::ConfigError> {
    let bad = |reason: &str| crate::ConfigError::Invalid {
        name: "connect_address",
        reason: format!("{address:?}: {reason}"),
    };
    let address = address.trim();
    if address.is_empty() {
        return Err(bad("is empty"));
    }
    if address.contains("://") || address.contains('/') {
        return Err(bad("give host or host:port, without scheme or path"));
    }
    if address.parse::<IpAddr>().is_ok() {
        return Ok(DialTarget {
            host: address.to_owned(),
            port: default_port,
        });
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad("unexpected text after ']'")),
        }
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be 1 to 65535")),
            Ok(p) => p,
        },
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    Ok(DialTarget {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(address: &str) -> (String, u16) {
        let t = parse_address(address, 5432).expect(address);
        (t.host, t.port)
    }

    #[test]
    fn addresses_parse_like_libpq_hostaddr_plus_port() {
        assert_eq!(parsed("127.0.0.1"), ("127.0.0.1".into(), 5432));
        assert_eq!(parsed("127.0.0.1:6000"), ("127.0.0.1".into(), 6000));
        assert_eq!(parsed("localhost:6000"), ("localhost".into(), 6000));
        assert_eq!(parsed("::1"), ("::1".into(), 5432));
        assert_eq!(parsed("[::1]:6000"), ("::1".into(), 6000));
        for bad in ["", "h:0", "h:70000", "h:x", "tcp://h:1", "[::1", ":5432"] {
            assert!(parse_address(bad, 5432).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_refused_port_is_a_tcp_error_naming_the_address() {
        // Bind then drop: nothing listens on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let target = parse_address(&format!("127.0.0.1:{port}"), 5432).expect("valid");
        let addresses = [target.literal().expect("an IP address")];
        let deadline = Deadline::after(Duration::from_secs(5));
        let err = target
            .dial(&addresses, deadline, None)
            .await
            .expect_err("refused");
        assert!(
            err.to_string().starts_with(&format!(
                "tcp: cannot connect to 127.0.0.1:{port}: Connection refused"
            )),
            "{err}"
        );
    }

    /// A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    /// to it hangs like one to a blackholed address.
    fn blackhole() -> (std::net::TcpListener, std::net::TcpStream, SocketAddr) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        socket.listen(0).expect("listen");
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().expect("addr");
        // Fills the queue (never accepted).
        let filler = std::net::TcpStream::connect(addr).expect("first connect fills the queue");
        (listener, filler, addr)
    }

    #[tokio::test]
    async fn a_blackholed_first_address_costs_its_share_not_the_deadline() {
        let (_listener, _filler, dead) = blackhole();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live_addr = live.local_addr().expect("addr");
        let target = DialTarget {
            host: "db.example".to_owned(),
            port: 5432,
        };
        let started = Instant::now();
        let stream = target
            .dial(
                &[dead, live_addr],
                Deadline::after(Duration::from_secs(4)),
                Some(Keepalive::default()),
            )
            .await
            .expect("the second address answers");
        assert_eq!(stream.peer_addr().expect("peer"), live_addr);
        let took = started.elapsed();
        // The dead address had half of the 4 s; the connect did not use the whole deadline.
        assert!(took >= Duration::from_millis(1900), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let keepalive = socket2::SockRef::from(&stream)
            .keepalive()
            .expect("getsockopt");
        assert!(keepalive, "keepalive is on");
    }

    #[tokio::test]
    async fn when_every_address_fails_each_attempt_is_reported() {
        let (_listener, _filler, dead) = blackhole();
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let target = DialTarget {
            host: "db.example".to_owned(),
            port: 5432,
        };
        let err = target
            .dial(
                &[dead, refused],
                Deadline::after(Duration::from_secs(1)),
                None,
            )
            .await
            .expect_err("nothing answers");
        let text = err.to_string();
        assert!(
            text.starts_with("tcp: cannot connect to db.example:5432: "),
            "{text}"
        );
        assert!(
            text.contains(&format!("{dead}: timed out after 50")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{refused}: Connection refused")),
            "{text}"
        );
    }
}
