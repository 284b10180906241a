//! The agent's metrics, registered in the component's registry by
//! [`Metrics::register`]: checks run, failed and by pool and HAProxy
//! outcome code, check duration and scheduling lateness, assigned targets,
//! verdict transitions and the session state.
//!
//! A check task holds its pool's counters ([`PoolChecks`], handed out once
//! when the target starts), so recording a check is relaxed atomic adds:
//! no lock, no allocation, no label lookup.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use trackwire_core::histogram::Histogram;
use trackwire_core::metrics::{Collector, DescriptorEncoder, Registry, counters};

use crate::check::{CheckResult, Outcome};

type U64Gauge = Gauge<u64, AtomicU64>;

#[derive(Debug, Default)]
pub struct Metrics {
    pub checks_total: Counter,
    pub checks_failed: Counter,
    pub transitions: Counter,
    pub targets: U64Gauge,
    /// 1 while a control-plane session is up (the session state).
    pub connected: U64Gauge,
    /// How late each check started against its schedule.
    pub lateness: Histogram,
    /// How long each check took (connect to verdict).
    pub latency: Histogram,
    pools: Mutex<BTreeMap<String, Arc<PoolChecks>>>,
}

/// One pool's check results by outcome, indexed by [`Outcome::index`].
#[derive(Debug, Default)]
pub struct PoolChecks {
    outcomes: [AtomicU64; Outcome::ALL.len()],
}

impl Metrics {
    /// The counters of `pool`, for a target's check task (once per target).
    pub fn pool(&self, pool: &str) -> Arc<PoolChecks> {
        Arc::clone(self.pools.lock().entry(pool.to_owned()).or_default())
    }

    /// Records one check's result.
    pub fn record(&self, pool: &PoolChecks, result: &CheckResult) {
        self.latency.observe(result.latency);
        pool.outcomes[result.outcome.index()].fetch_add(1, Relaxed);
        self.checks_total.inc();
        if !result.passed() {
            self.checks_failed.inc();
        }
    }

    /// Registers every agent metric in `registry` (and the TLS material's,
    /// when the control-plane link uses it).
    pub fn register(
        self: &Arc<Self>,
        registry: &mut Registry,
        tls: Option<&trackwire_transport::Tls>,
    ) {
        registry.register(
            "trackwire_agent_checks",
            "Checks run",
            self.checks_total.clone(),
        );
        registry.register(
            "trackwire_agent_checks_failed",
            "Checks that failed",
            self.checks_failed.clone(),
        );
        registry.register(
            "trackwire_agent_transitions",
            "Verdict transitions (rise/fall crossings)",
            self.transitions.clone(),
        );
        registry.register(
            "trackwire_agent_targets",
            "Checks assigned to this agent",
            self.targets.clone(),
        );
        registry.register(
            "trackwire_agent_connected",
            "1 while a control-plane session is up, else 0",
            self.connected.clone(),
        );
        registry.register(
            "trackwire_agent_check_lateness_seconds",
            "How late checks started against their schedule",
            self.lateness.clone(),
        );
        registry.register(
            "trackwire_agent_check_duration_seconds",
            "Check duration, connect to verdict",
            self.latency.clone(),
        );
        registry.register_collector(Box::new(ByPool(Arc::clone(self))));
        if let Some(tls) = tls {
            trackwire_transport::metrics::register_tls(registry, tls);
        }
    }
}

#[derive(Debug)]
struct ByPool(Arc<Metrics>);

impl Collector for ByPool {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let pools = {
            let mut pools = self.0.pools.lock();
            // A pool none of whose targets runs any more leaves the output.
            pools.retain(|_, p| Arc::strong_count(p) > 1);
            pools.clone()
        };
        counters(
            &mut e,
            "trackwire_agent_check_results",
            "Check results by pool and HAProxy outcome code (L4OK, L7STS, ...).",
            pools.iter().flat_map(|(pool, p)| {
                Outcome::ALL.iter().map(move |o| {
                    (
                        [("pool", pool.as_str()), ("outcome", o.as_str())],
                        p.outcomes[o.index()].load(Relaxed),
                    )
                })
            }),
        )
    }
}
