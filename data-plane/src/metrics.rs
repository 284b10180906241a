//! Data-plane metrics, rendered in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use trackwire_core::time::now_ms;

use trackwire_core::PoolUpdate;
use trackwire_core::histogram::Histogram;

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    /// Listeners accepting connections (they wait for a health map first).
    pub listeners_listening: AtomicU64,
    pub connect_failures_total: AtomicU64,
    pub no_backend_total: AtomicU64,
    pub passive_ejections_total: AtomicU64,
    pub stream_connected: AtomicU64,
    pub map_revision: AtomicU64,
    /// Pools named by a listener that the held map lacks.
    pub pools_missing: AtomicU64,
    /// Pools kept from a previous store epoch (see `assemble`).
    pub pools_stale: AtomicU64,
    pub propagation: Histogram,
}

impl Metrics {
    /// Records decided → applied time for every endpoint an update changed.
    pub fn observe_update(&self, pools: &[PoolUpdate]) {
        let now = now_ms();
        for u in pools {
            for e in &u.upserts {
                // 0: never decided (initial state); in the future: clock skew.
                if e.decided_at_ms == 0 || e.decided_at_ms > now {
                    continue;
                }
                self.propagation
                    .observe(Duration::from_millis(now - e.decided_at_ms));
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
                "trackwire_proxy_listeners_listening",
                "gauge",
                "listeners accepting connections (each waits for a health map first)",
                &self.listeners_listening,
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
                "trackwire_proxy_passive_ejections_total",
                "counter",
                "backends ejected locally after consecutive connect failures",
                &self.passive_ejections_total,
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
            (
                "trackwire_proxy_pools_missing",
                "gauge",
                "pools named by a listener that the health map lacks (their listeners do not listen; /readyz answers 503)",
                &self.pools_missing,
            ),
            (
                "trackwire_proxy_pools_stale",
                "gauge",
                "pools kept from a previous store epoch because the control plane's current store lacks them",
                &self.pools_stale,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        self.propagation.render(
            &mut out,
            "trackwire_propagation_seconds",
            "time from a health decision to this proxy applying it",
        );
        out
    }
}
