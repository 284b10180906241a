//! Balancing algorithms, sans IO: the caller passes candidates, the active
//! connection counts, the client address and random numbers.
//!
//! - `roundrobin`: smooth weighted round robin (nginx's algorithm). Over any
//!   window of `sum(weights)` picks each backend is chosen exactly `weight`
//!   times, interleaved rather than in bursts.
//! - `leastconn`: fewest active connections relative to weight; ties rotate.
//! - `random`: power of two weighted random choices, the less loaded wins.
//! - `source`: weighted rendezvous hashing of the client address: the same
//!   client lands on the same backend, and a backend leaving remaps only its
//!   own clients (about 1/n of them).

use std::collections::HashMap;
use std::net::IpAddr;

use trackwire_core::Endpoint;
use trackwire_core::config::Balance;

#[derive(Debug, Default)]
pub struct SmoothWrr {
    scores: HashMap<String, i64>,
}

impl SmoothWrr {
    /// Picks among `candidates`, skipping the names in `exclude` (backends
    /// that just failed to connect).
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

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    }
}

/// One listener's balancing state.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Balance,
    wrr: SmoothWrr,
    rotation: usize,
}

impl Balancer {
    pub fn new(algorithm: Balance) -> Self {
        Balancer {
            algorithm,
            wrr: SmoothWrr::default(),
            rotation: 0,
        }
    }

    /// Picks a backend. `active(name)` is its open connection count;
    /// `units` are two random numbers in [0, 1) (used by `random`).
    pub fn pick<'a>(
        &mut self,
        candidates: &'a [Endpoint],
        exclude: &[&str],
        client: IpAddr,
        active: impl Fn(&str) -> u32,
        units: (f64, f64),
    ) -> Option<&'a Endpoint> {
        let open: Vec<&'a Endpoint> = candidates
            .iter()
            .filter(|e| !exclude.contains(&e.backend.as_str()))
            .collect();
        if open.is_empty() {
            return None;
        }
        // load(a) < load(b)  <=>  (active_a + 1) / w_a < (active_b + 1) / w_b
        let lighter = |a: &Endpoint, b: &Endpoint| {
            let la = u64::from(active(&a.backend)) + 1;
            let lb = u64::from(active(&b.backend)) + 1;
            la * u64::from(b.weight.max(1)) < lb * u64::from(a.weight.max(1))
        };
        match self.algorithm {
            Balance::RoundRobin => self.wrr.pick(candidates, exclude),
            Balance::LeastConn => {
                self.rotation = self.rotation.wrapping_add(1);
                let n = open.len();
                let mut best = open[self.rotation % n];
                for i in 1..n {
                    let e = open[(self.rotation + i) % n];
                    if lighter(e, best) {
                        best = e;
                    }
                }
                Some(best)
            }
            Balance::Random => {
                let total: u64 = open.iter().map(|e| u64::from(e.weight.max(1))).sum();
                let at = |u: f64| {
                    let mut target = (u.clamp(0.0, 0.999_999_999) * total as f64) as u64;
                    for (i, e) in open.iter().enumerate() {
                        let w = u64::from(e.weight.max(1));
                        if target < w {
                            return i;
                        }
                        target -= w;
                    }
                    open.len() - 1
                };
                let a = at(units.0);
                let mut b = at(units.1);
                if b == a && open.len() > 1 {
                    b = (a + 1) % open.len();
                }
                Some(if lighter(open[b], open[a]) {
                    open[b]
                } else {
                    open[a]
                })
            }
            Balance::Source => {
                let ip = ip_bytes(client);
                open.into_iter()
                    .max_by(|a, b| source_score(&ip, a).total_cmp(&source_score(&ip, b)))
            }
        }
    }
}

/// Weighted rendezvous score: `-w / ln(u)` with `u` the hash in (0, 1).
fn source_score(ip: &[u8], e: &Endpoint) -> f64 {
    let h = trackwire_core::hash::stable_hash(&[ip, e.backend.as_bytes()]);
    let u = (h as f64 + 1.0) / (u64::MAX as f64 + 2.0);
    -f64::from(e.weight.max(1)) / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ep(name: &str, weight: u32) -> Endpoint {
        Endpoint {
            weight,
            ..Endpoint::up(name, format!("{name}:1"))
        }
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn roundrobin_honours_weights_exactly_per_cycle() {
        let eps = vec![ep("a", 5), ep("b", 1), ep("c", 1)];
        let mut w = SmoothWrr::default();
        let mut counts = HashMap::new();
        let mut seq = String::new();
        for _ in 0..7 {
            let e = w.pick(&eps, &[]).expect("a pick");
            *counts.entry(e.backend.clone()).or_insert(0) += 1;
            seq.push_str(&e.backend);
        }
        assert_eq!((counts["a"], counts["b"], counts["c"]), (5, 1, 1));
        assert!(!seq.contains("aaaaa"), "smooth: {seq}");
    }

    #[test]
    fn roundrobin_rotates_and_excludes() {
        let eps = vec![ep("a", 1), ep("b", 1), ep("c", 1)];
        let mut w = SmoothWrr::default();
        let picks: Vec<String> = (0..6)
            .map(|_| w.pick(&eps, &[]).expect("pick").backend.clone())
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        for _ in 0..4 {
            assert_eq!(w.pick(&eps, &["a", "c"]).expect("pick").backend, "b");
        }
        assert!(w.pick(&eps, &["a", "b", "c"]).is_none());
    }

    #[test]
    fn leastconn_prefers_the_least_loaded_by_weight() {
        let eps = vec![ep("a", 1), ep("b", 2), ep("c", 1)];
        let load = HashMap::from([("a", 3u32), ("b", 4), ("c", 1)]);
        let mut b = Balancer::new(Balance::LeastConn);
        // Loads per weight: a 4/1, b 5/2, c 2/1 -> c.
        for _ in 0..5 {
            let e = b
                .pick(&eps, &[], ip(1), |n| load[n], (0.0, 0.0))
                .expect("pick");
            assert_eq!(e.backend, "c");
        }
        // Equal loads: ties rotate over everyone.
        let pair = vec![ep("x", 1), ep("y", 1)];
        let seen: std::collections::HashSet<String> = (0..6)
            .map(|_| {
                b.pick(&pair, &[], ip(1), |_| 0, (0.0, 0.0))
                    .expect("pick")
                    .backend
                    .clone()
            })
            .collect();
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn random_follows_weights_and_load() {
        let eps = vec![ep("a", 3), ep("b", 1)];
        let mut bal = Balancer::new(Balance::Random);
        let mut counts = HashMap::new();
        let mut x: u64 = 42;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        // Long-lived connections: each pick stays open, so load builds up
        // and the split converges on the weights.
        let mut open: HashMap<String, u32> = HashMap::new();
        for _ in 0..10_000 {
            let u = (next(), next());
            let e = bal
                .pick(&eps, &[], ip(1), |n| open.get(n).copied().unwrap_or(0), u)
                .expect("pick");
            *open.entry(e.backend.clone()).or_insert(0) += 1;
            *counts.entry(e.backend.clone()).or_insert(0u32) += 1;
        }
        let share = f64::from(counts["a"]) / 10_000.0;
        assert!((0.70..0.80).contains(&share), "weight 3:1 gave {share}");
        // The loaded backend loses whenever both are drawn.
        let e = bal
            .pick(
                &eps,
                &[],
                ip(1),
                |n| if n == "a" { 100 } else { 0 },
                (0.1, 0.9),
            )
            .expect("pick");
        assert_eq!(e.backend, "b");
    }

    #[test]
    fn source_is_sticky_and_remaps_only_the_leavers_clients() {
        let eps: Vec<Endpoint> = (0..10).map(|i| ep(&format!("b{i}"), 1)).collect();
        let mut bal = Balancer::new(Balance::Source);
        let before: Vec<String> = (0..10_000)
            .map(|i| {
                bal.pick(&eps, &[], ip(i), |_| 0, (0.0, 0.0))
                    .expect("pick")
                    .backend
                    .clone()
            })
            .collect();
        // Sticky: the same client, the same backend.
        assert_eq!(
            bal.pick(&eps, &[], ip(7), |_| 0, (0.0, 0.0))
                .expect("pick")
                .backend,
            before[7]
        );
        // Roughly even: each of 10 backends gets 10% ± 2%.
        for b in &eps {
            let n = before.iter().filter(|x| **x == b.backend).count();
            assert!((800..1200).contains(&n), "{} got {n}", b.backend);
        }
        // b3 leaves: only b3's clients move.
        let without: Vec<Endpoint> = eps.iter().filter(|e| e.backend != "b3").cloned().collect();
        let mut moved = 0;
        for (i, old) in before.iter().enumerate() {
            let now = bal
                .pick(&without, &[], ip(i as u32), |_| 0, (0.0, 0.0))
                .expect("pick")
                .backend
                .clone();
            if &now != old {
                assert_eq!(old, "b3", "client {i} moved from {old} to {now}");
                moved += 1;
            }
        }
        let share = moved as f64 / 10_000.0;
        assert!((0.08..0.12).contains(&share), "moved {share}");
    }

    #[test]
    fn source_weights_skew_the_share() {
        let eps = vec![ep("a", 3), ep("b", 1)];
        let mut bal = Balancer::new(Balance::Source);
        let a = (0..10_000)
            .filter(|i| {
                bal.pick(&eps, &[], ip(*i), |_| 0, (0.0, 0.0))
                    .expect("pick")
                    .backend
                    == "a"
            })
            .count();
        assert!((7_000..8_000).contains(&a), "weight 3:1 gave {a}");
    }
}
