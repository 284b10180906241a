//! Deterministic check assignment: rendezvous (highest-random-weight) hashing
//! of each backend over the live agents. Every replica computes the same
//! assignment from the same facts; an agent joining or leaving moves only the
//! backends whose top-`replicas` set it enters or leaves.

/// The stable hash of string parts (see [`trackwire_core::hash`]).
pub fn stable_hash(parts: &[&str]) -> u64 {
    let bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    trackwire_core::hash::stable_hash(&bytes)
}

/// The agents that check `pool/backend`: the `replicas` agents with the
/// highest score, ordered by score (all agents when fewer are live).
pub fn assign<'a>(pool: &str, backend: &str, agents: &[&'a str], replicas: u32) -> Vec<&'a str> {
    let zoned: Vec<(&'a str, &str)> = agents.iter().map(|a| (*a, "")).collect();
    assign_zoned(pool, backend, &zoned, replicas, false)
}

/// Like [`assign`], over `(agent, zone)` pairs. With `spread`, the
/// highest-scored agent of each zone is taken first (in score order), then
/// the remaining slots go by score, so a backend's checkers sit in as many
/// zones as there are, and a zone outage cannot take its quorum.
pub fn assign_zoned<'a>(
    pool: &str,
    backend: &str,
    agents: &[(&'a str, &str)],
    replicas: u32,
    spread: bool,
) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &'a str, &str)> = agents
        .iter()
        .map(|(a, z)| (stable_hash(&[a, pool, backend]), *a, *z))
        .collect();
    scored.sort_unstable_by(|x, y| y.0.cmp(&x.0).then(y.1.cmp(x.1)));
    let want = replicas as usize;
    if !spread {
        return scored.into_iter().take(want).map(|(_, a, _)| a).collect();
    }
    let mut chosen: Vec<&'a str> = Vec::with_capacity(want);
    let mut zones: Vec<&str> = Vec::new();
    for (_, a, z) in &scored {
        if chosen.len() == want {
            break;
        }
        if !zones.contains(z) {
            zones.push(z);
            chosen.push(a);
        }
    }
    for (_, a, _) in &scored {
        if chosen.len() == want {
            break;
        }
        if !chosen.contains(a) {
            chosen.push(a);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn assignment(agents: &[&str], backends: usize) -> BTreeSet<(usize, String)> {
        (0..backends)
            .flat_map(|b| {
                assign("p", &format!("b{b}"), agents, 3)
                    .into_iter()
                    .map(move |a| (b, a.to_string()))
            })
            .collect()
    }

    #[test]
    fn fewer_agents_than_replicas_assigns_all() {
        let got = assign("p", "b", &["a1", "a2"], 3);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn adding_an_agent_moves_only_its_share() {
        let six = ["a1", "a2", "a3", "a4", "a5", "a6"];
        let seven = ["a1", "a2", "a3", "a4", "a5", "a6", "a7"];
        let before = assignment(&six, 1000);
        let after = assignment(&seven, 1000);
        let moved = before.difference(&after).count();
        // 3000 assignments; the new agent should take about 3000/7 of them.
        let share = 3000.0 / 7.0;
        assert!(
            (moved as f64) < share * 1.15,
            "moved {moved}, share {share}"
        );
        // Only the new agent gains assignments.
        assert!(after.difference(&before).all(|(_, a)| a == "a7"));
    }

    #[test]
    fn removing_an_agent_moves_only_its_assignments() {
        let six = ["a1", "a2", "a3", "a4", "a5", "a6"];
        let five = ["a1", "a2", "a3", "a4", "a5"];
        let before = assignment(&six, 1000);
        let after = assignment(&five, 1000);
        assert!(before.difference(&after).all(|(_, a)| a == "a6"));
    }

    #[test]
    fn zone_spread_uses_every_zone() {
        let agents = [
            ("a1", "z1"),
            ("a2", "z1"),
            ("a3", "z2"),
            ("a4", "z2"),
            ("a5", "z3"),
            ("a6", "z3"),
        ];
        let zone_of = |a: &str| agents.iter().find(|(x, _)| *x == a).map(|(_, z)| *z);
        let mut same_zone_without = 0;
        for b in 0..1000 {
            let spread = assign_zoned("p", &format!("b{b}"), &agents, 3, true);
            let mut zones: Vec<_> = spread.iter().filter_map(|a| zone_of(a)).collect();
            zones.sort();
            zones.dedup();
            assert_eq!(zones.len(), 3, "backend b{b}: {spread:?}");
            let plain = assign_zoned("p", &format!("b{b}"), &agents, 3, false);
            let mut pz: Vec<_> = plain.iter().filter_map(|a| zone_of(a)).collect();
            pz.sort();
            pz.dedup();
            if pz.len() < 3 {
                same_zone_without += 1;
            }
        }
        assert!(
            same_zone_without > 100,
            "without spread, zones repeat often"
        );
        // Two zones, three replicas: both zones, then the best remaining agent.
        let two = [("a1", "z1"), ("a2", "z1"), ("a3", "z2")];
        assert_eq!(assign_zoned("p", "b", &two, 3, true).len(), 3);
    }

    #[test]
    fn hash_is_stable() {
        // A fixed value: a change here silently reshuffles every fleet's assignment.
        assert_eq!(
            stable_hash(&["agent", "pool", "backend"]),
            0xb7c0_ab98_3d2c_5412
        );
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
    }
}
