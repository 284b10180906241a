//! A fixed-bucket, lock-free histogram rendered in Prometheus text format,
//! for latencies on hot paths (check lateness, map propagation). Observing
//! is a few relaxed atomic adds; no allocation, no lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds in seconds; chosen so p99 targets of 50 ms and below resolve.
pub const BOUNDS: [f64; 15] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Cumulative counts per bound (as Prometheus exposes them) and the total.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        (cumulative, self.count())
    }

    /// The smallest bound below which at least `q` of the observations fall
    /// (`None` when empty or beyond the last bound).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let (cumulative, total) = self.snapshot();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        cumulative
            .iter()
            .position(|c| *c >= want)
            .map(|i| BOUNDS[i])
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let (cumulative, total) = self.snapshot();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in BOUNDS.iter().zip(cumulative) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {sum}\n{name}_count {total}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.observe(Duration::from_micros(300));
        }
        h.observe(Duration::from_millis(15));
        h.observe(Duration::from_secs(9));
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_bound(0.5), Some(0.0005));
        assert_eq!(h.quantile_bound(0.99), Some(0.02));
        assert_eq!(h.quantile_bound(1.0), None, "beyond the last bound");
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "test");
        assert!(out.contains("x_seconds_bucket{le=\"0.02\"} 99"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 100"), "{out}");
        assert!(out.contains("x_seconds_count 100"), "{out}");
    }
}
