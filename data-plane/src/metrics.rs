//! Data-plane metrics, rendered in Prometheus text format.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use trackwire_core::PoolUpdate;

/// Bucket bounds (seconds) of `trackwire_propagation_seconds`.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub connect_failures_total: AtomicU64,
    pub no_backend_total: AtomicU64,
    pub stream_connected: AtomicU64,
    pub map_revision: AtomicU64,
    propagation: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// Records decided → applied time for every endpoint an update changed.
    pub fn observe_update(&self, pools: &[PoolUpdate]) {
        let now = now_ms();
        let mut h = self.propagation.lock().unwrap_or_else(|p| p.into_inner());
        for u in pools {
            for e in &u.upserts {
                if e.decided_at_ms == 0 || e.decided_at_ms > now {
                    continue;
                }
                let secs = (now - e.decided_at_ms) as f64 / 1000.0;
                h.count += 1;
                h.sum += secs;
                for (i, b) in BUCKETS.iter().enumerate() {
                    if secs <= *b {
                        h.counts[i] += 1;
                    }
                }
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, v) in [
            (
                "trackwire_proxy_connections_total",
                "counter",
                "client connections accepted",
                &self.connections_total,
            ),
            (
                "trackwire_proxy_connections_active",
                "gauge",
                "client connections open",
                &self.connections_active,
            ),
            (
                "trackwire_proxy_connect_failures_total",
                "counter",
                "backend connect attempts that failed",
                &self.connect_failures_total,
            ),
            (
                "trackwire_proxy_no_backend_total",
                "counter",
                "connections refused because no backend was available",
                &self.no_backend_total,
            ),
            (
                "trackwire_proxy_stream_connected",
                "gauge",
                "1 while a health-map stream is up; 0 means routing on the last map",
                &self.stream_connected,
            ),
            (
                "trackwire_proxy_map_revision",
                "gauge",
                "store revision of the health map in use",
                &self.map_revision,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        let h = self.propagation.lock().unwrap_or_else(|p| p.into_inner());
        let name = "trackwire_propagation_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} time from a health decision to this proxy applying it\n# TYPE {name} histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            h.count, h.sum, h.count
        );
        out
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
