//! The RDS Proxy stand-in against a real PostgreSQL: the happy path over verified TLS,
//! every refusal class with its exact message and SQLSTATE, read-only sessions, limits,
//! backend down.

mod common;

use common::*;
use rds_proxy_emulator::StackConfig;
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[tokio::test]
async fn happy_path_reads_seeded_rows_over_verified_tls() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    assert_eq!(ep.target_role.as_str(), "READ_ONLY");
    assert_eq!(ep.port, 5432);
    assert!(ep.listen.ip().is_loopback());
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(&stack, &ep, "app_user", &creds, now());
    let client = connect(&stack, &ep, "app_user", &token).await?;
    let rows = client
        .query("SELECT name FROM customers ORDER BY id", &[])
        .await?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        names,
        [
            "Ada Lovelace",
            "Grace Hopper",
            "Alan Turing",
            "Katherine Johnson"
        ]
    );
    let row = client
        .query_one(
            "SELECT count(*)::int, current_user::text, current_database()::text FROM orders",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i32>(0), 5);
    assert_eq!(row.get::<_, String>(1), "app_user");
    assert_eq!(row.get::<_, String>(2), "example_db");
    // The backend session really is behind TLS on the proxy side only.
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(!ssl);
    Ok(())
}

#[tokio::test]
async fn read_only_endpoint_refuses_writes_and_read_write_allows_them() -> TestResult {
    let stack = demo().await;
    let creds = session(&stack, CONNECT_ROLE);
    let ro = stack.endpoint("READ_ONLY").unwrap().clone();
    let rw = stack.endpoint("READ_WRITE").unwrap().clone();

    let client = connect(
        &stack,
        &ro,
        "app_user",
        &sign_token(&stack, &ro, "app_user", &creds, now()),
    )
    .await?;
    let err = client
        .execute(
            "INSERT INTO products (id, name, price_cents) VALUES (9, 'x', 1)",
            &[],
        )
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "25006");
    assert_eq!(
        db.message(),
        "cannot execute INSERT in a read-only transaction"
    );

    let client = connect(
        &stack,
        &rw,
        "app_user",
        &sign_token(&stack, &rw, "app_user", &creds, now()),
    )
    .await?;
    let n = client
        .execute(
            "INSERT INTO products (id, name, price_cents) VALUES (9, 'x', 1)",
            &[],
        )
        .await?;
    assert_eq!(n, 1);
    let count: i64 = client
        .query_one("SELECT count(*) FROM products", &[])
        .await?
        .get(0);
    assert_eq!(count, 4);
    Ok(())
}

async fn assert_iam_refused(stack: &rds_proxy_emulator::LocalStack, user: &str, token: &str) {
    let ep = stack.app_endpoint().clone();
    let err = connect(stack, &ep, user, token)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(refusal(&err), iam_failed(user), "{err}");
}

#[tokio::test]
async fn token_for_another_user_host_port_or_region_is_refused() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, CONNECT_ROLE);
    // Another db user (one the role may connect as would be refused just the same).
    let token = sign_token(&stack, &ep, "someone_else", &creds, now());
    assert_iam_refused(&stack, "app_user", &token).await;
    // The other endpoint's host.
    let rw = stack.endpoint("READ_WRITE").unwrap().clone();
    assert_iam_refused(
        &stack,
        "app_user",
        &sign_token(&stack, &rw, "app_user", &creds, now()),
    )
    .await;
    // The real listen port instead of the advertised 5432.
    let mut wrong_port = ep.clone();
    wrong_port.port = ep.listen.port();
    assert_iam_refused(
        &stack,
        "app_user",
        &sign_token(&stack, &wrong_port, "app_user", &creds, now()),
    )
    .await;
    // Another region.
    let token = sign_for(
        &ep.hostname,
        ep.port,
        "us-west-2",
        "app_user",
        &creds,
        now(),
    );
    assert_iam_refused(&stack, "app_user", &token).await;
    // Upper-case host name is the same host: botocore signs the lower-cased host and
    // prints the host as the caller wrote it.
    let token = sign_token(&stack, &ep, "app_user", &creds, now());
    let token = token.replacen(&ep.hostname, &ep.hostname.to_uppercase(), 1);
    assert!(token.starts_with("APPLICATION-DB-ENDPOINT-READ-ONLY."));
    connect(&stack, &ep, "app_user", &token).await?;
    Ok(())
}

#[tokio::test]
async fn expired_tampered_and_foreign_credential_tokens_are_refused() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, CONNECT_ROLE);
    // Expired: signed 16 minutes ago.
    let old = sign_token(
        &stack,
        &ep,
        "app_user",
        &creds,
        now() - time::Duration::minutes(16),
    );
    assert_iam_refused(&stack, "app_user", &old).await;
    // From the future beyond the 5-minute skew allowance; within it is fine.
    let future = sign_token(
        &stack,
        &ep,
        "app_user",
        &creds,
        now() + time::Duration::minutes(6),
    );
    assert_iam_refused(&stack, "app_user", &future).await;
    let skewed = sign_token(
        &stack,
        &ep,
        "app_user",
        &creds,
        now() + time::Duration::minutes(4),
    );
    connect(&stack, &ep, "app_user", &skewed).await?;
    // Tampered: one signature digit changed.
    let good = sign_token(&stack, &ep, "app_user", &creds, now());
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    assert_iam_refused(&stack, "app_user", &String::from_utf8(tampered)?).await;
    // Garbage.
    assert_iam_refused(&stack, "app_user", "not a token").await;
    // Signed with credentials that had expired.
    let expired =
        stack.issue_credentials(CONNECT_ROLE, "expired", now() - time::Duration::seconds(1))?;
    assert_iam_refused(
        &stack,
        "app_user",
        &sign_token(&stack, &ep, "app_user", &expired, now()),
    )
    .await;
    // Issued key with a session token STS never issued.
    let mut forged = creds.clone();
    forged.session_token = format!("{}x", creds.session_token);
    assert_iam_refused(
        &stack,
        "app_user",
        &sign_token(&stack, &ep, "app_user", &forged, now()),
    )
    .await;
    // Unknown access key.
    let mut unknown = creds.clone();
    unknown.access_key_id = "ASIAUNKNOWNUNKNOWN00".into();
    assert_iam_refused(
        &stack,
        "app_user",
        &sign_token(&stack, &ep, "app_user", &unknown, now()),
    )
    .await;
    // The application principal's own long-term keys (not the assumed role).
    let (akid, secret) = stack.app_credentials();
    let token = TokenSpec {
        host: &ep.hostname,
        port: 5432,
        region: "us-east-1",
        user: "app_user",
        access_key_id: &akid,
        secret_access_key: &secret,
        session_token: None,
        expires_in: 900,
    }
    .sign(now());
    assert_iam_refused(&stack, "app_user", &token).await;
    // After all that, the good token still works.
    connect(&stack, &ep, "app_user", &good).await?;
    Ok(())
}

#[tokio::test]
async fn role_without_rds_db_connect_is_refused() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, NO_CONNECT_ROLE);
    assert_iam_refused(
        &stack,
        "app_user",
        &sign_token(&stack, &ep, "app_user", &creds, now()),
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn db_user_without_a_secret_gets_the_no_credentials_message() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(&stack, &ep, "nobody", &creds, now());
    let err = connect(&stack, &ep, "nobody", &token)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(
        refusal(&err),
        (
            "28P01".to_string(),
            "This RDS proxy has no credentials for the role nobody. Check the credentials for this role and try again.".to_string()
        )
    );
    Ok(())
}

#[tokio::test]
async fn startup_refusals_have_the_rds_proxy_messages() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let v3 = 196_608;
    // Plaintext.
    assert_eq!(
        raw_refusal(
            &stack,
            &ep,
            false,
            &startup_packet(v3, &[("user", "app_user")])
        )
        .await,
        (
            "28000".into(),
            "This RDS Proxy requires TLS connections.".into()
        )
    );
    // Protocol 2.0.
    assert_eq!(
        raw_refusal(&stack, &ep, true, &startup_packet(2 << 16, &[("user", "app_user")])).await,
        ("0A000".into(), "Feature not supported: RDS Proxy supports only version 3.0 of the PostgreSQL messaging protocol.".into())
    );
    // Missing user.
    assert_eq!(
        raw_refusal(&stack, &ep, true, &startup_packet(v3, &[("database", "example_db")])).await,
        ("28000".into(), "A user name is missing from the connection startup packet. Provide a user name for this connection.".into())
    );
    // Replication.
    assert_eq!(
        raw_refusal(&stack, &ep, true, &startup_packet(v3, &[("user", "app_user"), ("replication", "database")])).await,
        ("0A000".into(), "Feature not supported: RDS Proxy currently doesn't support streaming replication mode.".into())
    );
    // Unsupported option.
    assert_eq!(
        raw_refusal(
            &stack,
            &ep,
            true,
            &startup_packet(v3, &[("user", "app_user"), ("options", "-c work_mem=1MB")])
        )
        .await,
        (
            "0A000".into(),
            "Feature not supported: RDS Proxy currently doesn't support the option options.".into()
        )
    );
    // GSSENCRequest is declined with 'N', then plaintext startup is refused.
    let mut raw = Raw::open(&stack, &ep, false).await;
    raw.write(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await;
    if let Raw::Plain(s) = &mut raw {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        assert_eq!(&b, b"N");
    }
    // tokio-postgres with TLS disabled sees the TLS message too.
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&ep.hostname)
        .hostaddr(ep.listen.ip())
        .port(ep.listen.port())
        .user("app_user")
        .password("x");
    let err = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(
        refusal(&err),
        (
            "28000".into(),
            "This RDS Proxy requires TLS connections.".into()
        )
    );
    Ok(())
}

#[tokio::test]
async fn tls_is_verified_against_the_endpoint_name() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(&stack, &ep, "app_user", &creds, now());
    // A name not on the certificate.
    let err = connect_as(
        &stack,
        &ep,
        "wrong.proxy-abc123xyz789.us-east-1.rds.amazonaws.com",
        "app_user",
        &token,
    )
    .await
    .map(|_| ())
    .expect_err("TLS refuses the name");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    // The other endpoint's name is on the certificate too (one proxy, one certificate);
    // which endpoint a client reaches depends on the address it dials, as in AWS.
    let rw = stack.endpoint("READ_WRITE").unwrap().clone();
    connect_as(&stack, &ep, &rw.hostname, "app_user", &token).await?;
    // Without the CA: unknown issuer.
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&ep.hostname)
        .hostaddr(ep.listen.ip())
        .port(ep.listen.port())
        .user("app_user")
        .password(token.as_str())
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let roots = rustls::RootCertStore::empty();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let err = cfg
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(config))
        .await
        .map(|_| ())
        .expect_err("unknown CA");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn client_connection_limit() -> TestResult {
    let mut config = StackConfig::demo();
    config.proxy.max_client_connections = 2;
    let stack = start(config).await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(&stack, &ep, "app_user", &creds, now());
    let a = connect(&stack, &ep, "app_user", &token).await?;
    let b = connect(&stack, &ep, "app_user", &token).await?;
    let err = connect(&stack, &ep, "app_user", &token)
        .await
        .map(|_| ())
        .expect_err("third refused");
    assert_eq!(
        refusal(&err),
        (
            "53300".into(),
            "The maximum number of client connections to the proxy exceeded 2.".into()
        )
    );
    drop(a);
    // The slot is released when the client goes away.
    for _ in 0..100 {
        if stack.proxy_client_connections() < 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let c = connect(&stack, &ep, "app_user", &token).await?;
    assert_eq!(c.query_one("SELECT 1", &[]).await?.get::<_, i32>(0), 1);
    drop(b);
    Ok(())
}

#[tokio::test]
async fn idle_client_timeout_closes_the_session() -> TestResult {
    let mut config = StackConfig::demo();
    config.proxy.idle_client_timeout_seconds = 1;
    let stack = start(config).await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, CONNECT_ROLE);
    let client = connect(
        &stack,
        &ep,
        "app_user",
        &sign_token(&stack, &ep, "app_user", &creds, now()),
    )
    .await?;
    client.query_one("SELECT 1", &[]).await?;
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert!(client.query_one("SELECT 1", &[]).await.is_err());
    Ok(())
}

#[tokio::test]
async fn backend_down_gives_a_fatal_error_not_a_hang() -> TestResult {
    let stack = demo().await;
    let ep = stack.app_endpoint().clone();
    let creds = session(&stack, CONNECT_ROLE);
    let token = sign_token(&stack, &ep, "app_user", &creds, now());
    let client = connect(&stack, &ep, "app_user", &token).await?;
    stack.stop_backend().await;
    assert!(!stack.postgres().is_running());
    // The open session ends with PostgreSQL's own shutdown error.
    assert!(client.query_one("SELECT 1", &[]).await.is_err());
    let started = std::time::Instant::now();
    let err = connect(&stack, &ep, "app_user", &token)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        refusal(&err),
        (
            "08006".into(),
            "RDS Proxy could not open a connection to the database: the database is not reachable."
                .into()
        )
    );
    Ok(())
}

/// What the database sends after the client has finished sending reaches the client, and
/// the proxy then closes TLS cleanly (close_notify): the relay half-closes (the backend
/// sees the end of the client's input) and keeps relaying the other way a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_messages_after_the_client_half_closes_reach_it() -> TestResult {
    let stack = demo().await;
    let ep = stack.endpoint("READ_WRITE").expect("endpoint").clone();
    let creds = session(&stack, CONNECT_ROLE);
    let token = || sign_token(&stack, &ep, "app_user", &creds, now());

    // A query's results, computed after the client ended its side.
    let mut raw = Raw::login(&stack, &ep, "app_user", &token()).await;
    raw.write(&query_message("SELECT pg_sleep(0.3), 42")).await;
    raw.shutdown_write().await;
    let mut tags = Vec::new();
    let mut value = Vec::new();
    while let Some((tag, body)) = raw.read_message().await {
        if tag == b'D' {
            value = columns(&body);
        }
        tags.push(tag);
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(tags, b"TDCZ", "{}", String::from_utf8_lossy(&tags));
    assert_eq!(value, [Some(String::new()), Some("42".to_string())]);
    assert_eq!(raw.read_to_end().await?, b"", "a clean TLS close");

    // A FATAL the server sends after the client ended its side (its session terminated
    // while a query runs, as a failover does): the client reads it.
    let mut raw = Raw::login(&stack, &ep, "app_user", &token()).await;
    raw.write(&query_message("SELECT pg_backend_pid()")).await;
    let mut pid = String::new();
    while let Some((tag, body)) = raw.read_message().await {
        match tag {
            b'D' => pid = columns(&body).remove(0).unwrap_or_default(),
            b'Z' => break,
            _ => {}
        }
    }
    let pid: i32 = pid.parse()?;
    let other = connect(&stack, &ep, "app_user", &token()).await?;
    raw.write(&query_message("SELECT pg_sleep(30)")).await;
    raw.shutdown_write().await;
    // Let the proxy see the end of the client's input first.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let terminated: bool = other
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await?
        .get(0);
    assert!(terminated);
    let mut fatal = None;
    while let Some((tag, body)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), raw.read_message()).await?
    {
        if tag == b'E' {
            fatal = Some(error_fields(&body));
            break;
        }
    }
    assert_eq!(
        fatal,
        Some((
            "FATAL".to_string(),
            "57P01".to_string(),
            "terminating connection due to administrator command".to_string()
        ))
    );
    assert_eq!(raw.read_to_end().await?, b"", "a clean TLS close");
    Ok(())
}
