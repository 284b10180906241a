//! The registry of health-map subscribers on this replica, for
//! `AdminService.ListSubscribers` and per-subscriber lag metrics. Each
//! stream task updates its own entry after every send; nothing here is on
//! the path that produces or sends maps.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use trackwire_proto::v1 as pb;

#[derive(Debug, Default)]
pub struct Subscribers {
    next_id: AtomicU64,
    entries: Mutex<BTreeMap<u64, pb::SubscriberInfo>>,
}

impl Subscribers {
    pub fn add(&self, info: pb::SubscriberInfo) -> u64 {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.lock().insert(id, info);
        id
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn sent(&self, id: u64, revision: u64, bytes: usize, at_ms: u64) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.last_revision_sent = revision;
            e.last_sent_ms = at_ms;
            e.messages_sent += 1;
            e.bytes_sent += bytes as u64;
        }
    }

    /// The subscriber is up to date with `revision` without a message (its pools did not change).
    pub fn synced(&self, id: u64, revision: u64) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.last_revision_sent = revision;
        }
    }

    /// Every subscriber, with its lag against `current_revision`.
    pub fn list(&self, current_revision: u64) -> Vec<pb::SubscriberInfo> {
        self.lock()
            .values()
            .map(|e| pb::SubscriberInfo {
                lag_revisions: current_revision.saturating_sub(e.last_revision_sent),
                ..e.clone()
            })
            .collect()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeMap<u64, pb::SubscriberInfo>> {
        self.entries.lock()
    }
}
