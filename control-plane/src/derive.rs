//! Facts → health map: a pure function, so any two replicas that have seen
//! the same revision serve the same map.
//!
//! Per backend: `maint` backends are not checked and are DOWN; a pool without
//! a check is UP; otherwise the verdicts of the backend's assigned, live
//! agents are combined by the pool's quorum policy, and with no verdict yet
//! the pool's `initial_state` applies.

use std::collections::BTreeMap;
use std::sync::Arc;

use trackwire_core::map::PoolMap;
use trackwire_core::{AdminState, CheckSpec, Endpoint, HealthMap, HealthState, Quorum};

use crate::assign::assign;
use crate::facts::{Facts, VerdictFact};

/// One check an agent must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pool: String,
    pub backend: String,
    pub address: String,
    pub check: CheckSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    pub agent: String,
    pub verdict: VerdictFact,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendDetail {
    pub assigned: Vec<String>,
    pub votes: Vec<Vote>,
}

/// Everything derived from one revision of facts.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    pub map: HealthMap,
    /// (pool, backend) → who checks it and what they said.
    pub details: BTreeMap<(String, String), BackendDetail>,
    /// agent → the checks it must run, sorted by (pool, backend).
    pub assignments: BTreeMap<String, Vec<Target>>,
}

/// Combines counted verdicts by policy; `None` when there are none.
pub fn decide(quorum: Quorum, votes: &[&VerdictFact]) -> Option<HealthState> {
    if votes.is_empty() {
        return None;
    }
    let down = votes
        .iter()
        .filter(|v| v.state == HealthState::Down)
        .count();
    let is_down = match quorum {
        Quorum::Majority => down * 2 > votes.len(),
        Quorum::Any => down > 0,
        Quorum::All => down == votes.len(),
    };
    Some(if is_down {
        HealthState::Down
    } else {
        HealthState::Up
    })
}

pub fn derive(facts: &Facts, previous: Option<&Derived>) -> Derived {
    let agents: Vec<&str> = facts.agents.keys().map(String::as_str).collect();
    let mut out = Derived {
        map: HealthMap {
            revision: facts.revision,
            pools: BTreeMap::new(),
        },
        ..Derived::default()
    };
    for agent in &agents {
        out.assignments.insert((*agent).to_string(), Vec::new());
    }
    for (pool_name, pool) in &facts.pools {
        let mut endpoints = PoolMap::new();
        for b in &pool.backends {
            let mut detail = BackendDetail::default();
            let (state, decided_at_ms, votes, votes_up) = match (&pool.check, b.admin_state) {
                (_, AdminState::Maint) => (HealthState::Down, 0, 0, 0),
                (None, _) => (HealthState::Up, 0, 0, 0),
                (Some(check), _) => {
                    let assigned = assign(pool_name, &b.name, &agents, pool.replicas);
                    let mut counted = Vec::new();
                    for a in &assigned {
                        if let Some(t) = out.assignments.get_mut(*a) {
                            t.push(Target {
                                pool: pool_name.clone(),
                                backend: b.name.clone(),
                                address: b.address.clone(),
                                check: check.clone(),
                            });
                        }
                        let key = ((*a).to_string(), pool_name.clone(), b.name.clone());
                        if let Some(v) = facts.verdicts.get(&key) {
                            counted.push(v);
                            detail.votes.push(Vote {
                                agent: (*a).to_string(),
                                verdict: v.clone(),
                            });
                        }
                    }
                    detail.assigned = assigned.iter().map(|a| (*a).to_string()).collect();
                    let up = counted
                        .iter()
                        .filter(|v| v.state == HealthState::Up)
                        .count();
                    match decide(pool.quorum, &counted) {
                        None => (pool.initial_state, 0, 0, 0),
                        Some(state) => {
                            let decided = counted
                                .iter()
                                .filter(|v| v.state == state)
                                .map(|v| v.since_ms)
                                .max()
                                .unwrap_or(0);
                            (state, decided, counted.len() as u32, up as u32)
                        }
                    }
                }
            };
            endpoints.insert(
                b.name.clone(),
                Endpoint {
                    backend: b.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                    admin_state: b.admin_state,
                    state,
                    decided_at_ms,
                    votes,
                    votes_up,
                },
            );
            out.details
                .insert((pool_name.clone(), b.name.clone()), detail);
        }
        // Share the previous Arc when the pool did not change, so diffs and
        // snapshots of untouched pools cost a pointer comparison.
        let pool_arc = match previous.and_then(|p| p.map.pools.get(pool_name)) {
            Some(old) if **old == endpoints => Arc::clone(old),
            _ => Arc::new(endpoints),
        };
        out.map.pools.insert(pool_name.clone(), pool_arc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::AgentFact;
    use proptest::prelude::*;
    use trackwire_core::{BackendSpec, PoolSpec};

    fn pool(name: &str, backends: usize, check: bool, quorum: Quorum) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            backends: (0..backends)
                .map(|i| BackendSpec {
                    name: format!("b{i}"),
                    address: format!("10.0.0.{i}:80"),
                    weight: 1,
                    admin_state: AdminState::Ready,
                })
                .collect(),
            check: check.then(CheckSpec::http_default),
            quorum,
            initial_state: HealthState::Down,
            replicas: 3,
        }
    }

    fn facts(p: PoolSpec, agents: &[&str]) -> Facts {
        let mut f = Facts::default();
        f.pools.insert(p.name.clone(), p);
        for a in agents {
            f.agents.insert(
                (*a).into(),
                AgentFact {
                    zone: String::new(),
                    address: String::new(),
                },
            );
        }
        f
    }

    fn vote(f: &mut Facts, agent: &str, backend: &str, state: HealthState) {
        f.verdicts.insert(
            (agent.into(), "p".into(), backend.into()),
            VerdictFact {
                state,
                since_ms: 7,
                reason: String::new(),
            },
        );
    }

    fn state(d: &Derived, backend: &str) -> HealthState {
        d.map.pools["p"][backend].state
    }

    #[test]
    fn unchecked_pool_is_up_and_no_verdict_means_initial_state() {
        let d = derive(&facts(pool("p", 2, false, Quorum::Majority), &["a"]), None);
        assert_eq!(state(&d, "b0"), HealthState::Up);
        let d = derive(&facts(pool("p", 2, true, Quorum::Majority), &["a"]), None);
        assert_eq!(state(&d, "b0"), HealthState::Down);
        assert_eq!(d.assignments["a"].len(), 2);
    }

    #[test]
    fn majority_needs_strictly_more_than_half_down() {
        use HealthState::*;
        let mut f = facts(pool("p", 1, true, Quorum::Majority), &["a1", "a2", "a3"]);
        vote(&mut f, "a1", "b0", Down);
        vote(&mut f, "a2", "b0", Up);
        assert_eq!(
            state(&derive(&f, None), "b0"),
            Up,
            "1 of 2 down is not a majority"
        );
        vote(&mut f, "a3", "b0", Down);
        let d = derive(&f, None);
        assert_eq!(state(&d, "b0"), Down);
        assert_eq!(d.map.pools["p"]["b0"].votes, 3);
        assert_eq!(d.map.pools["p"]["b0"].votes_up, 1);
    }

    #[test]
    fn any_and_all_policies() {
        use HealthState::*;
        for (q, expect) in [(Quorum::Any, Down), (Quorum::All, Up)] {
            let mut f = facts(pool("p", 1, true, q), &["a1", "a2"]);
            vote(&mut f, "a1", "b0", Down);
            vote(&mut f, "a2", "b0", Up);
            assert_eq!(state(&derive(&f, None), "b0"), expect, "{q:?}");
        }
    }

    #[test]
    fn verdicts_of_dead_agents_do_not_count() {
        use HealthState::*;
        let mut f = facts(pool("p", 1, true, Quorum::Majority), &["a1"]);
        vote(&mut f, "a1", "b0", Up);
        vote(&mut f, "gone", "b0", Down);
        assert_eq!(state(&derive(&f, None), "b0"), Up);
    }

    #[test]
    fn maint_is_down_and_unchecked() {
        let mut p = pool("p", 1, true, Quorum::Majority);
        p.backends[0].admin_state = AdminState::Maint;
        let d = derive(&facts(p, &["a"]), None);
        assert_eq!(state(&d, "b0"), HealthState::Down);
        assert!(d.assignments["a"].is_empty());
    }

    #[test]
    fn unchanged_pools_share_their_arc() {
        let f = facts(pool("p", 3, false, Quorum::Majority), &["a"]);
        let d1 = derive(&f, None);
        let d2 = derive(&f, Some(&d1));
        assert!(Arc::ptr_eq(&d1.map.pools["p"], &d2.map.pools["p"]));
    }

    proptest! {
        /// The same facts inserted in any order derive the same map.
        #[test]
        fn derivation_is_order_independent(
            votes in proptest::collection::btree_map((0usize..4, 0usize..5), any::<bool>(), 0..20),
        ) {
            let agents = ["a0", "a1", "a2", "a3"];
            let mut f1 = facts(pool("p", 5, true, Quorum::Majority), &agents);
            let mut f2 = f1.clone();
            let st = |up: bool| if up { HealthState::Up } else { HealthState::Down };
            for ((a, b), up) in &votes {
                vote(&mut f1, agents[*a], &format!("b{b}"), st(*up));
            }
            for ((a, b), up) in votes.iter().rev() {
                vote(&mut f2, agents[*a], &format!("b{b}"), st(*up));
            }
            prop_assert_eq!(derive(&f1, None).map, derive(&f2, None).map);
        }
    }
}
