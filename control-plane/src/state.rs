//! Keeps the facts index in step with the store and publishes what is
//! derived from it. Lists the prefix at revision R, watches from R+1, applies
//! each batch and re-derives; on any watch error it lists again, so a
//! compaction or a store failover costs one re-list, never a wrong map.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::derive::{Derived, derive};
use crate::facts::Facts;
use crate::keys::Keys;
use crate::metrics::Metrics;
use crate::store::Store;

/// Facts at one revision and everything derived from them.
#[derive(Debug)]
pub struct Snapshot {
    pub facts: Facts,
    pub derived: Derived,
}

/// `None` until the first complete load: nothing is served from a partial view.
pub type StateRx = watch::Receiver<Option<Arc<Snapshot>>>;
pub type StateTx = watch::Sender<Option<Arc<Snapshot>>>;

pub async fn sync(
    store: Arc<dyn Store>,
    keys: Keys,
    tx: StateTx,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut previous: Option<Arc<Snapshot>> = None;
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
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut facts = Facts::reset(&keys, &kvs, revision);
        previous = Some(publish(&tx, &metrics, &facts, previous.as_deref()));
        info!(revision, keys = kvs.len(), "loaded facts");

        let mut events = match store.watch(keys.root(), revision + 1).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "watch failed; re-listing");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
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
                    previous = Some(publish(&tx, &metrics, &facts, previous.as_deref()));
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

fn publish(
    tx: &StateTx,
    metrics: &Metrics,
    facts: &Facts,
    previous: Option<&Snapshot>,
) -> Arc<Snapshot> {
    let derived = derive(facts, previous.map(|p| &p.derived));
    metrics.observe_map(&derived, facts);
    let snap = Arc::new(Snapshot {
        facts: facts.clone(),
        derived,
    });
    tx.send_replace(Some(Arc::clone(&snap)));
    snap
}

/// Waits for the first complete load.
pub async fn ready(rx: &mut StateRx) -> Option<Arc<Snapshot>> {
    let r = rx.wait_for(Option::is_some).await.ok()?;
    r.clone()
}
