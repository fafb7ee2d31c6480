//! A `tokio_postgres::Config` as the starting point ([`Config::from_pg_config`]): what it
//! says is taken over, what cannot work with IAM authentication is refused with a reason.

use tokio_postgres::config::{ChannelBinding, Host, SslMode};

use super::Config;
use crate::error::ConfigError;
use crate::net::Keepalive;

/// tokio-postgres' default idle time before the first keepalive probe (libpq's, the OS's).
const PG_DEFAULT_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(2 * 60 * 60);

pub(crate) fn config_from(pg: &tokio_postgres::Config) -> Result<Config, ConfigError> {
    let refuse = |name: &'static str, reason: &str| ConfigError::Invalid {
        name,
        reason: reason.to_owned(),
    };
    if pg.get_password().is_some() {
        return Err(refuse(
            "password",
            "is set: the IAM token is the password, signed for each connection; remove it",
        ));
    }
    if pg.get_ssl_mode() == SslMode::Disable {
        return Err(refuse(
            "sslmode",
            "is `disable`: IAM authentication needs TLS (RDS Proxy refuses it without); TLS is always on and verified",
        ));
    }
    if pg.get_channel_binding() == ChannelBinding::Require {
        return Err(refuse(
            "channel_binding",
            "is `require`: IAM authentication sends the token as a cleartext password inside TLS, there is no SCRAM exchange to bind",
        ));
    }
    let hostname = match pg.get_hosts() {
        [] => None,
        [Host::Tcp(host)] => Some(host.clone()),
        [_] => {
            return Err(refuse(
                "host",
                "is a Unix socket: IAM authentication goes over TCP and TLS",
            ))
        }
        _ => {
            return Err(refuse(
                "host",
                "lists several hosts: give the one proxy endpoint (it does the failover)",
            ))
        }
    };
    let port = match pg.get_ports() {
        [] => None,
        [port] => Some(*port),
        _ => return Err(refuse("port", "lists several ports: give one")),
    };
    let connect_address = match pg.get_hostaddrs() {
        [] => None,
        [addr] => Some(match port {
            Some(p) => std::net::SocketAddr::new(*addr, p).to_string(),
            None => addr.to_string(),
        }),
        _ => return Err(refuse("hostaddr", "lists several addresses: give one")),
    };
    let keepalive = if !pg.get_keepalives() {
        Some(None)
    } else if pg.get_keepalives_idle() != PG_DEFAULT_KEEPALIVE_IDLE
        || pg.get_keepalives_interval().is_some()
        || pg.get_keepalives_retries().is_some()
    {
        let ours = Keepalive::default();
        Some(Some(Keepalive {
            idle: pg.get_keepalives_idle(),
            interval: pg.get_keepalives_interval().unwrap_or(ours.interval),
            retries: pg.get_keepalives_retries().unwrap_or(ours.retries),
        }))
    } else {
        None // tokio-postgres' defaults, not a choice: keep this crate's
    };

    let mut config = Config::new()
        .set_hostname(hostname)
        .set_port(port)
        .set_connect_address(connect_address)
        .set_user(pg.get_user().map(str::to_owned))
        .set_database(pg.get_dbname().map(str::to_owned))
        .set_application_name(pg.get_application_name().map(str::to_owned))
        .set_options(pg.get_options().map(str::to_owned))
        .set_connect_timeout(pg.get_connect_timeout().copied())
        .target_session_attrs(pg.get_target_session_attrs());
    if let Some(keepalive) = keepalive {
        config = config.keepalive(keepalive);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        config_from(&s.parse::<tokio_postgres::Config>().expect("parses"))
    }

    #[test]
    fn settings_are_taken_over() {
        let config = parse(
            "host=db.example port=6432 hostaddr=127.0.0.1 user=app dbname=orders \
             application_name=billing options='-c search_path=app' connect_timeout=7 \
             keepalives_idle=30 target_session_attrs=read-write",
        )
        .unwrap();
        let shown = format!("{config:?}");
        for expected in [
            "hostname: Some(\"db.example\")",
            "port: Some(6432)",
            "connect_address: Some(\"127.0.0.1:6432\")",
            "user: Some(\"app\")",
            "database: Some(\"orders\")",
            "application_name: Some(\"billing\")",
            "options: Some(\"-c search_path=app\")",
            "connect_timeout: Some(7s)",
            "idle: 30s, interval: 10s, retries: 5",
            "target_session_attrs: Some(ReadWrite)",
        ] {
            assert!(shown.contains(expected), "{expected} in {shown}");
        }
    }

    #[test]
    fn defaults_stay_this_crates() {
        let config = parse("host=db.example user=app").unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("keepalive: None"), "{shown}");
        let off = format!(
            "{:?}",
            parse("host=db.example user=app keepalives=0").unwrap()
        );
        assert!(off.contains("keepalive: Some(None)"), "{off}");
        let _ = Duration::ZERO;
    }

    #[test]
    fn what_cannot_work_is_refused_with_its_reason() {
        for (conninfo, name, reason) in [
            (
                "host=h user=u password=p",
                "password",
                "the IAM token is the password",
            ),
            (
                "host=h user=u sslmode=disable",
                "sslmode",
                "TLS is always on",
            ),
            (
                "host=h user=u channel_binding=require",
                "channel_binding",
                "cleartext",
            ),
            ("host=/var/run/postgresql user=u", "host", "Unix socket"),
            ("host=a,b user=u", "host", "several hosts"),
        ] {
            let err = parse(conninfo).expect_err(conninfo);
            let shown = err.to_string();
            assert!(
                shown.contains(&format!("`{name}`")) && shown.contains(reason),
                "{conninfo}: {shown}"
            );
        }
    }
}
