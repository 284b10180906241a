//! The in-memory index of facts, fed by the store's list and watch.
//!
//! A state machine with `reset` (from a list at a revision) and `apply` (one
//! watch event); no IO. Values that do not decode are skipped with a warning
//! rather than stopping the control plane.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::warn;
use trackwire_core::convert::health_from_pb;
use trackwire_core::{AdminState, BackendSpec, HealthState, PoolSpec};

use crate::damper::DampState;
use crate::keys::{self, KeyKind, Keys};
use crate::store::{KeyValue, WatchEvent};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFact {
    pub zone: String,
    pub address: String,
    /// The agent process holding the session (`AgentHello.instance_id`).
    pub instance_id: String,
    /// The agent key's revision: a session owns the agent's keys while the
    /// key is still at the revision its hello wrote.
    pub mod_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictFact {
    pub state: HealthState,
    pub since_ms: u64,
    pub reason: String,
    /// The target fingerprint the verdict was made against.
    pub fingerprint: u64,
}

/// The last state quorum decided for a backend from live verdicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionFact {
    pub state: HealthState,
    pub fingerprint: u64,
    pub at_ms: u64,
    pub mod_revision: u64,
    /// The backend's last state changes, oldest first (see `recorder`).
    pub history: Vec<trackwire_proto::v1::Transition>,
    /// UP → DOWN transitions decided so far.
    pub down_transitions: u64,
}

/// (agent, pool, backend)
pub type VerdictKey = (String, String, String);

/// Pools, agents and damping records change rarely and are shared (`Arc`)
/// with every published snapshot; verdicts change with every transition and
/// stay owned by the sync task, so publishing never copies them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The store these facts come from (see [`crate::store::Store::epoch`]).
    pub epoch: u64,
    /// The store revision these facts are complete up to.
    pub revision: u64,
    pub pools: Arc<BTreeMap<String, PoolSpec>>,
    pub agents: Arc<BTreeMap<String, AgentFact>>,
    pub verdicts: BTreeMap<VerdictKey, VerdictFact>,
    /// (pool, backend) → flap-damping state (damped pools only).
    pub damping: Arc<BTreeMap<(String, String), DampFact>>,
    /// (pool, backend) → operator's admin-state override.
    pub admin: Arc<BTreeMap<(String, String), AdminOverride>>,
    /// (pool, backend) → the last decided state.
    pub decisions: Arc<BTreeMap<(String, String), DecisionFact>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminOverride {
    pub state: AdminState,
    pub reason: String,
    pub set_by: String,
    pub at_ms: u64,
}

impl Facts {
    /// The admin state in force: an operator override, else the pool spec's.
    pub fn admin_state(&self, pool: &str, backend: &BackendSpec) -> AdminState {
        self.admin
            .get(&(pool.to_string(), backend.name.clone()))
            .map(|o| o.state)
            .unwrap_or(backend.admin_state)
    }
}

/// The part of [`Facts`] published with each snapshot (cheap to clone).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedFacts {
    pub epoch: u64,
    pub revision: u64,
    pub pools: Arc<BTreeMap<String, PoolSpec>>,
    pub agents: Arc<BTreeMap<String, AgentFact>>,
    pub damping: Arc<BTreeMap<(String, String), DampFact>>,
    pub admin: Arc<BTreeMap<(String, String), AdminOverride>>,
    pub decisions: Arc<BTreeMap<(String, String), DecisionFact>>,
}

/// A damping record and the revision it was written at (for compare-and-set).
#[derive(Debug, Clone, PartialEq)]
pub struct DampFact {
    pub state: DampState,
    pub mod_revision: u64,
}

/// Which backends one agent checks, as assignment computes it over the
/// live agents with this one among them (it may be registering now).
pub struct Checker<'a> {
    facts: &'a SharedFacts,
    agent: &'a str,
    agents: Vec<(&'a str, &'a str)>,
}

impl Checker<'_> {
    /// Whether the agent is one of `pool/backend`'s checkers: the backend
    /// exists, its pool has a check, and assignment picks the agent.
    pub fn checks(&self, pool: &str, backend: &str) -> bool {
        let Some(spec) = self.facts.pools.get(pool) else {
            return false;
        };
        spec.check.is_some()
            && spec.backends.iter().any(|b| b.name == backend)
            && crate::assign::assign_zoned(
                pool,
                backend,
                &self.agents,
                spec.replicas,
                spec.zone_spread,
            )
            .contains(&self.agent)
    }
}

impl SharedFacts {
    /// The backends `agent` (in `zone`) checks; see [`Checker`].
    pub fn checker<'a>(&'a self, agent: &'a str, zone: &'a str) -> Checker<'a> {
        let mut agents: Vec<(&'a str, &'a str)> = self
            .agents
            .iter()
            .filter(|(id, _)| id.as_str() != agent)
            .map(|(id, a)| (id.as_str(), a.zone.as_str()))
            .collect();
        agents.push((agent, zone));
        Checker {
            facts: self,
            agent,
            agents,
        }
    }

    /// Whether `pool` exists and has a backend named `backend`.
    pub fn has_backend(&self, pool: &str, backend: &str) -> bool {
        self.pools
            .get(pool)
            .is_some_and(|p| p.backends.iter().any(|b| b.name == backend))
    }
}

impl Facts {
    pub fn shared(&self) -> SharedFacts {
        SharedFacts {
            epoch: self.epoch,
            revision: self.revision,
            pools: Arc::clone(&self.pools),
            agents: Arc::clone(&self.agents),
            damping: Arc::clone(&self.damping),
            admin: Arc::clone(&self.admin),
            decisions: Arc::clone(&self.decisions),
        }
    }

    pub fn reset(keys: &Keys, kvs: &[KeyValue], revision: u64) -> Facts {
        let mut f = Facts::default();
        for kv in kvs {
            f.put(keys, kv);
        }
        f.revision = revision;
        f
    }

    pub fn apply(&mut self, keys: &Keys, event: &WatchEvent) {
        match event {
            WatchEvent::Put(kv) => self.put(keys, kv),
            WatchEvent::Delete { key, .. } => match keys.parse(key) {
                KeyKind::Pool(name) => {
                    Arc::make_mut(&mut self.pools).remove(name);
                }
                KeyKind::Agent(id) => {
                    Arc::make_mut(&mut self.agents).remove(id);
                }
                KeyKind::Verdict {
                    agent,
                    pool,
                    backend,
                } => {
                    self.verdicts.remove(&(
                        agent.to_string(),
                        pool.to_string(),
                        backend.to_string(),
                    ));
                }
                KeyKind::Damping { pool, backend } => {
                    Arc::make_mut(&mut self.damping)
                        .remove(&(pool.to_string(), backend.to_string()));
                }
                KeyKind::Admin { pool, backend } => {
                    Arc::make_mut(&mut self.admin).remove(&(pool.to_string(), backend.to_string()));
                }
                KeyKind::Decision { pool, backend } => {
                    Arc::make_mut(&mut self.decisions)
                        .remove(&(pool.to_string(), backend.to_string()));
                }
                KeyKind::Other => {}
            },
        }
        self.revision = self.revision.max(event.revision());
    }

    fn put(&mut self, keys: &Keys, kv: &KeyValue) {
        match keys.parse(&kv.key) {
            KeyKind::Pool(name) => {
                match keys::decode_pool(&kv.value)
                    .and_then(|p| PoolSpec::try_from(&p).map_err(|e| e.to_string()))
                {
                    Ok(spec) if spec.name == name => {
                        Arc::make_mut(&mut self.pools).insert(name.to_string(), spec);
                    }
                    Ok(spec) => {
                        warn!(key = %kv.key, name = %spec.name, "pool key and name differ; skipped")
                    }
                    Err(e) => warn!(key = %kv.key, error = %e, "undecodable pool; skipped"),
                }
            }
            KeyKind::Agent(id) => match keys::decode_agent(&kv.value) {
                Ok(a) => {
                    Arc::make_mut(&mut self.agents).insert(
                        id.to_string(),
                        AgentFact {
                            zone: a.zone,
                            address: a.address,
                            instance_id: a.instance_id,
                            mod_revision: kv.mod_revision,
                        },
                    );
                }
                Err(e) => warn!(key = %kv.key, error = %e, "undecodable agent; skipped"),
            },
            KeyKind::Verdict {
                agent,
                pool,
                backend,
            } => match keys::decode_verdict(&kv.value).and_then(|v| {
                Ok((
                    health_from_pb(v.state, "state").map_err(|e| e.to_string())?,
                    v,
                ))
            }) {
                Ok((state, v)) => {
                    self.verdicts.insert(
                        (agent.to_string(), pool.to_string(), backend.to_string()),
                        VerdictFact {
                            state,
                            since_ms: v.since_ms,
                            reason: v.reason,
                            fingerprint: v.fingerprint,
                        },
                    );
                }
                Err(e) => warn!(key = %kv.key, error = %e, "undecodable verdict; skipped"),
            },
            KeyKind::Damping { pool, backend } => match keys::decode_damping(&kv.value) {
                Ok(state) => {
                    Arc::make_mut(&mut self.damping).insert(
                        (pool.to_string(), backend.to_string()),
                        DampFact {
                            state,
                            mod_revision: kv.mod_revision,
                        },
                    );
                }
                Err(e) => warn!(key = %kv.key, error = %e, "undecodable damping state; skipped"),
            },
            KeyKind::Admin { pool, backend } => match keys::decode_admin(&kv.value).and_then(|a| {
                trackwire_core::convert::admin_from_pb(a.state, "state")
                    .map(|state| (state, a))
                    .map_err(|e| e.to_string())
            }) {
                Ok((state, a)) => {
                    Arc::make_mut(&mut self.admin).insert(
                        (pool.to_string(), backend.to_string()),
                        AdminOverride {
                            state,
                            reason: a.reason,
                            set_by: a.set_by,
                            at_ms: a.at_ms,
                        },
                    );
                }
                Err(e) => warn!(key = %kv.key, error = %e, "undecodable admin override; skipped"),
            },
            KeyKind::Decision { pool, backend } => {
                match keys::decode_decision(&kv.value).and_then(|d| {
                    health_from_pb(d.state, "state")
                        .map(|state| (state, d))
                        .map_err(|e| e.to_string())
                }) {
                    Ok((state, d)) => {
                        Arc::make_mut(&mut self.decisions).insert(
                            (pool.to_string(), backend.to_string()),
                            DecisionFact {
                                state,
                                fingerprint: d.fingerprint,
                                at_ms: d.at_ms,
                                mod_revision: kv.mod_revision,
                                history: d.history,
                                down_transitions: d.down_transitions,
                            },
                        );
                    }
                    Err(e) => warn!(key = %kv.key, error = %e, "undecodable decision; skipped"),
                }
            }
            KeyKind::Other => {}
        }
        self.revision = self.revision.max(kv.mod_revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::derive;
    use crate::store::WatchEvent;
    use proptest::prelude::*;
    use trackwire_core::convert::{health_to_pb, pool_to_pb};
    use trackwire_core::{BackendSpec, CheckSpec};
    use trackwire_proto::v1 as pb;

    fn events(votes: &[(usize, usize, bool)]) -> Vec<WatchEvent> {
        let keys = Keys::new("/t/").expect("prefix");
        let pool = PoolSpec {
            check: Some(CheckSpec::http_default()),
            ..PoolSpec::new(
                "p",
                (0..12)
                    .map(|i| BackendSpec::new(format!("b{i}"), format!("h{i}:80")))
                    .collect(),
            )
        };
        let mut rev = 0;
        let mut put = |key: String, value: Vec<u8>| {
            rev += 1;
            WatchEvent::Put(KeyValue {
                key,
                value,
                create_revision: rev,
                mod_revision: rev,
                lease: 0,
            })
        };
        let mut out = vec![put(keys.pool("p"), keys::encode_pool(pool_to_pb(&pool)))];
        for a in 0..4 {
            out.push(put(
                keys.agent(&format!("a{a}")),
                keys::encode_agent(pb::StoredAgent {
                    agent_id: format!("a{a}"),
                    zone: format!("z{}", a % 2),
                    ..Default::default()
                }),
            ));
        }
        for (a, b, up) in votes {
            out.push(put(
                keys.verdict(&format!("a{a}"), "p", &format!("b{b}")),
                keys::encode_verdict(pb::Verdict {
                    pool: "p".into(),
                    backend: format!("b{b}"),
                    state: health_to_pb(if *up {
                        HealthState::Up
                    } else {
                        HealthState::Down
                    }),
                    since_ms: 1000 + (*a as u64) * 10 + *b as u64,
                    reason: String::new(),
                    fingerprint: trackwire_core::convert::target_fingerprint(
                        &format!("h{b}:80"),
                        &CheckSpec::http_default(),
                    ),
                }),
            ));
        }
        out
    }

    /// A partitioned agent turning suspect (and its votes stopping to count
    /// in every pool) is followed by incremental derivation too.
    #[test]
    fn incremental_derivation_follows_suspicion() {
        use crate::derive::Dirty;
        let keys = Keys::new("/t/").expect("prefix");
        let mut votes = Vec::new();
        for b in 0..12 {
            votes.push((0, b, true));
            votes.push((1, b, true));
            votes.push((2, b, true));
        }
        for b in 0..12 {
            votes.push((3, b, false));
        }
        let mut facts = Facts::default();
        let mut prev = None;
        let mut saw_suspect = false;
        for e in events(&votes) {
            facts.apply(&keys, &e);
            let inc = derive(
                &facts,
                prev.as_ref(),
                &Dirty::from_events(&keys, std::slice::from_ref(&e)),
            );
            let full = derive(&facts, None, &Dirty::all());
            assert_eq!(inc.map, full.map);
            assert_eq!(inc.suspects, full.suspects);
            saw_suspect |= !full.suspects.is_empty();
            prev = Some(inc);
        }
        assert!(saw_suspect, "a3 became suspect");
    }

    proptest! {
        /// Deriving incrementally (reusing untouched pools) after each event
        /// gives exactly what deriving from scratch gives.
        #[test]
        fn incremental_derivation_equals_full(
            votes in proptest::collection::vec((0usize..4, 0usize..12, prop::bool::weighted(0.3)), 0..60),
        ) {
            use crate::derive::Dirty;
            let keys = Keys::new("/t/").expect("prefix");
            let mut facts = Facts::default();
            let mut prev = None;
            for e in events(&votes) {
                facts.apply(&keys, &e);
                let inc = derive(&facts, prev.as_ref(), &Dirty::from_events(&keys, std::slice::from_ref(&e)));
                let full = derive(&facts, None, &Dirty::all());
                prop_assert_eq!(&inc.map, &full.map);
                prop_assert_eq!(&inc.suspects, &full.suspects);
                prop_assert_eq!(inc.pools.len(), full.pools.len());
                for (name, p) in &full.pools {
                    prop_assert_eq!(&**p, &*inc.pools[name]);
                }
                prev = Some(inc);
            }
        }

        /// The same facts, applied as watch events in any order, derive the
        /// same map (each key written once, so order is the only difference).
        #[test]
        fn any_event_order_derives_the_same_map(
            votes in proptest::collection::btree_map((0usize..4, 0usize..6), any::<bool>(), 0..24),
            seed in any::<u64>(),
        ) {
            let votes: Vec<(usize, usize, bool)> = votes.into_iter().map(|((a, b), up)| (a, b, up)).collect();
            let keys = Keys::new("/t/").expect("prefix");
            let evs = events(&votes);
            let mut in_order = Facts::default();
            for e in &evs {
                in_order.apply(&keys, e);
            }
            // A seeded Fisher-Yates shuffle.
            let mut shuffled = evs.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut other = Facts::default();
            for e in &shuffled {
                other.apply(&keys, e);
            }
            prop_assert_eq!(&in_order, &other);
            prop_assert_eq!(derive(&in_order, None, &crate::derive::Dirty::all()).map, derive(&other, None, &crate::derive::Dirty::all()).map);
        }
    }
}
