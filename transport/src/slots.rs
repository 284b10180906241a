//! Connection slots that can be taken back: a registry of the connections a
//! port holds in a state that costs the peer nothing to keep (handshaking,
//! waiting for request headers, idle between requests), oldest first.
//!
//! When a port is full — at its cap, or out of file descriptors (EMFILE) —
//! it closes the oldest such connection to make room for a new one instead
//! of leaving the new one in the backlog: a peer that opens connections and
//! stays silent can only ever evict its own, and a health probe that
//! arrives behind a flood of idle connections is still served at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// A port's registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Slots(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    next: AtomicU64,
    held: Mutex<BTreeMap<u64, Held>>,
    evicted: AtomicU64,
}

#[derive(Debug)]
struct Held {
    /// Requests in progress (0: evictable).
    busy: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// One connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    slots: Slots,
    pub busy: Arc<AtomicUsize>,
    /// Cancelled when the port takes the slot back: drop the connection.
    pub evicted: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.0.held.lock().remove(&self.id);
    }
}

impl Slots {
    pub fn new() -> Slots {
        Slots::default()
    }

    /// Registers a new connection.
    pub fn take(&self) -> Slot {
        let id = self.0.next.fetch_add(1, Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        let evicted = CancellationToken::new();
        self.0.held.lock().insert(
            id,
            Held {
                busy: Arc::clone(&busy),
                evict: evicted.clone(),
            },
        );
        Slot {
            id,
            slots: self.clone(),
            busy,
            evicted,
        }
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.0.held.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections taken back so far.
    pub fn evictions(&self) -> u64 {
        self.0.evicted.load(Relaxed)
    }

    /// Closes the oldest connection with no request in progress; false
    /// when every connection is busy.
    pub fn evict_oldest_idle(&self) -> bool {
        let mut held = self.0.held.lock();
        let Some(id) = held
            .iter()
            .find(|(_, h)| h.busy.load(Relaxed) == 0)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(h) = held.remove(&id) {
            h.evict.cancel();
        }
        self.0.evicted.fetch_add(1, Relaxed);
        true
    }
}

/// Whether an accept error means "out of file descriptors".
pub fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 /* EMFILE */ | 23 /* ENFILE */))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest_idle_connection_only() {
        let slots = Slots::new();
        let a = slots.take();
        let b = slots.take();
        let c = slots.take();
        a.busy.fetch_add(1, Relaxed);
        assert!(slots.evict_oldest_idle());
        assert!(!a.evicted.is_cancelled());
        assert!(b.evicted.is_cancelled(), "the oldest idle one goes first");
        assert!(!c.evicted.is_cancelled());
        assert_eq!(slots.len(), 2);
        drop(b);
        assert_eq!(slots.len(), 2, "an evicted slot is already freed");
        assert!(slots.evict_oldest_idle());
        assert!(c.evicted.is_cancelled());
        assert!(!slots.evict_oldest_idle(), "only a busy one is left");
        drop(c);
        drop(a);
        assert!(slots.is_empty());
        assert_eq!(slots.evictions(), 2);
    }
}
