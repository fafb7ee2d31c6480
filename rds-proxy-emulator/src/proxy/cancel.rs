//! Cancel keys: each client gets a `BackendKeyData` of the proxy's own (its connections to
//! the database change between transactions), and a `CancelRequest` carrying it is sent on
//! to the database connection the client holds at that moment, with that connection's key.
//!
//! A connection a cancel request was sent for is closed when its client gives it back,
//! never lent again: PostgreSQL acts on a cancel request a little later than it receives
//! it, and the interrupt must not land on another client's query.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// A client's cancel key: process id and secret, as in `BackendKeyData`.
pub(super) type Key = [u8; 8];

/// What a client holds now, as cancel requests and the failover report see it.
#[derive(Debug, Default)]
struct SlotState {
    /// The database connection the client holds: its server and its key.
    target: Option<(SocketAddr, Key)>,
    /// A cancel request was sent on to `target`.
    cancel_sent: bool,
    /// The client is in a request or a transaction, or keeps the connection.
    busy: bool,
}

/// One client's entry.
#[derive(Debug, Default)]
pub(super) struct Slot {
    state: Mutex<SlotState>,
}

impl Slot {
    /// The client now holds the connection `key` on `addr`.
    pub(super) fn attach(&self, addr: SocketAddr, key: Key) {
        if let Ok(mut s) = self.state.lock() {
            s.target = Some((addr, key));
            s.busy = true;
        }
    }

    /// The client gives its connection back: whether a cancel request was sent for it.
    pub(super) fn detach(&self) -> bool {
        self.state
            .lock()
            .map(|mut s| {
                s.target = None;
                s.busy = false;
                std::mem::take(&mut s.cancel_sent)
            })
            .unwrap_or(true)
    }

    /// Whether the client, holding its connection, is in a request or transaction (or
    /// keeps the connection for its session).
    pub(super) fn set_busy(&self, busy: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.busy = busy;
        }
    }

    /// Where to send a cancel request now, recording that one is sent.
    fn take_for_cancel(&self) -> Option<(SocketAddr, Key)> {
        let mut s = self.state.lock().ok()?;
        let t = s.target?;
        s.cancel_sent = true;
        Some(t)
    }
}

/// The keys of the proxy's clients.
#[derive(Debug, Default)]
pub(super) struct Registry {
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    next_pid: AtomicU32,
}

/// A registered key, removed on drop.
pub(super) struct Registered<'a> {
    registry: &'a Registry,
    pub(super) key: Key,
    pub(super) slot: Arc<Slot>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.slots.lock() {
            m.remove(&self.key);
        }
    }
}

impl Registry {
    /// A fresh key for a new client: a process id of the proxy's own and a random secret.
    pub(super) fn register(&self) -> Registered<'_> {
        let slot = Arc::new(Slot::default());
        loop {
            let pid = (self.next_pid.fetch_add(1, Ordering::Relaxed) % 0x7fff_ffff) + 1;
            let mut secret = [0u8; 4];
            if aws_lc_rs::rand::fill(&mut secret).is_err() {
                // Without the system's random numbers a predictable secret still works;
                // it only weakens who can cancel.
                secret = (pid.wrapping_mul(2_654_435_761)).to_be_bytes();
            }
            let mut key = [0u8; 8];
            key[..4].copy_from_slice(&pid.to_be_bytes());
            key[4..].copy_from_slice(&secret);
            if let Ok(mut m) = self.slots.lock() {
                if m.contains_key(&key) {
                    continue;
                }
                m.insert(key, Arc::clone(&slot));
            }
            return Registered {
                registry: self,
                key,
                slot,
            };
        }
    }

    /// Where a cancel request for `key` goes (the server and the key of the connection the
    /// client holds now), if anywhere.
    pub(super) fn cancel_target(&self, key: &[u8]) -> Option<(SocketAddr, Key)> {
        let slot = self.slots.lock().ok()?.get(key).cloned()?;
        slot.take_for_cancel()
    }

    /// Clients holding a connection on one of `servers` while in a request or a
    /// transaction, or keeping it for their session.
    pub(super) fn busy_on(&self, servers: &[SocketAddr]) -> usize {
        let slots: Vec<Arc<Slot>> = match self.slots.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return 0,
        };
        slots
            .iter()
            .filter(|s| {
                s.state
                    .lock()
                    .is_ok_and(|s| s.busy && s.target.is_some_and(|(a, _)| servers.contains(&a)))
            })
            .count()
    }
}
