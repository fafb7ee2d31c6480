//! The login stage: PostgreSQL's startup over the TLS stream `tls::handshake` opened, with
//! the token as the cleartext password RDS Proxy asks for, or a stored password (sent as
//! the server asks: SCRAM-SHA-256 where it offers it, MD5 or cleartext otherwise, always
//! inside TLS).
//!
//! tokio-postgres is handed a stream that is already encrypted and told not to negotiate
//! TLS itself (`sslmode=disable`, `NoTls`): the negotiation happened before, verified
//! against the endpoint name, while the token was still being signed.

use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{NoTls, NoTlsStream};
use tokio_postgres::{Client, Connection};

use crate::password::Password;
use crate::tls::TlsStream;
use crate::token::AuthToken;

/// What a login sends as its password: an IAM token signed for it, or the stored password
/// (Secrets Manager, Parameter Store). From [`Connector::login_password`], for clients that
/// log in by themselves (psql). It has no `Display`, and its `Debug` shows only its kind.
///
/// [`Connector::login_password`]: crate::Connector::login_password
pub struct LoginPassword(Kind);

enum Kind {
    Token(AuthToken),
    Stored(Password),
}

impl LoginPassword {
    pub(crate) fn token(token: AuthToken) -> Self {
        Self(Kind::Token(token))
    }

    pub(crate) fn stored(password: Password) -> Self {
        Self(Kind::Stored(password))
    }

    /// The password itself, to hand to the login (never to a log).
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Kind::Token(token) => token.as_str(),
            Kind::Stored(password) => password.as_str(),
        }
    }

    /// Whether this is an IAM token (else a stored password).
    pub fn is_token(&self) -> bool {
        matches!(self.0, Kind::Token(_))
    }
}

impl std::fmt::Debug for LoginPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Kind::Token(_) => f.write_str("LoginPassword(token, ** redacted **)"),
            Kind::Stored(_) => f.write_str("LoginPassword(stored, ** redacted **)"),
        }
    }
}

/// The startup settings every connection of a connector shares (user, database,
/// application name): everything but the password.
pub(crate) fn startup(
    user: &str,
    database: Option<&str>,
    application_name: Option<&str>,
    options: Option<&str>,
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
    if let Some(options) = options {
        pg.options(options);
    }
    pg
}

/// A session whose TLS stream tokio-postgres drives.
pub(crate) type Session = (Client, Connection<TlsStream, NoTlsStream>);

/// Logs in on the TLS `stream` with `password` (tokio-postgres answers whichever method
/// the server asks for).
pub(crate) async fn login(
    startup: &tokio_postgres::Config,
    password: &LoginPassword,
    stream: TlsStream,
) -> Result<Session, tokio_postgres::Error> {
    let mut pg = startup.clone();
    pg.password(password.as_str());
    pg.connect_raw(stream, NoTls).await
}

/// Whether the session allows writes (`SHOW transaction_read_only`), asked while the
/// connection is driven here: the caller spawns it only afterwards. Messages that arrive
/// meanwhile (notices) are dropped: nothing can `LISTEN` yet.
pub(crate) async fn is_read_only(session: &mut Session) -> Result<bool, tokio_postgres::Error> {
    use std::future::Future;
    use std::task::Poll;
    use tokio_postgres::SimpleQueryMessage;

    let (client, connection) = session;
    let query = client.simple_query("SHOW transaction_read_only");
    tokio::pin!(query);
    let messages = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = query.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        loop {
            match connection.poll_message(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // Closed: the query fails with the reason.
                Poll::Ready(None) => return query.as_mut().poll(cx),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await?;
    Ok(messages.iter().any(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0) == Some("on"),
        _ => false,
    }))
}
