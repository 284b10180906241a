//! Writes flap-damping facts (`{prefix}damping/{pool}/{backend}`).
//!
//! Runs on every replica. For each backend of a damped pool it feeds the
//! undamped derived state into [`trackwire_core::damping::observe`] and, when
//! a suppression has run out, [`trackwire_core::damping::release`]. Every
//! write is a compare-and-set on the record's revision, and its content
//! follows from the facts alone (transition times are the verdicts'), so
//! replicas racing each other produce one write with the same content; the
//! losers see the record already updated on their next snapshot. A record
//! is first written once a backend has votes, so appearing is not a flap.

use std::sync::Arc;
use trackwire_core::time::now_ms;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trackwire_core::damping::{observe, release};

use crate::keys::{self, Keys};
use crate::state::{Snapshot, StateRx, next_change};
use crate::store::{Compare, Op, Store};

pub async fn run(
    store: Arc<dyn Store>,
    keys: Keys,
    mut state: StateRx,
    shutdown: CancellationToken,
) {
    loop {
        let snap = state.borrow_and_update().clone();
        let next_release = match snap {
            Some(snap) => step(store.as_ref(), &keys, &snap, now_ms()).await,
            None => None,
        };
        if !next_change(&mut state, next_release, &shutdown).await {
            return;
        }
    }
}

/// Makes the writes one snapshot calls for; returns the earliest pending release time.
pub async fn step(store: &dyn Store, keys: &Keys, snap: &Snapshot, now_ms: u64) -> Option<u64> {
    let mut next: Option<u64> = None;
    for (pool_name, pool) in snap.facts.pools.iter() {
        for b in &pool.backends {
            let id = (pool_name.clone(), b.name.clone());
            let old = snap.facts.damping.get(&id);
            let Some(spec) = &pool.damping else {
                if let Some(old) = old {
                    // Damping was turned off: the record goes.
                    cas(
                        store,
                        keys.damping(pool_name, &b.name),
                        old.mod_revision,
                        None,
                    )
                    .await;
                }
                continue;
            };
            let undamped = snap
                .derived
                .detail(pool_name, &b.name)
                .and_then(|d| d.undamped);
            let Some((state, at)) = undamped else {
                continue;
            };
            if old.is_none() && at == 0 {
                continue;
            }
            let mut new = observe(spec, old.map(|o| &o.state), state, at);
            if let Some(released) = release(spec, &new, now_ms) {
                new = released;
            }
            if new.suppressed {
                next = Some(next.map_or(new.until_ms, |n| n.min(new.until_ms)));
            }
            if old.map(|o| &o.state) != Some(&new) {
                if new.suppressed && !old.is_some_and(|o| o.state.suppressed) {
                    info!(pool = %pool_name, backend = %b.name, penalty = new.penalty, until_ms = new.until_ms, "flapping backend suppressed");
                }
                let rev = old.map(|o| o.mod_revision).unwrap_or(0);
                cas(
                    store,
                    keys.damping(pool_name, &b.name),
                    rev,
                    Some(keys::encode_damping(&new)),
                )
                .await;
            }
        }
    }
    next
}

/// Writes (or deletes) `key` if it is still at `rev` (0: absent).
async fn cas(store: &dyn Store, key: String, rev: u64, value: Option<Vec<u8>>) {
    let compare = if rev == 0 {
        Compare::Absent(key.clone())
    } else {
        Compare::ModRevision(key.clone(), rev)
    };
    let op = match value {
        Some(value) => Op::Put {
            key: key.clone(),
            value,
            lease: None,
        },
        None => Op::Delete(key.clone()),
    };
    match store.txn(vec![compare], vec![op]).await {
        Ok(r) if !r.succeeded => {
            debug!(%key, "damping record changed meanwhile (another replica wrote it)")
        }
        Ok(_) => {}
        Err(e) => {
            warn!(%key, error = %e, "writing damping record failed; retrying on the next change")
        }
    }
}
