//! One logged-in client: which database connection it holds, when it gets one and when it
//! gives it back, and how it ends.
//!
//! - A client holds no connection between transactions. Its next request borrows one from
//!   its pool (waiting up to the borrow timeout), restores the client's tracked
//!   parameters on it if they differ, and the relay runs until every answer owed is in
//!   and delivered; then, if the database reported idle (`I`, outside a transaction), the
//!   connection goes back to the pool. A client whose connection fails while its request
//!   waits for one leaves the line at once; one that ends its side waits on only as long as
//!   answers are relayed after a client's end ([`DRAIN_AFTER_CLIENT_END`]), for a client
//!   that shut its sending side may still read them.
//! - A pinning condition keeps the connection for the rest of the session (logged and
//!   counted as before). So do prepared statements the client holds (named ones, or an
//!   unnamed one it parsed without using): the next transaction will use them. Such a
//!   connection is checked at each new request: when its server left the role (a
//!   failover), it is dropped and the client's statements are prepared again on the next
//!   one.
//! - When the database connection ends under a client: a client at rest outside a
//!   transaction that only keeps statements continues on another connection; a client in
//!   a request or a transaction, or pinned, gets the error (PostgreSQL's, or the proxy's
//!   when the connection just went away) and its connection is closed, as RDS Proxy cancels
//!   "connections that are in the middle of a transaction or SQL statement" on failover.
//! - A client idle longer than the idle client timeout is closed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::backend::{send_cancel, BackendPassword};
use super::cancel::Slot;
use super::messages::{
    MSG_BACKEND_DOWN, MSG_BACKEND_LOST, MSG_BORROW_TIMEOUT, SQLSTATE_BACKEND_DOWN,
};
use super::metrics::ProxyMetrics;
use super::params::SessionParams;
use super::pool::{Backend, BorrowError, PoolId, Pools};
use super::relay::{pinning_log_line, Relay, Step, DRAIN_AFTER_CLIENT_END};
use super::wire::fatal_message;
use crate::control::Control;

/// How long closing the client's side may take (flushing and TLS close_notify, to a
/// client that may have stopped reading).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long giving back a connection may take when it needs a round trip first
/// (`DEALLOCATE ALL` for a client that held prepared statements).
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a session needs to know.
pub(super) struct Context<'a> {
    pub(super) pools: &'a Pools,
    pub(super) pool: PoolId,
    pub(super) params: SessionParams,
    /// The proxy's secret for the database user (to open connections).
    pub(super) password: &'a BackendPassword,
    pub(super) slot: &'a Slot,
    pub(super) control: &'a Control,
    pub(super) metrics: &'a ProxyMetrics,
    pub(super) endpoint: &'a str,
    pub(super) session: u64,
    pub(super) idle: Duration,
}

/// Why a session ended.
enum End {
    /// The client ended it (or its connection failed).
    Client,
    /// The client was idle too long.
    Idle,
    /// The proxy is stopping.
    Stop,
    /// The client was told why (a FATAL was written).
    Told,
}

/// Runs a logged-in client's session to its end.
pub(super) async fn run<C: AsyncRead + AsyncWrite + Unpin>(
    mut client: C,
    ctx: Context<'_>,
    mut stop: watch::Receiver<bool>,
) {
    let mut relay = Relay::new();
    let mut held: Option<Backend> = None;
    let mut pinned = false;
    let stopped = stop.wait_for(|s| *s);
    tokio::pin!(stopped);
    // Re-armed lazily: when it fires early (the client was busy), it is set for the rest
    // of the idle period, so a transaction costs no timer update.
    let idle_timer = tokio::time::sleep(ctx.idle);
    tokio::pin!(idle_timer);
    enum Woke {
        Step(Step),
        Timer,
        Stop,
    }
    let end = loop {
        let woke = tokio::select! {
            s = relay.run(&mut client, held.as_mut().map(|b| &mut b.stream), ctx.metrics) => Woke::Step(s),
            _ = &mut idle_timer => Woke::Timer,
            _ = &mut stopped => Woke::Stop,
        };
        let step = match woke {
            Woke::Step(s) => s,
            Woke::Stop => break End::Stop,
            Woke::Timer => {
                let now = tokio::time::Instant::now();
                if relay.resting() {
                    let due = relay.rest_since() + ctx.idle;
                    if Instant::now() >= due {
                        tracing::info!(endpoint = %ctx.endpoint, session = ctx.session, "closing idle client connection after {} s", ctx.idle.as_secs());
                        break End::Idle;
                    }
                    idle_timer
                        .as_mut()
                        .reset(now + due.saturating_duration_since(Instant::now()));
                } else {
                    idle_timer.as_mut().reset(now + ctx.idle);
                }
                continue;
            }
        };
        match step {
            Step::NeedBackend => match attach(&ctx, &mut relay, &mut client).await {
                Ok(b) => held = Some(b),
                Err(told) => break told,
            },
            Step::RequestStart => {
                // The connection kept for the client's statements: still its role's?
                if let Some(b) = &held {
                    if !pinned && !ctx.pools.serves(b.addr, b.role()) {
                        tracing::info!(endpoint = %ctx.endpoint, session = ctx.session, backend = %b.addr, "the kept database connection's server left its role: moving to another");
                        ctx.slot.detach();
                        held = None;
                    } else {
                        ctx.slot.set_busy(true);
                    }
                }
            }
            Step::AtRest => {
                let Some(mut b) = held.take() else { continue };
                let idle = relay.server.status == b'I';
                b.set_in_transaction(!idle);
                if idle && !pinned && !relay.scan.holds_statements() {
                    give_back(&ctx, b);
                    relay.stop_at_next_request(false);
                    relay.watch_backend_errors(false);
                } else {
                    let kept_only = !pinned && idle;
                    b.set_pinned(pinned || relay.scan.holds_statements());
                    ctx.slot.set_busy(!kept_only);
                    relay.stop_at_next_request(kept_only);
                    relay.watch_backend_errors(kept_only);
                    held = Some(b);
                }
            }
            Step::Pinned(reason, text) => {
                if !pinned {
                    pinned = true;
                    Control::bump(&ctx.control.sessions_pinned);
                    tracing::warn!(
                        target: "rds_proxy_emulator::pinning",
                        "{}",
                        pinning_log_line(ctx.endpoint, ctx.session, reason, &text)
                    );
                    if let Some(b) = held.as_mut() {
                        b.set_pinned(true);
                    }
                }
            }
            Step::ClientGone(e) => {
                // A client that leaves after the database's shutdown error was relayed to it
                // (it reads the FATAL before the proxy sees the connection end) was closed
                // by the failover all the same.
                if let Some(b) = &held {
                    if relay.server.error_relayed && !ctx.pools.serves(b.addr, b.role()) {
                        Control::bump(&ctx.control.sessions_closed_by_failover);
                    }
                }
                if let Some(e) = e {
                    tracing::debug!(endpoint = %ctx.endpoint, session = ctx.session, "client side closed: {e}");
                } else if held.is_some() && !relay.resting() {
                    drain(&ctx, &mut relay, &mut client, &mut held).await;
                }
                break End::Client;
            }
            Step::BackendGone(e) => {
                let Some(b) = held.take() else { continue };
                ctx.slot.detach();
                let failover = !ctx.pools.serves(b.addr, b.role());
                let at_rest = relay.resting() && relay.server.status == b'I';
                if let Some(e) = &e {
                    tracing::debug!(endpoint = %ctx.endpoint, session = ctx.session, backend = %b.addr, "database connection failed: {e}");
                }
                drop(b);
                relay.new_backend();
                if at_rest && !pinned && relay.scan.replayable() {
                    // Only statements were kept: they are prepared again on the next
                    // connection, and the client never knows.
                    tracing::info!(endpoint = %ctx.endpoint, session = ctx.session, "the kept database connection ended; the client continues on another");
                    relay.stop_at_next_request(false);
                    relay.watch_backend_errors(false);
                    continue;
                }
                if failover {
                    Control::bump(&ctx.control.sessions_closed_by_failover);
                }
                tracing::info!(endpoint = %ctx.endpoint, session = ctx.session, failover, "the database connection ended during a request, a transaction or a pinned session: closing the client connection");
                if !relay.server.error_relayed {
                    let _ = relay.flush_client(&mut client).await;
                    let _ = client
                        .write_all(&fatal_message(SQLSTATE_BACKEND_DOWN, MSG_BACKEND_LOST))
                        .await;
                }
                break End::Told;
            }
            Step::Protocol(e) => {
                tracing::debug!(endpoint = %ctx.endpoint, session = ctx.session, "protocol violation: {e}");
                break End::Client;
            }
        }
    };
    if matches!(end, End::Stop) {
        tracing::debug!(endpoint = %ctx.endpoint, session = ctx.session, "closing the client connection: the proxy is stopping");
    }
    // End the client's side with a close_notify (bounded: it may have stopped reading).
    let closing = async {
        let _ = relay.flush_client(&mut client).await;
        let _ = client.shutdown().await;
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::debug!(endpoint = %ctx.endpoint, session = ctx.session, "closing the client's side timed out");
    }
    if let Some(b) = held.take() {
        finish(
            &ctx,
            b,
            relay.resting() && relay.server.status == b'I' && !pinned,
            relay.scan.holds_statements(),
        )
        .await;
    }
}

/// Borrows a connection for the client's request, with the client's parameters and
/// statements. On failure the client is told (FATAL) and `Err(End::Told)` returned; a client
/// that leaves while waiting gives `Err(End::Client)`.
async fn attach<C: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Context<'_>,
    relay: &mut Relay,
    client: &mut C,
) -> Result<Backend, End> {
    let refuse = |sqlstate: &str, message: &str| fatal_message(sqlstate, message);
    let borrow = ctx.pools.borrow(ctx.pool, &ctx.params, ctx.password);
    tokio::pin!(borrow);
    let borrowed = tokio::select! {
        b = &mut borrow => b,
        end = relay.wait_for_client_end(client) => {
            // A client that only shut its sending side may still read the answer to what it
            // sent: it keeps its place as long as answers are relayed after a client's end.
            let kept = match end {
                Ok(()) => tokio::time::timeout(DRAIN_AFTER_CLIENT_END, &mut borrow).await.ok(),
                Err(_) => None,
            };
            match kept {
                Some(b) => b,
                None => {
                    tracing::debug!(endpoint = %ctx.endpoint, session = ctx.session, "the client left while its request waited for a database connection");
                    return Err(End::Client);
                }
            }
        }
    };
    let mut b = match borrowed {
        Ok(b) => b,
        Err(e) => {
            let m = match e {
                BorrowError::Timeout => {
                    tracing::warn!(endpoint = %ctx.endpoint, session = ctx.session, "no database connection within {} s", ctx.pools.borrow_timeout().as_secs());
                    refuse(SQLSTATE_BACKEND_DOWN, MSG_BORROW_TIMEOUT)
                }
                BorrowError::Refused(m) => m,
                BorrowError::Unreachable(why) => {
                    tracing::error!(endpoint = %ctx.endpoint, session = ctx.session, "database unreachable: {why}");
                    refuse(SQLSTATE_BACKEND_DOWN, MSG_BACKEND_DOWN)
                }
            };
            let _ = client.write_all(&m).await;
            return Err(End::Told);
        }
    };
    let prepared = async {
        ctx.pools.restore(&mut b, &ctx.params).await?;
        if relay.scan.holds_statements() {
            b.replay(relay.scan.replay()).await?;
        }
        Ok::<_, super::wire::ConnError>(())
    };
    if let Err(e) = prepared.await {
        tracing::error!(endpoint = %ctx.endpoint, session = ctx.session, backend = %b.addr, "preparing the database connection failed: {e}");
        let _ = client
            .write_all(&refuse(SQLSTATE_BACKEND_DOWN, MSG_BACKEND_DOWN))
            .await;
        return Err(End::Told);
    }
    ctx.slot.attach(b.addr, b.key);
    relay.new_backend();
    Ok(b)
}

/// Gives a clean connection back to its pool, unless a cancel request was sent for it
/// (then it is closed: the interrupt may still arrive).
fn give_back(ctx: &Context<'_>, b: Backend) {
    if ctx.slot.detach() {
        tracing::debug!(endpoint = %ctx.endpoint, session = ctx.session, "closing a database connection a cancel request was sent for");
        drop(b);
    } else {
        ctx.pools.release(b);
    }
}

/// What becomes of the connection a client held when its session ends: back to the pool
/// when it is between transactions and holds nothing (its prepared statements dropped
/// first), else closed (and what it was running cancelled).
async fn finish(ctx: &Context<'_>, mut b: Backend, clean: bool, statements: bool) {
    if clean {
        if statements {
            match tokio::time::timeout(RECYCLE_TIMEOUT, b.deallocate_all()).await {
                Ok(Ok(())) => {}
                _ => {
                    ctx.slot.detach();
                    return;
                }
            }
        }
        give_back(ctx, b);
        return;
    }
    ctx.slot.detach();
    let (addr, key): (SocketAddr, [u8; 8]) = (b.addr, b.key);
    drop(b);
    send_cancel(addr, key).await;
}

/// The client ended its side during a request: what the database still sends for it is
/// relayed, for up to [`DRAIN_AFTER_CLIENT_END`].
async fn drain<C: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Context<'_>,
    relay: &mut Relay,
    client: &mut C,
    held: &mut Option<Backend>,
) {
    let until = tokio::time::Instant::now() + DRAIN_AFTER_CLIENT_END;
    loop {
        let Some(b) = held.as_mut() else { return };
        let step = match tokio::time::timeout_at(
            until,
            relay.run(client, Some(&mut b.stream), ctx.metrics),
        )
        .await
        {
            Ok(s) => s,
            Err(_) => {
                tracing::debug!(endpoint = %ctx.endpoint, session = ctx.session, "the database did not answer within {} ms of the client's end", DRAIN_AFTER_CLIENT_END.as_millis());
                return;
            }
        };
        match step {
            Step::AtRest => return,
            Step::Pinned(..) => {}
            Step::BackendGone(_) => {
                ctx.slot.detach();
                *held = None;
                return;
            }
            Step::ClientGone(_) | Step::Protocol(_) | Step::NeedBackend | Step::RequestStart => {
                return
            }
        }
    }
}
