//! The in-memory index of facts, fed by the store's list and watch.
//!
//! A state machine with `reset` (from a list at a revision) and `apply` (one
//! watch event); no IO. Values that do not decode are skipped with a warning
//! rather than stopping the control plane.

use std::collections::BTreeMap;

use tracing::warn;
use trackwire_core::convert::health_from_pb;
use trackwire_core::damping::DampState;
use trackwire_core::{HealthState, PoolSpec};

use crate::keys::{self, KeyKind, Keys};
use crate::store::{KeyValue, WatchEvent};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFact {
    pub zone: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictFact {
    pub state: HealthState,
    pub since_ms: u64,
    pub reason: String,
}

/// (agent, pool, backend)
pub type VerdictKey = (String, String, String);

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The store revision these facts are complete up to.
    pub revision: u64,
    pub pools: BTreeMap<String, PoolSpec>,
    pub agents: BTreeMap<String, AgentFact>,
    pub verdicts: BTreeMap<VerdictKey, VerdictFact>,
    /// (pool, backend) → flap-damping state (damped pools only).
    pub damping: BTreeMap<(String, String), DampFact>,
}

/// A damping record and the revision it was written at (for compare-and-set).
#[derive(Debug, Clone, PartialEq)]
pub struct DampFact {
    pub state: DampState,
    pub mod_revision: u64,
}

impl Facts {
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
                    self.pools.remove(name);
                }
                KeyKind::Agent(id) => {
                    self.agents.remove(id);
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
                    self.damping
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
                        self.pools.insert(name.to_string(), spec);
                    }
                    Ok(spec) => {
                        warn!(key = %kv.key, name = %spec.name, "pool key and name differ; skipped")
                    }
                    Err(e) => warn!(key = %kv.key, error = %e, "undecodable pool; skipped"),
                }
            }
            KeyKind::Agent(id) => match keys::decode_agent(&kv.value) {
                Ok(a) => {
                    self.agents.insert(
                        id.to_string(),
                        AgentFact {
                            zone: a.zone,
                            address: a.address,
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
                        },
                    );
                }
                Err(e) => warn!(key = %kv.key, error = %e, "undecodable verdict; skipped"),
            },
            KeyKind::Damping { pool, backend } => match keys::decode_damping(&kv.value) {
                Ok(state) => {
                    self.damping.insert(
                        (pool.to_string(), backend.to_string()),
                        DampFact {
                            state,
                            mod_revision: kv.mod_revision,
                        },
                    );
                }
                Err(e) => warn!(key = %kv.key, error = %e, "undecodable damping state; skipped"),
            },
            KeyKind::Other => {}
        }
        self.revision = self.revision.max(kv.mod_revision);
    }
}
