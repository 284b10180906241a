//! Balancing algorithms, sans IO: the caller passes candidates, the active
//! connection counts, the client address and random numbers. Picking
//! allocates nothing and clones nothing: candidates are addressed by index
//! (the caller keeps per-candidate state in the same order).
//!
//! - `roundrobin`: smooth weighted round robin (nginx's algorithm). Over any
//!   window of `sum(weights)` picks each backend is chosen exactly `weight`
//!   times, interleaved rather than in bursts.
//! - `leastconn`: fewest active connections relative to weight; ties rotate.
//! - `random`: power of two weighted random choices, the less loaded wins.
//! - `source`: weighted rendezvous hashing of the client address: the same
//!   client lands on the same backend, and a backend leaving remaps only its
//!   own clients (about 1/n of them).

use std::net::IpAddr;

use trackwire_core::Endpoint;
use trackwire_core::config::Balance;

/// Smooth weighted round robin over one candidate list. The scores follow
/// the list they were computed for; a new list (a new map) starts afresh.
#[derive(Debug, Default)]
pub struct SmoothWrr {
    /// Identifies the list the scores belong to: its address and length.
    list: (usize, usize),
    scores: Vec<i64>,
}

impl SmoothWrr {
    /// Picks among `candidates` but `excluded` ones (backends that just
    /// failed to connect); returns the index.
    pub fn pick(
        &mut self,
        candidates: &[Endpoint],
        excluded: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let list = (candidates.as_ptr() as usize, candidates.len());
        if self.list != list {
            self.list = list;
            self.scores.clear();
            self.scores.resize(candidates.len(), 0);
        }
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (i, e) in candidates.iter().enumerate() {
            if excluded(i) {
                continue;
            }
            let w = i64::from(e.weight.max(1));
            total += w;
            self.scores[i] += w;
            let score = self.scores[i];
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
        let (i, _) = best?;
        self.scores[i] -= total;
        Some(i)
    }
}

/// An address's bytes (IPv4-mapped IPv6 as IPv4), without allocating.
fn ip_bytes(ip: IpAddr) -> ([u8; 16], usize) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                out[..4].copy_from_slice(&v4.octets());
                (out, 4)
            }
            None => (v6.octets(), 16),
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

    /// Picks a backend among `candidates` but those named in `exclude`;
    /// returns its index. `active(i)` is candidate `i`'s open connection
    /// count; `units` are two random numbers in [0, 1) (used by `random`).
    pub fn pick(
        &mut self,
        candidates: &[Endpoint],
        exclude: &[&str],
        client: IpAddr,
        active: impl Fn(usize) -> u32,
        units: (f64, f64),
    ) -> Option<usize> {
        let excluded =
            |i: usize| !exclude.is_empty() && exclude.contains(&candidates[i].backend.as_str());
        let n = candidates.len();
        let open = (0..n).filter(|i| !excluded(*i));
        // load(a) < load(b)  <=>  (active_a + 1) / w_a < (active_b + 1) / w_b
        let weight = |i: usize| u64::from(candidates[i].weight.max(1));
        let lighter = |a: usize, b: usize| {
            let la = u64::from(active(a)) + 1;
            let lb = u64::from(active(b)) + 1;
            la * weight(b) < lb * weight(a)
        };
        match self.algorithm {
            Balance::RoundRobin => self.wrr.pick(candidates, excluded),
            Balance::LeastConn => {
                if n == 0 {
                    return None;
                }
                self.rotation = self.rotation.wrapping_add(1);
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (self.rotation.wrapping_add(k)) % n;
                    if excluded(i) {
                        continue;
                    }
                    if best.is_none_or(|b| lighter(i, b)) {
                        best = Some(i);
                    }
                }
                best
            }
            Balance::Random => {
                let total: u64 = open.clone().map(weight).sum();
                let count = open.clone().count();
                if count == 0 {
                    return None;
                }
                // The `k`-th open candidate by weighted position `u`.
                let at = |u: f64| {
                    let mut target = (u.clamp(0.0, 0.999_999_999) * total as f64) as u64;
                    let mut last = 0;
                    for i in open.clone() {
                        let w = weight(i);
                        if target < w {
                            return i;
                        }
                        target -= w;
                        last = i;
                    }
                    last
                };
                let a = at(units.0);
                let mut b = at(units.1);
                if b == a && count > 1 {
                    // The next open candidate after `a`, wrapping.
                    b = (1..n)
                        .map(|k| (a + k) % n)
                        .find(|i| !excluded(*i))
                        .unwrap_or(a);
                }
                Some(if lighter(b, a) { b } else { a })
            }
            Balance::Source => {
                let (bytes, len) = ip_bytes(client);
                let ip = &bytes[..len];
                open.max_by(|a, b| {
                    source_score(ip, &candidates[*a]).total_cmp(&source_score(ip, &candidates[*b]))
                })
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
    use std::collections::HashMap;
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
            let e = &eps[w.pick(&eps, |_| false).expect("a pick")];
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
            .map(|_| eps[w.pick(&eps, |_| false).expect("pick")].backend.clone())
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        for _ in 0..4 {
            assert_eq!(eps[w.pick(&eps, |i| i != 1).expect("pick")].backend, "b");
        }
        assert!(w.pick(&eps, |_| true).is_none());
    }

    #[test]
    fn leastconn_prefers_the_least_loaded_by_weight() {
        let eps = vec![ep("a", 1), ep("b", 2), ep("c", 1)];
        let load = HashMap::from([("a", 3u32), ("b", 4), ("c", 1)]);
        let mut b = Balancer::new(Balance::LeastConn);
        // Loads per weight: a 4/1, b 5/2, c 2/1 -> c.
        for _ in 0..5 {
            let e = &eps[b
                .pick(
                    &eps,
                    &[],
                    ip(1),
                    |i| load[eps[i].backend.as_str()],
                    (0.0, 0.0),
                )
                .expect("pick")];
            assert_eq!(e.backend, "c");
        }
        // Equal loads: ties rotate over everyone.
        let pair = vec![ep("x", 1), ep("y", 1)];
        let seen: std::collections::HashSet<String> = (0..6)
            .map(|_| {
                pair[b.pick(&pair, &[], ip(1), |_| 0, (0.0, 0.0)).expect("pick")]
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
            let e = &eps[bal
                .pick(
                    &eps,
                    &[],
                    ip(1),
                    |i| open.get(&eps[i].backend).copied().unwrap_or(0),
                    u,
                )
                .expect("pick")];
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
                |i| if i == 0 { 100 } else { 0 },
                (0.1, 0.9),
            )
            .expect("pick");
        assert_eq!(eps[e].backend, "b");
        // An excluded backend is never picked.
        for u in [(0.1, 0.9), (0.9, 0.1), (0.5, 0.5)] {
            let e = bal.pick(&eps, &["a"], ip(1), |_| 0, u).expect("pick");
            assert_eq!(eps[e].backend, "b");
        }
        assert!(
            bal.pick(&eps, &["a", "b"], ip(1), |_| 0, (0.1, 0.9))
                .is_none()
        );
    }

    #[test]
    fn source_is_sticky_and_remaps_only_the_leavers_clients() {
        let eps: Vec<Endpoint> = (0..10).map(|i| ep(&format!("b{i}"), 1)).collect();
        let mut bal = Balancer::new(Balance::Source);
        let before: Vec<String> = (0..10_000)
            .map(|i| {
                eps[bal.pick(&eps, &[], ip(i), |_| 0, (0.0, 0.0)).expect("pick")]
                    .backend
                    .clone()
            })
            .collect();
        // Sticky: the same client, the same backend.
        assert_eq!(
            eps[bal.pick(&eps, &[], ip(7), |_| 0, (0.0, 0.0)).expect("pick")].backend,
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
            let now = without[bal
                .pick(&without, &[], ip(i as u32), |_| 0, (0.0, 0.0))
                .expect("pick")]
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
                eps[bal
                    .pick(&eps, &[], ip(*i), |_| 0, (0.0, 0.0))
                    .expect("pick")]
                .backend
                    == "a"
            })
            .count();
        assert!((7_000..8_000).contains(&a), "weight 3:1 gave {a}");
    }
}
