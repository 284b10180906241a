//! The data plane's metrics, registered in the component's registry by
//! [`Metrics::register`].
//!
//! Per listener and per backend (labels `listener`, `pool`, `backend`:
//! bounded by the configuration and the pool, never by clients):
//! connections total/active/failed, bytes in/out, connect latency, retries
//! and passive ejections. A session reaches its counters through `Arc`s
//! handed out once per listener ([`Metrics::listener`]) and once per map
//! change per backend ([`ListenerStats::backends_for`]), so the
//! per-connection path pays relaxed atomic adds only: no lock, no
//! allocation, no label lookup. A [`Collector`] reads them at each scrape;
//! a backend that leaves its pool leaves the output.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use trackwire_core::histogram::Histogram;
use trackwire_core::metrics::{
    Collector, DescriptorEncoder, Registry, age_seconds, counters, gauges, histograms,
};
use trackwire_core::time::now_ms;
use trackwire_core::{Endpoint, PoolUpdate};

type U64Gauge = Gauge<u64, AtomicU64>;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Listeners accepting connections (they wait for a health map first).
    pub listeners_listening: U64Gauge,
    pub stream_connected: U64Gauge,
    pub map_revision: U64Gauge,
    /// When the map in use was last known current (unix ms): when the
    /// stream was lost, or when the cache it was loaded from was written.
    pub map_current_at_ms: AtomicU64,
    /// Pools named by a listener that the held map lacks.
    pub pools_missing: U64Gauge,
    /// Pools kept from a previous store epoch (see `assemble`).
    pub pools_stale: U64Gauge,
    pub propagation: Histogram,
    listeners: Mutex<Vec<Arc<ListenerStats>>>,
}

/// One listener's counters, and its backends'.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub name: String,
    pub pool: String,
    pub connections: AtomicU64,
    pub active: AtomicU64,
    /// Connections closed without a backend (none available, or every
    /// connect attempt failed).
    pub failed: AtomicU64,
    /// Connect attempts after a failed one (redispatches).
    pub retries: AtomicU64,
    pub connect_failures: AtomicU64,
    pub passive_ejections: AtomicU64,
    /// Client → backend, and backend → client.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Time to establish the backend connection, per attempt that succeeded.
    pub connect: Histogram,
    backends: Mutex<BTreeMap<String, Arc<BackendStats>>>,
}

/// One backend's counters as one listener sees it.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub connections: AtomicU64,
    /// Sessions counted against the backend, from the pick (before the
    /// connect) to the end: leastconn, random and the per-backend limit
    /// read it, over every worker thread.
    pub active: AtomicU64,
    /// A connect failure is on record for passive health (a success then
    /// clears it under the routing lock; otherwise successes take no lock).
    pub failing: std::sync::atomic::AtomicBool,
    pub connect_failures: AtomicU64,
    pub passive_ejections: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl ListenerStats {
    /// The stats of each of `eps` (in order), creating missing ones and
    /// dropping those of backends no longer in `pool_backends`. Called once
    /// per map change, not per connection.
    pub fn backends_for<'a>(
        &self,
        eps: &[Endpoint],
        pool_backends: impl Iterator<Item = &'a str>,
    ) -> Vec<Arc<BackendStats>> {
        let mut all = self.backends.lock();
        let keep: std::collections::BTreeSet<&str> = pool_backends.collect();
        all.retain(|b, _| keep.contains(b.as_str()));
        eps.iter()
            .map(|ep| Arc::clone(all.entry(ep.backend.clone()).or_default()))
            .collect()
    }
}

impl Metrics {
    /// The stats of a listener that starts serving (once per listener).
    pub fn listener(&self, name: &str, pool: &str) -> Arc<ListenerStats> {
        let stats = Arc::new(ListenerStats {
            name: name.to_owned(),
            pool: pool.to_owned(),
            ..ListenerStats::default()
        });
        self.listeners.lock().push(Arc::clone(&stats));
        stats
    }

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

    /// A sum over every listener (tests and aggregate series).
    pub fn total(&self, f: impl Fn(&ListenerStats) -> &AtomicU64) -> u64 {
        self.listeners
            .lock()
            .iter()
            .map(|l| f(l).load(Relaxed))
            .sum()
    }

    /// Registers every data-plane metric in `registry` (and the TLS
    /// material's, when the control-plane link uses it).
    pub fn register(
        self: &Arc<Self>,
        registry: &mut Registry,
        tls: Option<&trackwire_transport::Tls>,
    ) {
        for (name, help, g) in [
            (
                "trackwire_proxy_listeners_listening",
                "Listeners accepting connections (each waits for a health map with its pool first)",
                &self.listeners_listening,
            ),
            (
                "trackwire_proxy_stream_connected",
                "1 while a health-map stream is up; 0 means routing on the last map",
                &self.stream_connected,
            ),
            (
                "trackwire_proxy_map_revision",
                "Store revision of the health map in use",
                &self.map_revision,
            ),
            (
                "trackwire_proxy_pools_missing",
                "Pools named by a listener that the health map lacks (their listeners do not listen; /readyz answers 503)",
                &self.pools_missing,
            ),
            (
                "trackwire_proxy_pools_stale",
                "Pools kept from a previous store epoch because the control plane's current store lacks them",
                &self.pools_stale,
            ),
        ] {
            registry.register(name, help, g.clone());
        }
        registry.register(
            "trackwire_propagation_seconds",
            "Time from a health decision to this proxy applying it",
            self.propagation.clone(),
        );
        registry.register_collector(Box::new(Listeners(Arc::clone(self))));
        if let Some(tls) = tls {
            trackwire_transport::metrics::register_tls(registry, tls);
        }
    }
}

#[derive(Debug)]
struct Listeners(Arc<Metrics>);

impl Collector for Listeners {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.0;
        let none: [(&str, &str); 0] = [];
        let connected = m.stream_connected.get() == 1;
        let held = m.map_revision.get() > 0;
        let age = match m.map_current_at_ms.load(Relaxed) {
            _ if connected => 0.0,
            0 => 0.0,
            at => age_seconds(at, now_ms()),
        };
        gauges(
            &mut e,
            "trackwire_proxy_map_age_seconds",
            "Seconds since the health map in use was last known current: 0 while the stream is up; else since the stream was lost (or the cached map was written).",
            [(none, age)],
        )?;
        gauges(
            &mut e,
            "trackwire_proxy_fail_static",
            "1 while routing on the last map held without a stream to the control plane (fail-static).",
            [(none, u64::from(held && !connected))],
        )?;
        let listeners = m.listeners.lock().clone();
        // The totals over listeners, as before per-listener series existed.
        for (name, help, f) in [
            (
                "trackwire_proxy_connections",
                "Client connections accepted (all listeners).",
                (|l: &ListenerStats| &l.connections) as fn(&ListenerStats) -> &AtomicU64,
            ),
            (
                "trackwire_proxy_connect_failures",
                "Backend connect attempts that failed (all listeners).",
                |l| &l.connect_failures,
            ),
            (
                "trackwire_proxy_no_backend",
                "Connections closed because no backend could be reached (all listeners).",
                |l| &l.failed,
            ),
            (
                "trackwire_proxy_passive_ejections",
                "Backends ejected locally after consecutive connect failures (all listeners).",
                |l| &l.passive_ejections,
            ),
        ] {
            let sum: u64 = listeners.iter().map(|l| f(l).load(Relaxed)).sum();
            counters(&mut e, name, help, [(none, sum)])?;
        }
        let active: u64 = listeners.iter().map(|l| l.active.load(Relaxed)).sum();
        gauges(
            &mut e,
            "trackwire_proxy_connections_active",
            "Client connections open (all listeners).",
            [(none, active)],
        )?;

        let by = |l: &ListenerStats| [("listener", l.name.clone()), ("pool", l.pool.clone())];
        for (name, help, f) in [
            (
                "trackwire_proxy_listener_connections",
                "Client connections accepted, per listener.",
                (|l: &ListenerStats| &l.connections) as fn(&ListenerStats) -> &AtomicU64,
            ),
            (
                "trackwire_proxy_listener_connections_failed",
                "Client connections closed without a backend, per listener.",
                |l| &l.failed,
            ),
            (
                "trackwire_proxy_listener_retries",
                "Connect attempts after a failed one (redispatches), per listener.",
                |l| &l.retries,
            ),
            (
                "trackwire_proxy_listener_connect_failures",
                "Backend connect attempts that failed, per listener.",
                |l| &l.connect_failures,
            ),
            (
                "trackwire_proxy_listener_passive_ejections",
                "Backends ejected after consecutive connect failures, per listener.",
                |l| &l.passive_ejections,
            ),
            (
                "trackwire_proxy_listener_bytes_in",
                "Bytes from clients to backends, per listener.",
                |l| &l.bytes_in,
            ),
            (
                "trackwire_proxy_listener_bytes_out",
                "Bytes from backends to clients, per listener.",
                |l| &l.bytes_out,
            ),
        ] {
            counters(
                &mut e,
                name,
                help,
                listeners.iter().map(|l| (by(l), f(l).load(Relaxed))),
            )?;
        }
        gauges(
            &mut e,
            "trackwire_proxy_listener_connections_active",
            "Client connections open, per listener.",
            listeners.iter().map(|l| (by(l), l.active.load(Relaxed))),
        )?;
        histograms(
            &mut e,
            "trackwire_proxy_connect_seconds",
            "Time to connect to a backend (attempts that succeeded), per listener.",
            listeners.iter().map(|l| (by(l), &l.connect)),
        )?;

        let backends: Vec<(Arc<ListenerStats>, String, Arc<BackendStats>)> = listeners
            .iter()
            .flat_map(|l| {
                l.backends
                    .lock()
                    .iter()
                    .map(|(b, s)| (Arc::clone(l), b.clone(), Arc::clone(s)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let by = |l: &ListenerStats, b: &str| {
            [
                ("listener", l.name.clone()),
                ("pool", l.pool.clone()),
                ("backend", b.to_owned()),
            ]
        };
        for (name, help, f) in [
            (
                "trackwire_proxy_backend_connections",
                "Connections relayed to each backend, per listener.",
                (|s: &BackendStats| &s.connections) as fn(&BackendStats) -> &AtomicU64,
            ),
            (
                "trackwire_proxy_backend_connect_failures",
                "Connect attempts to each backend that failed, per listener.",
                |s| &s.connect_failures,
            ),
            (
                "trackwire_proxy_backend_passive_ejections",
                "Times each backend was ejected after consecutive connect failures, per listener.",
                |s| &s.passive_ejections,
            ),
            (
                "trackwire_proxy_backend_bytes_in",
                "Bytes from clients to each backend, per listener.",
                |s| &s.bytes_in,
            ),
            (
                "trackwire_proxy_backend_bytes_out",
                "Bytes from each backend to clients, per listener.",
                |s| &s.bytes_out,
            ),
        ] {
            counters(
                &mut e,
                name,
                help,
                backends
                    .iter()
                    .map(|(l, b, s)| (by(l, b), f(s).load(Relaxed))),
            )?;
        }
        gauges(
            &mut e,
            "trackwire_proxy_backend_connections_active",
            "Connections open to each backend, per listener.",
            backends
                .iter()
                .map(|(l, b, s)| (by(l, b), s.active.load(Relaxed))),
        )
    }
}
