//! Folds the messages of one `Subscribe` stream into complete maps, sans IO.
//!
//! Chunked updates (`more = true`) are staged and only a complete update
//! yields a map, so routing never sees half of one.
//!
//! **Stale pools.** A snapshot from a store with a different epoch than the
//! map held (etcd rebuilt empty, a new embedded store) says nothing about
//! the pools it lacks: the new store may simply not have been filled yet.
//! Dropping them would take every backend of a served pool out of rotation
//! because of a store rebuild, so a pool this proxy serves (one its
//! listeners name) that the held map has and such a snapshot lacks is kept
//! as it was and flagged *stale*. It stays stale — through further
//! snapshots and deltas of the new epoch that do not mention it — until
//! the new epoch has the pool: the first update for it then carries the
//! whole pool (the control plane never sent it to this proxy) and replaces
//! the stale copy wholesale. Within one epoch a pool missing from a
//! snapshot, or removed by a delta, was deleted by an operator and goes
//! away as before.

use std::collections::BTreeSet;
use std::sync::Arc;

use trackwire_core::{HealthMap, PoolUpdate};

/// What the subscription publishes: the map routing uses, and which of its
/// pools are stale (kept from a previous store epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub map: Arc<HealthMap>,
    pub stale: BTreeSet<String>,
}

/// One `HealthMapUpdate`, its pools already converted.
#[derive(Debug, Clone)]
pub struct Message {
    pub epoch: u64,
    pub revision: u64,
    pub snapshot: bool,
    pub more: bool,
    pub pools: Vec<PoolUpdate>,
}

/// Assembles one stream's updates (make a new one per stream).
pub struct Assembler {
    /// The pools this proxy serves (empty: all pools, none kept stale).
    pools: Vec<String>,
    staging: Option<Staging>,
}

struct Staging {
    map: HealthMap,
    snapshot: bool,
    /// Pools an update (delta) of this staging mentioned.
    touched: BTreeSet<String>,
}

impl Assembler {
    pub fn new(pools: Vec<String>) -> Self {
        Assembler {
            pools,
            staging: None,
        }
    }

    /// Takes the next message given what is `held` (published); returns
    /// what to publish once an update is complete.
    pub fn push(&mut self, held: &Held, msg: Message) -> Option<Held> {
        let mut st = match self.staging.take() {
            Some(st) if !msg.snapshot => st,
            _ => Staging {
                // A snapshot replaces everything held: the control plane
                // only sends one once it has loaded all facts.
                map: if msg.snapshot {
                    HealthMap::default()
                } else {
                    (*held.map).clone()
                },
                snapshot: msg.snapshot,
                touched: BTreeSet::new(),
            },
        };
        if !st.snapshot {
            for u in &msg.pools {
                // The control plane never sent this proxy the pool in this
                // epoch, so the update is all of it: replace, do not merge.
                if held.stale.contains(&u.pool) && st.touched.insert(u.pool.clone()) {
                    st.map.pools.remove(&u.pool);
                }
                st.touched.insert(u.pool.clone());
            }
        }
        st.map.apply(&msg.pools);
        st.map.retain(&self.pools);
        st.map.revision = msg.revision;
        st.map.epoch = msg.epoch;
        if msg.more {
            self.staging = Some(st);
            return None;
        }
        let mut map = st.map;
        let mut stale = BTreeSet::new();
        if st.snapshot {
            let new_epoch = held.map.received() && held.map.epoch != msg.epoch;
            for p in &self.pools {
                if map.pools.contains_key(p) || !(new_epoch || held.stale.contains(p)) {
                    continue;
                }
                if let Some(old) = held.map.pools.get(p) {
                    map.pools.insert(p.clone(), Arc::clone(old));
                    stale.insert(p.clone());
                }
            }
        } else {
            stale = held
                .stale
                .iter()
                .filter(|p| !st.touched.contains(*p) && map.pools.contains_key(*p))
                .cloned()
                .collect();
        }
        Some(Held {
            map: Arc::new(map),
            stale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackwire_core::Endpoint;

    fn ep(name: &str) -> Endpoint {
        Endpoint::up(name, format!("127.0.0.1:{}", name.len()))
    }

    fn update(pool: &str, backends: &[&str]) -> PoolUpdate {
        PoolUpdate {
            pool: pool.into(),
            upserts: backends.iter().map(|b| ep(b)).collect(),
            removals: Vec::new(),
            removed: false,
        }
    }

    fn msg(epoch: u64, revision: u64, snapshot: bool, pools: Vec<PoolUpdate>) -> Message {
        Message {
            epoch,
            revision,
            snapshot,
            more: false,
            pools,
        }
    }

    fn backends(h: &Held, pool: &str) -> Vec<String> {
        h.map
            .pools
            .get(pool)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Epoch 1 holds `web` = {a, b} and `api` = {x}.
    fn start() -> (Assembler, Held) {
        let mut asm = Assembler::new(vec!["api".into(), "web".into()]);
        let held = asm
            .push(
                &Held::default(),
                msg(
                    1,
                    10,
                    true,
                    vec![update("web", &["a", "b"]), update("api", &["x"])],
                ),
            )
            .expect("complete");
        assert!(held.stale.is_empty());
        (asm, held)
    }

    #[test]
    fn a_new_epoch_without_a_served_pool_keeps_it_stale() {
        let (mut asm, held) = start();
        let held = asm
            .push(&held, msg(2, 3, true, vec![update("api", &["y"])]))
            .expect("complete");
        assert_eq!(backends(&held, "web"), ["a", "b"]);
        assert_eq!(backends(&held, "api"), ["y"]);
        assert_eq!(held.stale, BTreeSet::from(["web".to_string()]));
        assert_eq!((held.map.epoch, held.map.revision), (2, 3));
        // Deltas and snapshots of the new epoch that lack it keep it stale.
        let held = asm
            .push(&held, msg(2, 4, false, vec![update("api", &["z"])]))
            .expect("complete");
        assert_eq!(held.stale, BTreeSet::from(["web".to_string()]));
        let held = asm.push(&held, msg(2, 5, true, vec![])).expect("complete");
        assert_eq!(backends(&held, "web"), ["a", "b"]);
        assert_eq!(held.stale, BTreeSet::from(["web".to_string()]));
        assert!(
            !held.map.pools.contains_key("api"),
            "api deleted in epoch 2"
        );
    }

    #[test]
    fn the_new_epochs_pool_replaces_the_stale_one() {
        let (mut asm, held) = start();
        let held = asm.push(&held, msg(2, 3, true, vec![])).expect("complete");
        assert_eq!(held.stale.len(), 2);
        // In a delta: the whole pool, replacing (not merging into) the stale copy.
        let held = asm
            .push(&held, msg(2, 4, false, vec![update("web", &["c"])]))
            .expect("complete");
        assert_eq!(backends(&held, "web"), ["c"]);
        assert_eq!(held.stale, BTreeSet::from(["api".to_string()]));
        // In a snapshot too.
        let held = asm
            .push(
                &held,
                msg(
                    2,
                    5,
                    true,
                    vec![update("web", &["c"]), update("api", &["y"])],
                ),
            )
            .expect("complete");
        assert_eq!(backends(&held, "api"), ["y"]);
        assert!(held.stale.is_empty());
        // Now an ordinary pool of epoch 2: a deletion removes it.
        let removed = PoolUpdate {
            removed: true,
            ..update("web", &[])
        };
        let held = asm
            .push(&held, msg(2, 6, false, vec![removed]))
            .expect("complete");
        assert!(!held.map.pools.contains_key("web"));
        assert!(held.stale.is_empty());
    }

    #[test]
    fn within_an_epoch_a_missing_pool_is_a_deletion() {
        let (mut asm, held) = start();
        let held = asm
            .push(&held, msg(1, 11, true, vec![update("api", &["x"])]))
            .expect("complete");
        assert!(!held.map.pools.contains_key("web"));
        assert!(held.stale.is_empty());
    }

    #[test]
    fn a_chunked_update_is_published_whole() {
        let (mut asm, held) = start();
        let first = Message {
            more: true,
            ..msg(2, 3, true, vec![update("api", &["y"])])
        };
        assert_eq!(asm.push(&held, first), None);
        let held = asm
            .push(&held, msg(2, 3, false, vec![update("web", &["c"])]))
            .expect("complete");
        // The second chunk belongs to the snapshot: `web` is fresh, not stale.
        assert_eq!(backends(&held, "web"), ["c"]);
        assert_eq!(backends(&held, "api"), ["y"]);
        assert!(held.stale.is_empty());
    }

    #[test]
    fn unserved_pools_are_neither_kept_nor_stale() {
        let mut asm = Assembler::new(vec!["web".into()]);
        let held = Held {
            map: Arc::new(HealthMap {
                epoch: 1,
                revision: 1,
                pools: [
                    (
                        "web".to_string(),
                        Arc::new([("a".to_string(), ep("a"))].into()),
                    ),
                    (
                        "old".to_string(),
                        Arc::new([("o".to_string(), ep("o"))].into()),
                    ),
                ]
                .into(),
            }),
            stale: BTreeSet::from(["old".to_string()]),
        };
        let held = asm.push(&held, msg(2, 1, true, vec![])).expect("complete");
        assert_eq!(held.map.pools.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(held.stale, BTreeSet::from(["web".to_string()]));
    }
}
