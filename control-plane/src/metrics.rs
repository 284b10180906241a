//! Prometheus text-format metrics of the control plane. A handful of atomics
//! rendered by hand: the set is small and fixed, and it keeps the hot paths
//! free of registry locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use trackwire_core::HealthState;

use crate::derive::Derived;
use crate::facts::Facts;

#[derive(Debug, Default)]
pub struct Metrics {
    pub revision: AtomicU64,
    pub pools: AtomicU64,
    pub backends_up: AtomicU64,
    pub backends_down: AtomicU64,
    pub agents_live: AtomicU64,
    pub agents_suspect: AtomicU64,
    pub agent_sessions: AtomicU64,
    pub subscribers: AtomicU64,
    pub verdict_writes: AtomicU64,
    pub map_updates_sent: AtomicU64,
    pub map_bytes_sent: AtomicU64,
    /// 1 while the store answers (probed every 2 s), else 0.
    pub store_up: AtomicU64,
    /// Backends whose state is the last decided one, without live verdicts.
    pub backends_stale: AtomicU64,
    /// When the oldest stale state became stale (unix ms; 0: none).
    pub stale_oldest_since_ms: AtomicU64,
    /// How long a stale state is trusted, in seconds (0: without bound).
    pub stale_max_seconds: AtomicU64,
    /// Verdicts an agent sent about backends not assigned to it (dropped).
    pub verdicts_rejected: AtomicU64,
    /// The gRPC port's connection counters.
    pub grpc_listener: std::sync::Arc<trackwire_transport::ListenerStats>,
    /// The TLS material served with, once loaded.
    pub tls: std::sync::OnceLock<trackwire_transport::Tls>,
}

impl Metrics {
    pub fn observe_map(&self, d: &Derived, f: &Facts) {
        let (mut up, mut down) = (0, 0);
        for pool in d.map.pools.values() {
            for e in pool.values() {
                match e.state {
                    HealthState::Up => up += 1,
                    HealthState::Down => down += 1,
                }
            }
        }
        self.revision.store(d.map.revision, Relaxed);
        self.pools.store(d.map.pools.len() as u64, Relaxed);
        self.backends_up.store(up, Relaxed);
        self.backends_down.store(down, Relaxed);
        self.agents_live.store(f.agents.len() as u64, Relaxed);
        self.agents_suspect.store(d.suspects.len() as u64, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let oldest = self.stale_oldest_since_ms.load(Relaxed);
        let now = trackwire_core::time::now_ms();
        let stale_age = AtomicU64::new(if oldest == 0 {
            0
        } else {
            now.saturating_sub(oldest) / 1000
        });
        let rows: [(&str, &str, &str, &AtomicU64); 16] = [
            (
                "trackwire_store_up",
                "gauge",
                "1 while the store answers this replica, else 0",
                &self.store_up,
            ),
            (
                "trackwire_backends_stale",
                "gauge",
                "backends kept at their last decided state without live verdicts",
                &self.backends_stale,
            ),
            (
                "trackwire_stale_oldest_seconds",
                "gauge",
                "age of the oldest stale backend state",
                &stale_age,
            ),
            (
                "trackwire_stale_max_seconds",
                "gauge",
                "how long a stale state is trusted (0: without bound)",
                &self.stale_max_seconds,
            ),
            (
                "trackwire_verdicts_rejected_total",
                "counter",
                "verdicts dropped because they were not about the sending agent's assignment",
                &self.verdicts_rejected,
            ),
            (
                "trackwire_store_revision",
                "gauge",
                "store revision of the served health map",
                &self.revision,
            ),
            (
                "trackwire_pools",
                "gauge",
                "pools in the health map",
                &self.pools,
            ),
            (
                "trackwire_backends_up",
                "gauge",
                "backends derived UP",
                &self.backends_up,
            ),
            (
                "trackwire_backends_down",
                "gauge",
                "backends derived DOWN",
                &self.backends_down,
            ),
            (
                "trackwire_agents_live",
                "gauge",
                "agents with a live session lease",
                &self.agents_live,
            ),
            (
                "trackwire_agents_suspect",
                "gauge",
                "agents whose votes are ignored as suspected partitioned checkers",
                &self.agents_suspect,
            ),
            (
                "trackwire_agent_sessions",
                "gauge",
                "agent sessions connected to this replica",
                &self.agent_sessions,
            ),
            (
                "trackwire_subscribers",
                "gauge",
                "health-map subscribers connected to this replica",
                &self.subscribers,
            ),
            (
                "trackwire_verdict_writes_total",
                "counter",
                "verdict transitions written to the store",
                &self.verdict_writes,
            ),
            (
                "trackwire_map_updates_sent_total",
                "counter",
                "health-map messages sent to subscribers",
                &self.map_updates_sent,
            ),
            (
                "trackwire_map_bytes_sent_total",
                "counter",
                "encoded bytes of health-map messages sent to subscribers",
                &self.map_bytes_sent,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        let l = &self.grpc_listener;
        let _ = writeln!(
            out,
            "# HELP trackwire_grpc_connections_accepted_total connections accepted on the gRPC port\n# TYPE trackwire_grpc_connections_accepted_total counter\ntrackwire_grpc_connections_accepted_total {}\n\
             # HELP trackwire_grpc_connections_active established connections on the gRPC port\n# TYPE trackwire_grpc_connections_active gauge\ntrackwire_grpc_connections_active {}\n\
             # HELP trackwire_grpc_connections_dropped_total connections dropped before they were established, by reason\n# TYPE trackwire_grpc_connections_dropped_total counter\n\
             trackwire_grpc_connections_dropped_total{{reason=\"handshake\"}} {}\ntrackwire_grpc_connections_dropped_total{{reason=\"preface\"}} {}\ntrackwire_grpc_connections_dropped_total{{reason=\"evicted\"}} {}",
            l.accepted.load(Relaxed),
            l.active.load(Relaxed),
            l.handshake_failures.load(Relaxed),
            l.preface_timeouts.load(Relaxed),
            l.evicted.load(Relaxed),
        );
        if let Some(tls) = self.tls.get() {
            tls.render_metrics(&mut out);
        }
        out
    }
}
