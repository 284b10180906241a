//! Smooth weighted round robin (nginx's algorithm), sans IO.
//!
//! Each pick adds every candidate's weight to its running score, takes the
//! highest and subtracts the total from it. Over any window of `sum(weights)`
//! picks each backend is chosen exactly `weight` times, interleaved rather
//! than in bursts. Scores are kept by backend name, so a map update that
//! leaves a backend in place keeps its position in the rotation.

use std::collections::HashMap;

use trackwire_core::Endpoint;

#[derive(Debug, Default)]
pub struct SmoothWrr {
    scores: HashMap<String, i64>,
}

impl SmoothWrr {
    /// Picks among `candidates` (already filtered to routable ones), skipping
    /// the names in `exclude` (backends that just failed to connect).
    pub fn pick<'a>(
        &mut self,
        candidates: &'a [Endpoint],
        exclude: &[&str],
    ) -> Option<&'a Endpoint> {
        let mut total: i64 = 0;
        let mut best: Option<(&'a Endpoint, i64)> = None;
        for e in candidates {
            if exclude.contains(&e.backend.as_str()) {
                continue;
            }
            let w = i64::from(e.weight.max(1));
            total += w;
            let score = self.scores.entry(e.backend.clone()).or_insert(0);
            *score += w;
            if best.is_none_or(|(_, s)| *score > s) {
                best = Some((e, *score));
            }
        }
        let (e, _) = best?;
        if let Some(s) = self.scores.get_mut(&e.backend) {
            *s -= total;
        }
        // Forget backends no longer offered, so the table stays bounded.
        if self.scores.len() > candidates.len() * 2 + 8 {
            self.scores
                .retain(|name, _| candidates.iter().any(|c| &c.backend == name));
        }
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackwire_core::{AdminState, HealthState};

    fn ep(name: &str, weight: u32) -> Endpoint {
        Endpoint {
            backend: name.into(),
            address: format!("{name}:1"),
            weight,
            admin_state: AdminState::Ready,
            state: HealthState::Up,
            decided_at_ms: 0,
            votes: 0,
            votes_up: 0,
        }
    }

    #[test]
    fn honours_weights_exactly_per_cycle() {
        let eps = vec![ep("a", 5), ep("b", 1), ep("c", 1)];
        let mut w = SmoothWrr::default();
        let mut counts = HashMap::new();
        let mut seq = String::new();
        for _ in 0..7 {
            let e = w.pick(&eps, &[]).expect("a pick");
            *counts.entry(e.backend.clone()).or_insert(0) += 1;
            seq.push_str(&e.backend);
        }
        assert_eq!(counts["a"], 5);
        assert_eq!(counts["b"], 1);
        assert_eq!(counts["c"], 1);
        // Smooth: the heavy backend is never picked 5 times in a row.
        assert!(!seq.contains("aaaaa"), "{seq}");
    }

    #[test]
    fn equal_weights_rotate() {
        let eps = vec![ep("a", 1), ep("b", 1), ep("c", 1)];
        let mut w = SmoothWrr::default();
        let picks: Vec<String> = (0..6)
            .map(|_| w.pick(&eps, &[]).expect("pick").backend.clone())
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn exclusion_and_empty() {
        let eps = vec![ep("a", 1), ep("b", 1)];
        let mut w = SmoothWrr::default();
        for _ in 0..4 {
            assert_eq!(w.pick(&eps, &["a"]).expect("pick").backend, "b");
        }
        assert!(w.pick(&eps, &["a", "b"]).is_none());
        assert!(w.pick(&[], &[]).is_none());
    }
}
