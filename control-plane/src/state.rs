//! Keeps the facts index in step with the store and publishes what is
//! derived from it. Lists the prefix at revision R, watches from R+1, applies
//! each batch and re-derives; on any watch error it lists again, so a
//! compaction or a store failover costs one re-list, never a wrong map.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use trackwire_core::HealthMap;
use trackwire_core::backoff::Backoff;

use crate::derive::{Derived, Dirty, derive};
use crate::facts::{Facts, SharedFacts};
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::store::Store;

/// Facts at one revision and everything derived from them.
#[derive(Debug)]
pub struct Snapshot {
    pub facts: SharedFacts,
    pub derived: Derived,
}

/// `None` until the first complete load: nothing is served from a partial view.
pub type StateRx = watch::Receiver<Option<Arc<Snapshot>>>;
pub type StateTx = watch::Sender<Option<Arc<Snapshot>>>;

/// Recent maps by revision, so a proxy resuming at one of them (on any
/// replica: maps at one revision are identical) gets a delta, not a snapshot.
/// Pools are shared `Arc`s, so a revision that changed one pool costs one pool.
#[derive(Debug, Default)]
pub struct MapHistory {
    maps: parking_lot::Mutex<std::collections::VecDeque<Arc<HealthMap>>>,
}

/// Revisions kept in [`MapHistory`].
pub const HISTORY_LEN: usize = 256;

impl MapHistory {
    fn push(&self, map: &Arc<HealthMap>) {
        let mut m = self.maps.lock();
        if m.back().is_some_and(|last| last.revision == map.revision) {
            m.pop_back();
        }
        m.push_back(Arc::clone(map));
        while m.len() > HISTORY_LEN {
            m.pop_front();
        }
    }

    /// The oldest revision of `epoch` still kept.
    pub fn oldest(&self, epoch: u64) -> Option<u64> {
        let m = self.maps.lock();
        m.iter().find(|h| h.epoch == epoch).map(|h| h.revision)
    }

    /// The map as of `revision` of `epoch` (the newest kept at or before
    /// it), if the history reaches back that far.
    pub fn as_of(&self, epoch: u64, revision: u64) -> Option<Arc<HealthMap>> {
        let m = self.maps.lock();
        m.iter()
            .rfind(|h| h.epoch == epoch && h.revision <= revision)
            .cloned()
    }

    /// The map at exactly `revision` of `epoch`, if still kept.
    pub fn get(&self, epoch: u64, revision: u64) -> Option<Arc<HealthMap>> {
        let m = self.maps.lock();
        m.iter()
            .find(|h| h.epoch == epoch && h.revision == revision)
            .cloned()
    }
}

pub async fn sync(
    store: Arc<dyn Store>,
    keys: Keys,
    tx: StateTx,
    metrics: Arc<Metrics>,
    history: Arc<MapHistory>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut previous: Option<Arc<Snapshot>> = None;
    let out = Outputs {
        tx,
        metrics,
        history,
    };
    loop {
        let listed = tokio::select! {
            r = store.list(keys.root()) => r,
            () = shutdown.cancelled() => return,
        };
        let (kvs, revision) = match listed {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "listing store failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_jittered()) => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        let mut facts = Facts::reset(&keys, &kvs, revision);
        facts.epoch = store.epoch();
        previous = Some(publish(&out, &facts, previous.as_deref(), &Dirty::all()));
        info!(revision, keys = kvs.len(), "loaded facts");

        let mut events = match store.watch(keys.root(), revision + 1).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "watch failed; re-listing");
                tokio::time::sleep(backoff.next_jittered()).await;
                continue;
            }
        };
        backoff.reset();
        loop {
            let batch = tokio::select! {
                b = events.recv() => b,
                () = shutdown.cancelled() => return,
            };
            match batch {
                Some(Ok(batch)) => {
                    for e in &batch.events {
                        facts.apply(&keys, e);
                    }
                    let dirty = Dirty::from_events(&keys, &batch.events);
                    previous = Some(publish(&out, &facts, previous.as_deref(), &dirty));
                }
                Some(Err(e)) => {
                    warn!(error = %e, "watch ended; re-listing");
                    break;
                }
                None => {
                    warn!("watch closed; re-listing");
                    break;
                }
            }
        }
    }
}

/// Where each derivation goes: the state channel, the map history, metrics.
struct Outputs {
    tx: StateTx,
    metrics: Arc<Metrics>,
    history: Arc<MapHistory>,
}

fn publish(
    out: &Outputs,
    facts: &Facts,
    previous: Option<&Snapshot>,
    dirty: &Dirty,
) -> Arc<Snapshot> {
    let Outputs {
        tx,
        metrics,
        history,
    } = out;
    let derived = derive(facts, previous.map(|p| &p.derived), dirty);
    metrics.observe_map(&derived, facts);
    history.push(&derived.map);
    let snap = Arc::new(Snapshot {
        facts: facts.shared(),
        derived,
    });
    tx.send_replace(Some(Arc::clone(&snap)));
    snap
}

/// Waits until the state changes or the wall clock reaches `wake_at_ms`
/// (if any): the loop of the fact writers (damper, recorder), which act on
/// each snapshot and on their own deadlines. False when the control plane
/// is shutting down.
pub async fn next_change(
    state: &mut StateRx,
    wake_at_ms: Option<u64>,
    shutdown: &CancellationToken,
) -> bool {
    let wait = wake_at_ms
        .map(|t| {
            std::time::Duration::from_millis(
                t.saturating_sub(trackwire_core::time::now_ms()).max(1),
            )
        })
        .unwrap_or(std::time::Duration::from_secs(3600));
    tokio::select! {
        r = state.changed() => r.is_ok(),
        () = tokio::time::sleep(wait) => true,
        () = shutdown.cancelled() => false,
    }
}

/// Waits for the first complete load.
pub async fn ready(rx: &mut StateRx) -> Option<Arc<Snapshot>> {
    let r = rx.wait_for(Option::is_some).await.ok()?;
    r.clone()
}
