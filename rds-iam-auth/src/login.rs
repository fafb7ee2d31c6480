//! The login stage: PostgreSQL's startup over the TLS stream `tls::handshake` opened, with
//! the token as the cleartext password RDS Proxy asks for.
//!
//! tokio-postgres is handed a stream that is already encrypted and told not to negotiate
//! TLS itself (`sslmode=disable`, `NoTls`): the negotiation happened before, verified
//! against the endpoint name, while the token was still being signed.

use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{NoTls, NoTlsStream};
use tokio_postgres::{Client, Connection};

use crate::tls::TlsStream;
use crate::token::AuthToken;

/// The startup settings every connection of a connector shares (user, database,
/// application name): everything but the password.
pub(crate) fn startup(
    user: &str,
    database: Option<&str>,
    application_name: Option<&str>,
) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    // The stream given to `login` is TLS already: tokio-postgres must not ask again.
    pg.user(user).ssl_mode(SslMode::Disable);
    if let Some(db) = database {
        pg.dbname(db);
    }
    if let Some(name) = application_name {
        pg.application_name(name);
    }
    pg
}

/// A session whose TLS stream tokio-postgres drives.
pub(crate) type Session = (Client, Connection<TlsStream, NoTlsStream>);

/// Logs in on the TLS `stream` with `token`.
pub(crate) async fn login(
    startup: &tokio_postgres::Config,
    token: &AuthToken,
    stream: TlsStream,
) -> Result<Session, tokio_postgres::Error> {
    let mut pg = startup.clone();
    pg.password(token.as_str());
    pg.connect_raw(stream, NoTls).await
}
