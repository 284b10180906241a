//! Facts → health map: a pure function, so any two replicas that have seen
//! the same revision serve the same map.
//!
//! Per backend: `maint` backends are not checked and are DOWN; a pool without
//! a check is UP; otherwise the verdicts of the backend's assigned, live,
//! non-suspect agents are combined by the pool's quorum policy. A verdict
//! counts only while its fingerprint matches the backend's current address
//! and check. With no counted verdict, the backend keeps its last decided
//! state (a `decisions/` fact for the same fingerprint), marked stale: the
//! evidence is missing for reasons not about the backend (agents' sessions
//! lapsed, no live agent, a new agent not yet reporting). Only a backend
//! never decided for its current spec takes the pool's `initial_state`.
//!
//! A *suspect* agent is a partitioned checker: it has at least
//! [`SUSPECT_MIN_BACKENDS`] assigned backends, says DOWN for at least 90% of
//! them, and for more than half of those the other assigned agents' majority
//! says UP. Its votes are not counted. Suspicion is computed from raw
//! verdicts in one pass (never from other suspicions), so it is
//! deterministic and cannot cascade.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use trackwire_core::convert::{encode_check, fingerprint_with, target_fingerprint};
use trackwire_core::map::PoolMap;
use trackwire_core::{AdminState, CheckSpec, Endpoint, HealthMap, HealthState, PoolSpec, Quorum};

use crate::assign::assign_zoned;
use crate::facts::{Facts, VerdictFact};
use crate::keys::{KeyKind, Keys};
use crate::store::WatchEvent;

/// Fewest assigned backends before an agent can be judged a partitioned checker.
pub const SUSPECT_MIN_BACKENDS: usize = 5;

/// One check an agent must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub pool: String,
    pub backend: String,
    pub address: String,
    pub check: CheckSpec,
    /// [`trackwire_core::convert::target_fingerprint`] of address and check.
    pub fingerprint: u64,
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
    /// The backend's current target fingerprint (checked backends only).
    pub fingerprint: u64,
    /// What the counted live verdicts decide (state, when), if any: what the
    /// decision recorder writes as the backend's last decided state.
    pub live: Option<(HealthState, u64)>,
    /// The state is the last decided one, kept without live evidence.
    pub stale: bool,
}

/// What is derived for one pool. Shared (`Arc`) between revisions while the
/// pool, its verdicts, the agents and the suspects stay the same, so a
/// change to one pool costs that pool, not the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolDerived {
    pub endpoints: Arc<PoolMap>,
    /// backend → who checks it and what they said.
    pub details: BTreeMap<String, BackendDetail>,
    /// agent → the checks it runs in this pool, sorted by backend.
    pub targets: BTreeMap<String, Vec<Target>>,
}

/// Everything derived from one revision of facts.
#[derive(Debug, Clone, Default)]
pub struct Derived {
    /// Shared as is with every subscriber that was sent it.
    pub map: Arc<HealthMap>,
    pub pools: BTreeMap<String, Arc<PoolDerived>>,
    /// Agents judged partitioned checkers at this revision.
    pub suspects: BTreeSet<String>,
    /// The agents (and zones) assignment was computed over.
    agents: Vec<(String, String)>,
}

impl Derived {
    pub fn detail(&self, pool: &str, backend: &str) -> Option<&BackendDetail> {
        self.pools.get(pool)?.details.get(backend)
    }

    /// Every check `agent` must run, sorted by (pool, backend).
    pub fn targets_for(&self, agent: &str) -> Vec<Target> {
        self.pools
            .values()
            .filter_map(|p| p.targets.get(agent))
            .flat_map(|t| t.iter().cloned())
            .collect()
    }
}

/// Which pools a batch of facts changes touched.
#[derive(Debug, Clone, Default)]
pub struct Dirty {
    /// Everything may have changed (first load, re-list).
    pub all: bool,
    pub pools: BTreeSet<String>,
}

impl Dirty {
    pub fn all() -> Self {
        Dirty {
            all: true,
            pools: BTreeSet::new(),
        }
    }

    /// The pools a batch of watch events touches; agent changes touch all
    /// (assignment moves).
    pub fn from_events(keys: &Keys, events: &[WatchEvent]) -> Self {
        let mut dirty = Dirty::default();
        for e in events {
            match keys.parse(e.key()) {
                KeyKind::Pool(p)
                | KeyKind::Damping { pool: p, .. }
                | KeyKind::Admin { pool: p, .. }
                | KeyKind::Decision { pool: p, .. }
                | KeyKind::Verdict { pool: p, .. } => {
                    dirty.pools.insert(p.to_string());
                }
                KeyKind::Agent(_) => dirty.all = true,
                KeyKind::Other => {}
            }
        }
        dirty
    }
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

/// Assignment and raw votes of one backend (before suspicion).
struct Raw {
    backend: String,
    fingerprint: u64,
    assigned: Vec<String>,
    votes: Vec<(String, VerdictFact)>,
}

fn raw_pool(facts: &Facts, pool: &PoolSpec, agents: &[(&str, &str)]) -> Vec<Raw> {
    let Some(check) = &pool.check else {
        return Vec::new();
    };
    let encoded = encode_check(check);
    pool.backends
        .iter()
        .filter(|b| facts.admin_state(&pool.name, b) != AdminState::Maint)
        .map(|b| {
            let fingerprint = fingerprint_with(&b.address, &encoded);
            let assigned: Vec<String> =
                assign_zoned(&pool.name, &b.name, agents, pool.replicas, pool.zone_spread)
                    .into_iter()
                    .map(str::to_string)
                    .collect();
            let votes = assigned
                .iter()
                .filter_map(|a| {
                    facts
                        .verdicts
                        .get(&(a.clone(), pool.name.clone(), b.name.clone()))
                        // A verdict about another address or check is not evidence.
                        .filter(|v| v.fingerprint == fingerprint)
                        .map(|v| (a.clone(), v.clone()))
                })
                .collect();
            Raw {
                backend: b.name.clone(),
                fingerprint,
                assigned,
                votes,
            }
        })
        .collect()
}

/// Raw votes of a pool kept from the previous derivation.
fn raw_from(prev: &PoolDerived) -> Vec<Raw> {
    prev.details
        .iter()
        .filter(|(_, d)| !d.assigned.is_empty() || !d.votes.is_empty())
        .map(|(b, d)| Raw {
            backend: b.clone(),
            fingerprint: d.fingerprint,
            assigned: d.assigned.clone(),
            votes: d
                .votes
                .iter()
                .map(|v| (v.agent.clone(), v.verdict.clone()))
                .collect(),
        })
        .collect()
}

fn find_suspects<'a>(raws: impl Iterator<Item = &'a Raw>) -> BTreeSet<String> {
    // agent → (assigned, says DOWN, DOWN contradicted by the others' majority)
    let mut tally: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    for r in raws {
        for a in &r.assigned {
            tally.entry(a).or_default().0 += 1;
        }
        for (agent, v) in &r.votes {
            if v.state != HealthState::Down {
                continue;
            }
            let others: Vec<&VerdictFact> = r
                .votes
                .iter()
                .filter(|(a, _)| a != agent)
                .map(|(_, v)| v)
                .collect();
            let up = others.iter().filter(|v| v.state == HealthState::Up).count();
            let t = tally.entry(agent).or_default();
            t.1 += 1;
            if !others.is_empty() && up * 2 > others.len() {
                t.2 += 1;
            }
        }
    }
    tally
        .into_iter()
        .filter(|(_, (n, down, contradicted))| {
            *n >= SUSPECT_MIN_BACKENDS && down * 10 >= n * 9 && contradicted * 2 > *down
        })
        .map(|(a, _)| a.to_string())
        .collect()
}

fn decide_pool(
    facts: &Facts,
    pool: &PoolSpec,
    raws: Vec<Raw>,
    suspects: &BTreeSet<String>,
    previous: Option<&PoolDerived>,
) -> PoolDerived {
    let mut out = PoolDerived::default();
    let mut raws: BTreeMap<String, Raw> =
        raws.into_iter().map(|r| (r.backend.clone(), r)).collect();
    let mut endpoints = PoolMap::new();
    for b in &pool.backends {
        let mut detail = BackendDetail::default();
        let admin_state = facts.admin_state(&pool.name, b);
        let (state, decided_at_ms, votes, votes_up) = match (&pool.check, admin_state) {
            (_, AdminState::Maint) => (HealthState::Down, 0, 0, 0),
            (None, _) => (HealthState::Up, 0, 0, 0),
            (Some(check), _) => {
                let raw = raws.remove(&b.name);
                let (fingerprint, assigned, raw_votes) = match raw {
                    Some(r) => (r.fingerprint, r.assigned, r.votes),
                    None => (
                        target_fingerprint(&b.address, check),
                        Vec::new(),
                        Vec::new(),
                    ),
                };
                detail.fingerprint = fingerprint;
                for a in &assigned {
                    out.targets.entry(a.clone()).or_default().push(Target {
                        pool: pool.name.clone(),
                        backend: b.name.clone(),
                        address: b.address.clone(),
                        check: check.clone(),
                        fingerprint,
                    });
                }
                let mut counted: Vec<VerdictFact> = Vec::new();
                for (agent, v) in raw_votes {
                    let is_counted = !suspects.contains(&agent);
                    if is_counted {
                        counted.push(v.clone());
                    }
                    detail.votes.push(Vote {
                        agent,
                        verdict: v,
                        counted: is_counted,
                    });
                }
                detail.assigned = assigned;
                let refs: Vec<&VerdictFact> = counted.iter().collect();
                let up = counted
                    .iter()
                    .filter(|v| v.state == HealthState::Up)
                    .count();
                let mut result = match decide(pool.quorum, &refs) {
                    None => match facts
                        .decisions
                        .get(&(pool.name.clone(), b.name.clone()))
                        .filter(|d| d.fingerprint == fingerprint)
                    {
                        // Absence of evidence is not failure: keep the last
                        // decided state, marked stale.
                        Some(d) => {
                            detail.stale = true;
                            (d.state, d.at_ms, 0, 0)
                        }
                        None => (pool.initial_state, 0, 0, 0),
                    },
                    Some(state) => {
                        let at = counted
                            .iter()
                            .filter(|v| v.state == state)
                            .map(|v| v.since_ms)
                            .max()
                            .unwrap_or(0);
                        detail.live = Some((state, at));
                        (state, at, counted.len() as u32, up as u32)
                    }
                };
                detail.undamped = Some((result.0, result.1));
                if pool.damping.is_some()
                    && facts
                        .damping
                        .get(&(pool.name.clone(), b.name.clone()))
                        .is_some_and(|d| d.state.suppressed)
                {
                    detail.suppressed = true;
                    result.0 = HealthState::Down;
                }
                result
            }
        };
        endpoints.insert(
            b.name.clone(),
            Endpoint {
                backend: b.name.clone(),
                address: b.address.clone(),
                weight: b.weight,
                admin_state,
                state,
                decided_at_ms,
                votes,
                votes_up,
                backup: b.backup,
                stale: detail.stale,
            },
        );
        out.details.insert(b.name.clone(), detail);
    }
    // Share the previous endpoints when unchanged, so diffs and snapshots of
    // untouched pools cost a pointer comparison.
    out.endpoints = match previous {
        Some(p) if *p.endpoints == endpoints => Arc::clone(&p.endpoints),
        _ => Arc::new(endpoints),
    };
    out
}

/// Derives everything from `facts`, reusing the `previous` derivation for
/// pools `dirty` does not name when the agents and suspects are unchanged.
pub fn derive(facts: &Facts, previous: Option<&Derived>, dirty: &Dirty) -> Derived {
    let agents: Vec<(String, String)> = facts
        .agents
        .iter()
        .map(|(id, a)| (id.clone(), a.zone.clone()))
        .collect();
    let agent_refs: Vec<(&str, &str)> = agents
        .iter()
        .map(|(a, z)| (a.as_str(), z.as_str()))
        .collect();
    let agents_same = previous.is_some_and(|p| p.agents == agents);
    let reusable = |name: &str| -> Option<&Arc<PoolDerived>> {
        let prev = previous?;
        if dirty.all || dirty.pools.contains(name) || !agents_same {
            return None;
        }
        prev.pools.get(name)
    };

    // Phase A: assignment and raw votes; recomputed for changed pools only.
    let mut raws: BTreeMap<&str, Vec<Raw>> = BTreeMap::new();
    for (name, pool) in facts.pools.iter() {
        let raw = match reusable(name) {
            Some(prev) => raw_from(prev),
            None => raw_pool(facts, pool, &agent_refs),
        };
        raws.insert(name.as_str(), raw);
    }
    // Phase B: suspects, from every pool's raw votes.
    let suspects = find_suspects(raws.values().flatten());
    let suspects_changed = previous.is_none_or(|p| p.suspects != suspects);

    // Phase C: decide each pool, reusing untouched ones.
    let mut map = HealthMap {
        epoch: facts.epoch,
        revision: facts.revision,
        pools: BTreeMap::new(),
    };
    let mut out = Derived {
        map: Arc::default(),
        pools: BTreeMap::new(),
        suspects,
        agents,
    };
    for (name, pool) in facts.pools.iter() {
        let pd = match reusable(name) {
            Some(prev) if !suspects_changed => Arc::clone(prev),
            _ => {
                let prev = previous.and_then(|p| p.pools.get(name));
                let raw = raws.remove(name.as_str()).unwrap_or_default();
                let fresh = decide_pool(facts, pool, raw, &out.suspects, prev.map(|p| &**p));
                match prev {
                    Some(p) if **p == fresh => Arc::clone(p),
                    _ => Arc::new(fresh),
                }
            }
        };
        map.pools.insert(name.clone(), Arc::clone(&pd.endpoints));
        out.pools.insert(name.clone(), pd);
    }
    out.map = Arc::new(map);
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
                .map(|i| BackendSpec::new(format!("b{i}"), format!("10.0.0.{i}:80")))
                .collect(),
            check: check.then(CheckSpec::http_default),
            quorum,
            initial_state: HealthState::Down,
            replicas: 3,
            zone_spread: false,
            damping: None,
            grpc_xds: false,
        }
    }

    fn facts(p: PoolSpec, agents: &[&str]) -> Facts {
        let mut f = Facts::default();
        Arc::make_mut(&mut f.pools).insert(p.name.clone(), p);
        for a in agents {
            Arc::make_mut(&mut f.agents).insert(
                (*a).into(),
                AgentFact {
                    zone: String::new(),
                    address: String::new(),
                    instance_id: String::new(),
                    mod_revision: 0,
                },
            );
        }
        f
    }

    /// A verdict about `backend`'s current spec in pool `p`.
    fn vote(f: &mut Facts, agent: &str, backend: &str, state: HealthState) {
        let p = &f.pools["p"];
        let b = p
            .backends
            .iter()
            .find(|b| b.name == backend)
            .expect("backend");
        let fingerprint = target_fingerprint(&b.address, p.check.as_ref().expect("checked pool"));
        f.verdicts.insert(
            (agent.into(), "p".into(), backend.into()),
            VerdictFact {
                state,
                since_ms: 7,
                reason: String::new(),
                fingerprint,
            },
        );
    }

    fn state(d: &Derived, backend: &str) -> HealthState {
        d.map.pools["p"][backend].state
    }

    #[test]
    fn unchecked_pool_is_up_and_no_verdict_means_initial_state() {
        let d = derive(
            &facts(pool("p", 2, false, Quorum::Majority), &["a"]),
            None,
            &Dirty::all(),
        );
        assert_eq!(state(&d, "b0"), HealthState::Up);
        let d = derive(
            &facts(pool("p", 2, true, Quorum::Majority), &["a"]),
            None,
            &Dirty::all(),
        );
        assert_eq!(state(&d, "b0"), HealthState::Down);
        assert_eq!(d.targets_for("a").len(), 2);
    }

    #[test]
    fn majority_needs_strictly_more_than_half_down() {
        use HealthState::*;
        let mut f = facts(pool("p", 1, true, Quorum::Majority), &["a1", "a2", "a3"]);
        vote(&mut f, "a1", "b0", Down);
        vote(&mut f, "a2", "b0", Up);
        assert_eq!(
            state(&derive(&f, None, &Dirty::all()), "b0"),
            Up,
            "1 of 2 down is not a majority"
        );
        vote(&mut f, "a3", "b0", Down);
        let d = derive(&f, None, &Dirty::all());
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
            assert_eq!(
                state(&derive(&f, None, &Dirty::all()), "b0"),
                expect,
                "{q:?}"
            );
        }
    }

    #[test]
    fn verdicts_of_dead_agents_do_not_count() {
        use HealthState::*;
        let mut f = facts(pool("p", 1, true, Quorum::Majority), &["a1"]);
        vote(&mut f, "a1", "b0", Up);
        vote(&mut f, "gone", "b0", Down);
        assert_eq!(state(&derive(&f, None, &Dirty::all()), "b0"), Up);
    }

    #[test]
    fn verdicts_about_another_address_do_not_count() {
        use HealthState::*;
        let mut f = facts(pool("p", 1, true, Quorum::Majority), &["a1"]);
        vote(&mut f, "a1", "b0", Up);
        assert_eq!(state(&derive(&f, None, &Dirty::all()), "b0"), Up);
        // The backend moves; the verdict was about the old address.
        Arc::make_mut(&mut f.pools)
            .get_mut("p")
            .expect("pool")
            .backends[0]
            .address = "10.9.9.9:80".into();
        let d = derive(&f, None, &Dirty::all());
        assert_eq!(
            state(&d, "b0"),
            Down,
            "initial_state: never decided for this address"
        );
        assert_eq!(d.map.pools["p"]["b0"].votes, 0);
        assert!(!d.map.pools["p"]["b0"].stale);
        // The assignment carries the new fingerprint.
        let t = &d.targets_for("a1")[0];
        assert_eq!(t.fingerprint, target_fingerprint("10.9.9.9:80", &t.check));
    }

    #[test]
    fn decided_backend_keeps_its_state_stale_when_verdicts_vanish() {
        use crate::facts::DecisionFact;
        use HealthState::*;
        let mut f = facts(pool("p", 2, true, Quorum::Majority), &[]);
        let check = CheckSpec::http_default();
        let record = |address: &str| DecisionFact {
            state: Up,
            fingerprint: target_fingerprint(address, &check),
            at_ms: 42,
            mod_revision: 1,
            history: Vec::new(),
            down_transitions: 0,
        };
        Arc::make_mut(&mut f.decisions).insert(("p".into(), "b0".into()), record("10.0.0.0:80"));
        // A record about another address is not this backend's decision.
        Arc::make_mut(&mut f.decisions).insert(("p".into(), "b1".into()), record("10.7.7.7:80"));
        let d = derive(&f, None, &Dirty::all());
        let b0 = &d.map.pools["p"]["b0"];
        assert_eq!((b0.state, b0.stale, b0.decided_at_ms), (Up, true, 42));
        let b1 = &d.map.pools["p"]["b1"];
        assert_eq!((b1.state, b1.stale), (Down, false));
        // Live verdicts win over the record and clear the stale mark.
        Arc::make_mut(&mut f.agents).insert(
            "a1".into(),
            AgentFact {
                zone: String::new(),
                address: String::new(),
                instance_id: String::new(),
                mod_revision: 0,
            },
        );
        vote(&mut f, "a1", "b0", Down);
        let d = derive(&f, None, &Dirty::all());
        let b0 = &d.map.pools["p"]["b0"];
        assert_eq!((b0.state, b0.stale), (Down, false));
        assert_eq!(
            d.detail("p", "b0").and_then(|x| x.live.map(|l| l.0)),
            Some(Down)
        );
    }

    #[test]
    fn maint_is_down_and_unchecked() {
        let mut p = pool("p", 1, true, Quorum::Majority);
        p.backends[0].admin_state = AdminState::Maint;
        let d = derive(&facts(p, &["a"]), None, &Dirty::all());
        assert_eq!(state(&d, "b0"), HealthState::Down);
        assert!(d.targets_for("a").is_empty());
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
        let d = derive(&f, None, &Dirty::all());
        assert_eq!(d.suspects, BTreeSet::from(["a3".to_string()]));
        // Even with quorum `any`, the suspect's DOWN votes do not count.
        for b in 0..10 {
            assert_eq!(state(&d, &format!("b{b}")), Up);
        }
        let detail = d.detail("p", "b0").expect("detail");
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
        let d = derive(&f, None, &Dirty::all());
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
        assert!(derive(&f, None, &Dirty::all()).suspects.is_empty());
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
        assert!(derive(&f, None, &Dirty::all()).suspects.is_empty());
    }

    #[test]
    fn unchanged_pools_share_their_arc() {
        let f = facts(pool("p", 3, false, Quorum::Majority), &["a"]);
        let d1 = derive(&f, None, &Dirty::all());
        let d2 = derive(&f, Some(&d1), &Dirty::all());
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
            prop_assert_eq!(derive(&f1, None, &Dirty::all()).map, derive(&f2, None, &Dirty::all()).map);
        }
    }
}
