//! A fixed-bucket, lock-free histogram for latencies on hot paths (check
//! duration and lateness, connect time, map propagation). Observing is a
//! few relaxed atomic adds: no allocation, no lock.
//!
//! `prometheus-client`'s own `Histogram` takes a lock on every observation
//! (0.26), which the proxy's per-connection path and the agent's per-check
//! path must not pay; this one only counts, and is encoded by
//! `prometheus-client` like any other metric ([`EncodeMetric`]). Clones
//! share their counts, so one clone is registered and another observes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds in seconds; chosen so p99 targets of 50 ms and below resolve.
pub const BOUNDS: [f64; 15] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default, Clone)]
pub struct Histogram(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let c = &self.0;
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            c.buckets[i].fetch_add(1, Relaxed);
        }
        c.count.fetch_add(1, Relaxed);
        c.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.count.load(Relaxed)
    }

    /// The sum of the observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.0.sum_us.load(Relaxed) as f64 / 1e6
    }

    /// Cumulative counts per bound (as Prometheus exposes them) and the total.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        let mut acc = 0;
        let cumulative = self
            .0
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
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Read the total first: buckets observed after it make a bucket
        // exceed +Inf by a few at most, never a negative bucket.
        let count = self.count();
        let mut buckets = [(0.0, 0); BOUNDS.len()];
        for (i, b) in BOUNDS.iter().enumerate() {
            buckets[i] = (*b, self.0.buckets[i].load(Relaxed));
        }
        let seen: u64 = buckets.iter().map(|(_, n)| n).sum();
        // +Inf is `count`; keep the cumulative buckets at or below it.
        let mut over = seen.saturating_sub(count);
        for (_, n) in buckets.iter_mut().rev() {
            let cut = over.min(*n);
            *n -= cut;
            over -= cut;
        }
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

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
        let mut registry = Registry::default();
        registry.register("x_seconds", "test", h.clone());
        let (_, out) = crate::metrics::scrape(&registry, None);
        assert!(out.contains("x_seconds_bucket{le=\"0.02\"} 99"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 100"), "{out}");
        assert!(out.contains("x_seconds_count 100"), "{out}");
        assert!(out.contains("x_seconds_sum 9.0"), "{out}");
    }
}
