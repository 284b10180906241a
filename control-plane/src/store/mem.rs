//! `MemStore`: the embedded store for one node. Same contract as etcd:
//! a global revision per write, prefix watches from a revision (a bounded
//! history answers watches from the past), transactions, and leases that
//! expire on tokio time (so tests can pause the clock).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::{
    Compare, KeyValue, LeaseId, Op, Result, Store, StoreError, TxnResult, WatchBatch, WatchEvent,
    WatchStream,
};

/// Revisions kept for watches that start in the past.
const HISTORY: usize = 10_000;
/// Batches a watcher may have queued before it is cancelled as too slow.
const WATCH_BUFFER: usize = 4_096;
const REAP_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
    epoch: u64,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: HashSet<String>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Result<WatchBatch>>,
}

#[derive(Default)]
struct Inner {
    revision: u64,
    kv: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
    watchers: Vec<Watcher>,
    /// (revision, events) for the last [`HISTORY`] revisions.
    history: VecDeque<(u64, Vec<WatchEvent>)>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// Creates an empty store. Must be called inside a tokio runtime: a task
    /// expires leases and ends when the last handle to the store is dropped.
    pub fn new() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            next_lease: 1,
            ..Inner::default()
        }));
        let weak = Arc::downgrade(&inner);
        tokio::spawn(reap_leases(weak).instrument(tracing::info_span!("mem_store_leases")));
        MemStore {
            inner,
            epoch: uuid::Uuid::new_v4().as_u64_pair().0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }
}

async fn reap_leases(inner: Weak<Mutex<Inner>>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let mut g = inner.lock();
        let now = Instant::now();
        let expired: Vec<LeaseId> = g
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            g.end_lease(id);
        }
    }
}

impl Inner {
    /// Commits one revision's worth of ops and notifies watchers.
    fn commit(&mut self, ops: Vec<Op>) -> u64 {
        if ops.is_empty() {
            return self.revision;
        }
        let rev = self.revision + 1;
        let mut events = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let lease = lease.unwrap_or(0);
                    let create_revision = match self.kv.get(&key) {
                        Some(old) => {
                            // Lease ids start at 1, so 0 (no lease) never matches.
                            if old.lease != lease
                                && let Some(l) = self.leases.get_mut(&old.lease)
                            {
                                l.keys.remove(&key);
                            }
                            old.create_revision
                        }
                        None => rev,
                    };
                    if let Some(l) = self.leases.get_mut(&lease) {
                        l.keys.insert(key.clone());
                    }
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: rev,
                        lease,
                    };
                    self.kv.insert(key, kv.clone());
                    events.push(WatchEvent::Put(kv));
                }
                Op::Delete(key) => {
                    if let Some(old) = self.kv.remove(&key) {
                        if let Some(l) = self.leases.get_mut(&old.lease) {
                            l.keys.remove(&key);
                        }
                        events.push(WatchEvent::Delete {
                            key,
                            mod_revision: rev,
                        });
                    }
                }
            }
        }
        if events.is_empty() {
            return self.revision;
        }
        self.revision = rev;
        self.watchers.retain(|w| {
            let mine: Vec<WatchEvent> = events
                .iter()
                .filter(|e| e.key().starts_with(&w.prefix))
                .cloned()
                .collect();
            if mine.is_empty() {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(Ok(WatchBatch { events: mine })) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The watcher fell too far behind: cancel it rather than
                    // buffer without bound. Its owner re-lists and re-watches.
                    let tx = w.tx.clone();
                    tokio::spawn(
                        async move {
                            let _ = tx
                                .send(Err(StoreError::WatchCancelled("watcher too slow".into())))
                                .await;
                        }
                        .in_current_span(),
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.history.push_back((rev, events));
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        rev
    }

    fn end_lease(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let mut keys: Vec<String> = lease.keys.into_iter().collect();
        keys.sort();
        self.commit(keys.into_iter().map(Op::Delete).collect());
        true
    }

    fn holds(&self, c: &Compare) -> bool {
        match c {
            Compare::ModRevision(k, rev) => {
                self.kv.get(k).is_some_and(|kv| kv.mod_revision == *rev)
            }
            Compare::Absent(k) => !self.kv.contains_key(k),
        }
    }

    fn check_leases(&self, ops: &[Op]) -> Result<()> {
        for op in ops {
            if let Op::Put { lease: Some(l), .. } = op
                && *l != 0
                && !self.leases.contains_key(l)
            {
                return Err(StoreError::LeaseNotFound(*l));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().kv.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64)> {
        let g = self.lock();
        let kvs =
            g.kv.range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
        Ok((kvs, g.revision))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<u64> {
        let op = Op::Put {
            key: key.to_string(),
            value,
            lease,
        };
        super::batch::check_limits(&[], std::slice::from_ref(&op))?;
        let mut g = self.lock();
        g.check_leases(std::slice::from_ref(&op))?;
        Ok(g.commit(vec![op]))
    }

    async fn delete(&self, key: &str) -> Result<u64> {
        Ok(self.lock().commit(vec![Op::Delete(key.to_string())]))
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnResult> {
        super::batch::check_limits(&compares, &ops)?;
        let mut g = self.lock();
        if !compares.iter().all(|c| g.holds(c)) {
            return Ok(TxnResult {
                succeeded: false,
                revision: g.revision,
            });
        }
        g.check_leases(&ops)?;
        let revision = g.commit(ops);
        Ok(TxnResult {
            succeeded: true,
            revision,
        })
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream> {
        let mut g = self.lock();
        // As in etcd, revision 0 means "from the next write on".
        let from_revision = if from_revision == 0 {
            g.revision + 1
        } else {
            from_revision
        };
        let oldest = g.history.front().map(|(r, _)| *r).unwrap_or(g.revision + 1);
        if from_revision < oldest && from_revision <= g.revision {
            return Err(StoreError::Compacted {
                requested: from_revision,
                compacted: oldest,
            });
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let past: Vec<WatchEvent> = g
            .history
            .iter()
            .filter(|(r, _)| *r >= from_revision)
            .flat_map(|(_, evs)| evs.iter().filter(|e| e.key().starts_with(prefix)).cloned())
            .collect();
        if !past.is_empty() {
            // Cannot fail: the channel is new and empty.
            let _ = tx.try_send(Ok(WatchBatch { events: past }));
        }
        g.watchers.push(Watcher {
            prefix: prefix.to_string(),
            tx,
        });
        Ok(rx)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        if ttl < Duration::from_secs(1) {
            return Err(StoreError::Invalid("lease TTL must be at least 1s".into()));
        }
        let mut g = self.lock();
        let id = g.next_lease;
        g.next_lease += 1;
        g.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: HashSet::new(),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut g = self.lock();
        let l = g
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        l.deadline = Instant::now() + l.ttl;
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        if self.lock().end_lease(lease) {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(lease))
        }
    }

    async fn revision(&self) -> Result<u64> {
        Ok(self.lock().revision)
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }
}
