//! `Connector::connect_stream` and `Connector::cancel` against the local stack: the raw
//! session a relay hands to its client, its greeting, the retry after an IAM refusal, and
//! a cancel request delivered over verified TLS.

mod common;

use std::time::{Duration, Instant};

use rds_iam_auth::{Reason, Stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads messages until `ReadyForQuery`; returns (tag, body) of each.
async fn read_until_ready(stream: &mut rds_iam_auth::TlsStream) -> Vec<(u8, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut messages = Vec::new();
    loop {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < len + 1 {
                break;
            }
            let raw: Vec<u8> = buf.drain(..len + 1).collect();
            let tag = raw[0];
            messages.push((tag, raw[5..].to_vec()));
            if tag == b'Z' {
                return messages;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "server closed; got {messages:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn simple_query(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

/// The text of the first column of the first DataRow.
fn first_value(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = messages.iter().find(|(tag, _)| *tag == b'D')?;
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
    Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned())
}

fn sqlstate(messages: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = messages.iter().find(|(tag, _)| *tag == b'E')?;
    let start = body.iter().position(|&b| b == b'C')? + 1;
    let end = start + body[start..].iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&body[start..end]).into_owned())
}

#[tokio::test]
async fn a_stream_session_is_logged_in_with_its_greeting_and_parameters() {
    let stack = common::stack().await;
    let connector = common::connector_for(&stack, common::ro(&stack)).await;
    let session = connector
        .connect_stream(&[("application_name", "stream-test")])
        .await
        .expect("stream session");
    let greeting = session.greeting().to_vec();
    assert_eq!(
        greeting.last_chunk::<6>(),
        Some(b"Z\0\0\0\x05I"),
        "ends with ReadyForQuery(I)"
    );
    assert!(
        greeting
            .windows(16)
            .any(|w| w == b"server_version\0\0".as_slice())
            || greeting.windows(15).any(|w| w == b"server_version\0"),
        "ParameterStatus server_version is in the greeting"
    );
    assert!(session.backend_key().is_some(), "BackendKeyData kept");

    let mut stream = session.into_stream();
    stream
        .write_all(&simple_query(
            "SELECT current_user || ' ' || current_setting('application_name') || ' ' || current_database()",
        ))
        .await
        .unwrap();
    let answer = read_until_ready(&mut stream).await;
    assert_eq!(
        first_value(&answer).as_deref(),
        Some(format!("{} stream-test {}", stack.db_user(), stack.db_name()).as_str())
    );
}

#[tokio::test]
async fn the_database_parameter_replaces_the_configured_one_and_user_is_refused() {
    let stack = common::stack().await;
    let connector = common::connector_for(&stack, common::ro(&stack)).await;

    let mut stream = connector
        .connect_stream(&[("database", "postgres")])
        .await
        .expect("session on another database")
        .into_stream();
    stream
        .write_all(&simple_query("SELECT current_database()"))
        .await
        .unwrap();
    let answer = read_until_ready(&mut stream).await;
    assert_eq!(first_value(&answer).as_deref(), Some("postgres"));

    let err = connector
        .connect_stream(&[("user", "someone_else")])
        .await
        .unwrap_err();
    assert_eq!(
        (err.stage(), err.reason()),
        (Stage::Config, Reason::InvalidConfig)
    );

    let err = connector
        .connect_stream(&[("database", "no_such_db")])
        .await
        .unwrap_err();
    assert_eq!(err.stage(), Stage::Login);
    assert_eq!(err.reason(), Reason::DatabaseNotFound, "{err}");
    assert_eq!(err.sqlstate(), Some("3D000"));
}

#[tokio::test]
async fn an_iam_refusal_is_classified_and_retried_once_with_fresh_credentials() {
    let stack = common::stack().await;
    let connector = common::connector_for(&stack, common::ro(&stack)).await;
    connector.token().await.expect("credentials cached");

    // One refused login: the retry with refreshed credentials gets in.
    stack.refuse_next_logins(1);
    connector
        .connect_stream(&[])
        .await
        .expect("retried with refreshed credentials");

    // Two more refusals within the minute: no second refresh, the refusal is reported.
    stack.refuse_next_logins(2);
    let err = connector.connect_stream(&[]).await.unwrap_err();
    assert_eq!(err.stage(), Stage::Login);
    assert_eq!(err.reason(), Reason::IamRefused, "{err}");
    assert_eq!(err.sqlstate(), Some("28P01"));
    assert!(err.hint().is_some());
}

#[tokio::test]
async fn cancel_interrupts_the_running_query_over_verified_tls() {
    let stack = common::stack().await;
    let connector = common::connector_for(&stack, common::ro(&stack)).await;
    let session = connector.connect_stream(&[]).await.expect("session");
    let key = session.backend_key().expect("backend key");
    let mut stream = session.into_stream();
    stream
        .write_all(&simple_query("SELECT pg_sleep(30)"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    connector.cancel(key).await.expect("cancel delivered");
    let answer = tokio::time::timeout(Duration::from_secs(5), read_until_ready(&mut stream))
        .await
        .expect("the query ends soon after the cancel");
    assert_eq!(
        sqlstate(&answer).as_deref(),
        Some("57014"),
        "query_canceled"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // The session is still usable.
    stream.write_all(&simple_query("SELECT 1")).await.unwrap();
    assert_eq!(
        first_value(&read_until_ready(&mut stream).await).as_deref(),
        Some("1")
    );
}
