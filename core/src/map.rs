//! The health map: per pool, per backend, the derived state proxies route on;
//! and the diffing that turns two maps into the deltas a stream carries.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::{AdminState, HealthState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub backend: String,
    pub address: String,
    pub weight: u32,
    pub admin_state: AdminState,
    pub state: HealthState,
    /// Unix ms when the state was decided (0: the pool's initial state or unchecked).
    pub decided_at_ms: u64,
    /// Agent verdicts counted, and how many said UP.
    pub votes: u32,
    pub votes_up: u32,
    pub backup: bool,
    /// No live verdict backs `state`: it is the last decided state, kept
    /// while the evidence is missing for reasons not about the backend.
    pub stale: bool,
}

impl Endpoint {
    /// An endpoint that takes connections: weight 1, `ready`, UP, not a
    /// backup, not stale, never decided (no votes). Tests and benchmarks
    /// override what they need with struct update syntax
    /// (`Endpoint { weight: 3, ..Endpoint::up("a", "10.0.0.1:80") }`).
    pub fn up(backend: impl Into<String>, address: impl Into<String>) -> Endpoint {
        Endpoint {
            backend: backend.into(),
            address: address.into(),
            weight: 1,
            admin_state: AdminState::Ready,
            state: HealthState::Up,
            decided_at_ms: 0,
            votes: 0,
            votes_up: 0,
            backup: false,
            stale: false,
        }
    }

    /// Takes new connections: UP, `ready`, and a non-zero weight.
    pub fn routable(&self) -> bool {
        self.state == HealthState::Up && self.admin_state == AdminState::Ready && self.weight > 0
    }
}

pub type PoolMap = BTreeMap<String, Endpoint>;

/// The whole map at one store revision. Cheap to share: pools are `Arc`ed, so
/// a new map that changes one pool shares the others with the old one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthMap {
    /// The store the revision counts in (see `HealthMapUpdate.epoch`).
    pub epoch: u64,
    pub revision: u64,
    pub pools: BTreeMap<String, Arc<PoolMap>>,
}

/// A change to one pool, as carried by the Subscribe stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUpdate {
    pub pool: String,
    pub upserts: Vec<Endpoint>,
    pub removals: Vec<String>,
    /// The pool no longer exists (its endpoints are gone).
    pub removed: bool,
}

/// Restricts a map to the named pools (all pools when `pools` is empty).
pub fn wants(pools: &[String], pool: &str) -> bool {
    pools.is_empty() || pools.iter().any(|p| p == pool)
}

impl HealthMap {
    /// Whether this is a real map (from the control plane or the cache)
    /// rather than the empty one a proxy starts with.
    pub fn received(&self) -> bool {
        self.epoch != 0 || self.revision != 0
    }

    /// The updates that turn `old` into `self`, for the pools in `filter`.
    pub fn diff_from(&self, old: &HealthMap, filter: &[String]) -> Vec<PoolUpdate> {
        let mut out = Vec::new();
        for (name, new_pool) in &self.pools {
            if !wants(filter, name) {
                continue;
            }
            match old.pools.get(name) {
                Some(old_pool) if Arc::ptr_eq(old_pool, new_pool) => {}
                Some(old_pool) => {
                    let upserts: Vec<Endpoint> = new_pool
                        .iter()
                        .filter(|(k, e)| old_pool.get(*k) != Some(e))
                        .map(|(_, e)| e.clone())
                        .collect();
                    let removals: Vec<String> = old_pool
                        .keys()
                        .filter(|k| !new_pool.contains_key(*k))
                        .cloned()
                        .collect();
                    if !upserts.is_empty() || !removals.is_empty() {
                        out.push(PoolUpdate {
                            pool: name.clone(),
                            upserts,
                            removals,
                            removed: false,
                        });
                    }
                }
                None => out.push(PoolUpdate {
                    pool: name.clone(),
                    upserts: new_pool.values().cloned().collect(),
                    removals: Vec::new(),
                    removed: false,
                }),
            }
        }
        for name in old.pools.keys() {
            if wants(filter, name) && !self.pools.contains_key(name) {
                out.push(PoolUpdate {
                    pool: name.clone(),
                    upserts: Vec::new(),
                    removals: Vec::new(),
                    removed: true,
                });
            }
        }
        out
    }

    /// A snapshot of the pools in `filter`, as updates that fill an empty map.
    pub fn snapshot(&self, filter: &[String]) -> Vec<PoolUpdate> {
        self.diff_from(&HealthMap::default(), filter)
    }

    /// Applies updates (from [`HealthMap::diff_from`] or a stream) in place.
    pub fn apply(&mut self, updates: &[PoolUpdate]) {
        for u in updates {
            if u.removed {
                self.pools.remove(&u.pool);
                continue;
            }
            let pool = Arc::make_mut(self.pools.entry(u.pool.clone()).or_default());
            for r in &u.removals {
                pool.remove(r);
            }
            for e in &u.upserts {
                pool.insert(e.backend.clone(), e.clone());
            }
        }
    }

    /// Keeps only the pools in `filter`.
    pub fn retain(&mut self, filter: &[String]) {
        self.pools.retain(|name, _| wants(filter, name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ep(name: &str, up: bool) -> Endpoint {
        Endpoint {
            state: if up {
                HealthState::Up
            } else {
                HealthState::Down
            },
            ..Endpoint::up(name, format!("{name}:1"))
        }
    }

    fn map_of(pools: &BTreeMap<u8, BTreeMap<u8, bool>>) -> HealthMap {
        HealthMap {
            epoch: 0,
            revision: 0,
            pools: pools
                .iter()
                .map(|(p, eps)| {
                    let pm: PoolMap = eps
                        .iter()
                        .map(|(b, up)| (format!("b{b}"), ep(&format!("b{b}"), *up)))
                        .collect();
                    (format!("p{p}"), Arc::new(pm))
                })
                .collect(),
        }
    }

    #[test]
    fn diff_carries_only_changes() {
        let mut a = BTreeMap::new();
        a.insert(1u8, BTreeMap::from([(1u8, true), (2, true)]));
        let mut b = a.clone();
        b.get_mut(&1).expect("pool").insert(2, false);
        let (ma, mb) = (map_of(&a), map_of(&b));
        let d = mb.diff_from(&ma, &[]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].upserts, vec![ep("b2", false)]);
        assert!(d[0].removals.is_empty());
        assert!(ma.diff_from(&ma, &[]).is_empty());
    }

    #[test]
    fn filter_limits_pools() {
        let mut a = BTreeMap::new();
        a.insert(1u8, BTreeMap::from([(1u8, true)]));
        a.insert(2u8, BTreeMap::from([(1u8, true)]));
        let m = map_of(&a);
        let snap = m.snapshot(&["p2".to_string()]);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].pool, "p2");
    }

    proptest! {
        /// Applying diff(old → new) to old gives new, for any two maps.
        #[test]
        fn apply_of_diff_reaches_target(
            a in proptest::collection::btree_map(0u8..4, proptest::collection::btree_map(0u8..6, any::<bool>(), 0..6), 0..4),
            b in proptest::collection::btree_map(0u8..4, proptest::collection::btree_map(0u8..6, any::<bool>(), 0..6), 0..4),
        ) {
            let (ma, mb) = (map_of(&a), map_of(&b));
            let mut applied = ma.clone();
            applied.apply(&mb.diff_from(&ma, &[]));
            prop_assert_eq!(applied.pools, mb.pools);
        }
    }
}
