//! The login stage: PostgreSQL's startup over TLS, with the token as the password.
//!
//! tokio-postgres runs the whole exchange in `connect_raw`: SSLRequest, the TLS handshake
//! (through [`TimedTls`], which notes when it finished), the startup message, and the
//! cleartext password RDS Proxy asks for. `sslmode=require` here means "TLS or nothing";
//! the certificate is verified by rustls against the endpoint name whatever the mode says.

use tokio::net::TcpStream;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Connection};

use crate::tls::{TimedTls, TlsStream};
use crate::token::AuthToken;

/// The startup settings every connection of a connector shares (user, database,
/// application name): everything but the password.
pub(crate) fn startup(
    user: &str,
    database: Option<&str>,
    application_name: Option<&str>,
) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.user(user).ssl_mode(SslMode::Require);
    if let Some(db) = database {
        pg.dbname(db);
    }
    if let Some(name) = application_name {
        pg.application_name(name);
    }
    pg
}

/// Logs in on `stream` with `token`. Errors are tokio-postgres's: the caller tells the TLS
/// stage from the login stage by whether the handshake finished.
pub(crate) async fn login(
    startup: &tokio_postgres::Config,
    token: &AuthToken,
    stream: TcpStream,
    tls: TimedTls,
) -> Result<(Client, Connection<TcpStream, TlsStream>), tokio_postgres::Error> {
    let mut pg = startup.clone();
    pg.password(token.as_str());
    pg.connect_raw(stream, tls).await
}
