//! Facts → health map: a pure function, so any two replicas that have seen
//! the same revision serve the same map.
//!
//! Per backend: `maint` backends are not checked and are DOWN; a pool without
//! a check is UP; otherwise the verdicts of the backend's assigned, live,
//! non-suspect agents are combined by the pool's quorum policy, and with no
//! verdict yet the pool's `initial_state` applies.
//!
//! A *suspect* agent is a partitioned checker: it has at least
//! [`SUSPECT_MIN_BACKENDS`] assigned backends, says DOWN for at least 90% of
//! them, and for more than half of those the other assigned agents' majority
//! says UP. Its votes are not counted. Suspicion is computed from raw
//! verdicts in one pass (never from other suspicions), so it is
//! deterministic and cannot cascade.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use trackwire_core::map::PoolMap;
use trackwire_core::{
    AdminState, BackendSpec, CheckSpec, Endpoint, HealthMap, HealthState, PoolSpec, Quorum,
};

use crate::assign::assign_zoned;
use crate::facts::{Facts, VerdictFact};

/// Fewest assigned backends before an agent can be judged a partitioned checker.
pub const SUSPECT_MIN_BACKENDS: usize = 5;

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
    /// False when the agent is suspect and its vote was ignored.
    pub counted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendDetail {
    pub assigned: Vec<String>,
    pub votes: Vec<Vote>,
    /// The state the votes decide, before flap damping, and when it was
    /// decided (0: no votes yet). Checked backends only.
    pub undamped: Option<(HealthState, u64)>,
    /// Held DOWN by flap damping.
    pub suppressed: bool,
}

/// Everything derived from one revision of facts.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    pub map: HealthMap,
    /// (pool, backend) → who checks it and what they said.
    pub details: BTreeMap<(String, String), BackendDetail>,
    /// agent → the checks it must run, sorted by (pool, backend).
    pub assignments: BTreeMap<String, Vec<Target>>,
    /// Agents judged partitioned checkers at this revision.
    pub suspects: BTreeSet<String>,
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

/// A checked, non-maint backend and the agents assigned to it.
struct Checked<'a> {
    pool: &'a PoolSpec,
    backend: &'a BackendSpec,
    assigned: Vec<&'a str>,
}

fn verdict<'a>(
    facts: &'a Facts,
    agent: &str,
    pool: &str,
    backend: &str,
) -> Option<&'a VerdictFact> {
    facts
        .verdicts
        .get(&(agent.to_string(), pool.to_string(), backend.to_string()))
}

fn find_suspects(facts: &Facts, checked: &[Checked<'_>]) -> BTreeSet<String> {
    let mut by_agent: BTreeMap<&str, Vec<&Checked<'_>>> = BTreeMap::new();
    for c in checked {
        for a in &c.assigned {
            by_agent.entry(a).or_default().push(c);
        }
    }
    let mut suspects = BTreeSet::new();
    for (agent, mine) in by_agent {
        if mine.len() < SUSPECT_MIN_BACKENDS {
            continue;
        }
        let says_down: Vec<&&Checked<'_>> = mine
            .iter()
            .filter(|c| {
                verdict(facts, agent, &c.pool.name, &c.backend.name)
                    .is_some_and(|v| v.state == HealthState::Down)
            })
            .collect();
        if says_down.len() * 10 < mine.len() * 9 {
            continue;
        }
        let contradicted = says_down
            .iter()
            .filter(|c| {
                let others: Vec<&VerdictFact> = c
                    .assigned
                    .iter()
                    .filter(|a| **a != agent)
                    .filter_map(|a| verdict(facts, a, &c.pool.name, &c.backend.name))
                    .collect();
                let up = others.iter().filter(|v| v.state == HealthState::Up).count();
                !others.is_empty() && up * 2 > others.len()
            })
            .count();
        if contradicted * 2 > says_down.len() {
            suspects.insert(agent.to_string());
        }
    }
    suspects
}

pub fn derive(facts: &Facts, previous: Option<&Derived>) -> Derived {
    let agents: Vec<(&str, &str)> = facts
        .agents
        .iter()
        .map(|(id, a)| (id.as_str(), a.zone.as_str()))
        .collect();
    let mut out = Derived {
        map: HealthMap {
            epoch: facts.epoch,
            revision: facts.revision,
            pools: BTreeMap::new(),
        },
        ..Derived::default()
    };
    for (agent, _) in &agents {
        out.assignments.insert((*agent).to_string(), Vec::new());
    }

    // Pass 1: who checks what.
    let mut checked: Vec<Checked<'_>> = Vec::new();
    for pool in facts.pools.values() {
        let Some(check) = &pool.check else { continue };
        for b in &pool.backends {
            if b.admin_state == AdminState::Maint {
                continue;
            }
            let assigned = assign_zoned(
                &pool.name,
                &b.name,
                &agents,
                pool.replicas,
                pool.zone_spread,
            );
            for a in &assigned {
                if let Some(t) = out.assignments.get_mut(*a) {
                    t.push(Target {
                        pool: pool.name.clone(),
                        backend: b.name.clone(),
                        address: b.address.clone(),
                        check: check.clone(),
                    });
                }
            }
            checked.push(Checked {
                pool,
                backend: b,
                assigned,
            });
        }
    }
    out.suspects = find_suspects(facts, &checked);

    // Pass 2: decide every backend.
    let mut decided: BTreeMap<(&str, &str), (HealthState, u64, u32, u32)> = BTreeMap::new();
    for c in &checked {
        let mut detail = BackendDetail {
            assigned: c.assigned.iter().map(|a| (*a).to_string()).collect(),
            ..BackendDetail::default()
        };
        let mut counted = Vec::new();
        for a in &c.assigned {
            if let Some(v) = verdict(facts, a, &c.pool.name, &c.backend.name) {
                let is_counted = !out.suspects.contains(*a);
                if is_counted {
                    counted.push(v);
                }
                detail.votes.push(Vote {
                    agent: (*a).to_string(),
                    verdict: v.clone(),
                    counted: is_counted,
                });
            }
        }
        let up = counted
            .iter()
            .filter(|v| v.state == HealthState::Up)
            .count();
        let mut result = match decide(c.pool.quorum, &counted) {
            None => (c.pool.initial_state, 0, 0, 0),
            Some(state) => {
                let at = counted
                    .iter()
                    .filter(|v| v.state == state)
                    .map(|v| v.since_ms)
                    .max()
                    .unwrap_or(0);
                (state, at, counted.len() as u32, up as u32)
            }
        };
        detail.undamped = Some((result.0, result.1));
        if c.pool.damping.is_some()
            && facts
                .damping
                .get(&(c.pool.name.clone(), c.backend.name.clone()))
                .is_some_and(|d| d.state.suppressed)
        {
            detail.suppressed = true;
            result.0 = HealthState::Down;
        }
        decided.insert((&c.pool.name, &c.backend.name), result);
        out.details
            .insert((c.pool.name.clone(), c.backend.name.clone()), detail);
    }

    for (pool_name, pool) in &facts.pools {
        let mut endpoints = PoolMap::new();
        for b in &pool.backends {
            let (state, decided_at_ms, votes, votes_up) = match (&pool.check, b.admin_state) {
                (_, AdminState::Maint) => (HealthState::Down, 0, 0, 0),
                (None, _) => (HealthState::Up, 0, 0, 0),
                (Some(_), _) => decided
                    .get(&(pool_name.as_str(), b.name.as_str()))
                    .copied()
                    .unwrap_or((pool.initial_state, 0, 0, 0)),
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
                .entry((pool_name.clone(), b.name.clone()))
                .or_default();
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
    use std::collections::BTreeSet;
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
            zone_spread: false,
            damping: None,
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
    fn partitioned_checker_is_suspect_and_not_counted() {
        use HealthState::*;
        // 3 agents check all 10 backends; a3 is cut off and says DOWN everywhere.
        let mut f = facts(pool("p", 10, true, Quorum::Any), &["a1", "a2", "a3"]);
        for b in 0..10 {
            let b = format!("b{b}");
            vote(&mut f, "a1", &b, Up);
            vote(&mut f, "a2", &b, Up);
            vote(&mut f, "a3", &b, Down);
        }
        let d = derive(&f, None);
        assert_eq!(d.suspects, BTreeSet::from(["a3".to_string()]));
        // Even with quorum `any`, the suspect's DOWN votes do not count.
        for b in 0..10 {
            assert_eq!(state(&d, &format!("b{b}")), Up);
        }
        let detail = &d.details[&("p".to_string(), "b0".to_string())];
        assert!(detail.votes.iter().any(|v| v.agent == "a3" && !v.counted));
        assert_eq!(d.map.pools["p"]["b0"].votes, 2);
    }

    #[test]
    fn agreement_on_a_real_outage_is_not_suspicion() {
        use HealthState::*;
        // Everything really is down: all agents agree, nobody is suspect.
        let mut f = facts(pool("p", 10, true, Quorum::Majority), &["a1", "a2", "a3"]);
        for b in 0..10 {
            for a in ["a1", "a2", "a3"] {
                vote(&mut f, a, &format!("b{b}"), Down);
            }
        }
        let d = derive(&f, None);
        assert!(d.suspects.is_empty());
        assert_eq!(state(&d, "b3"), Down);
    }

    #[test]
    fn few_backends_or_mixed_verdicts_are_not_suspicion() {
        use HealthState::*;
        // Only 4 backends: too few to judge.
        let mut f = facts(pool("p", 4, true, Quorum::Majority), &["a1", "a2", "a3"]);
        for b in 0..4 {
            vote(&mut f, "a1", &format!("b{b}"), Up);
            vote(&mut f, "a2", &format!("b{b}"), Up);
            vote(&mut f, "a3", &format!("b{b}"), Down);
        }
        assert!(derive(&f, None).suspects.is_empty());
        // 10 backends, a3 DOWN on 8 of 10 (< 90%): not suspect.
        let mut f = facts(pool("p", 10, true, Quorum::Majority), &["a1", "a2", "a3"]);
        for b in 0..10 {
            vote(&mut f, "a1", &format!("b{b}"), Up);
            vote(&mut f, "a2", &format!("b{b}"), Up);
            vote(
                &mut f,
                "a3",
                &format!("b{b}"),
                if b < 8 { Down } else { Up },
            );
        }
        assert!(derive(&f, None).suspects.is_empty());
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
