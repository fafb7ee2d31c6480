//! The network stages: resolving the address to dial and opening the TCP connection.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

use crate::error::Error;

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
            Err(source) => Err(Error::Dns {
                host: self.host.clone(),
                source,
            }),
        }
    }

    /// Connects to the first address that accepts, in order. The caller bounds the time.
    pub(crate) async fn dial(&self, addresses: &[SocketAddr]) -> Result<TcpStream, Error> {
        let mut last_error = None;
        for addr in addresses {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Small request/response messages: do not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last_error = Some((addr, e)),
            }
        }
        Err(match last_error {
            Some((addr, source)) => Error::Tcp {
                address: if self.literal().is_some() {
                    addr.to_string()
                } else {
                    format!("{}:{} ({addr})", self.host, self.port)
                },
                reason: source.to_string(),
                source: Some(source),
            },
            None => Error::Tcp {
                address: format!("{}:{}", self.host, self.port),
                reason: "the name resolved to no address".to_owned(),
                source: None,
            },
        })
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
        let err = target.dial(&addresses).await.expect_err("refused");
        assert!(
            err.to_string()
                .starts_with(&format!("tcp: cannot connect to 127.0.0.1:{port}: ")),
            "{err}"
        );
    }
}
