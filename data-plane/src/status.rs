//! What the proxy reports about its pools: `/readyz` and the missing-pool
//! warnings are derived here from the held map and the stale set.
//!
//! - **Missing**: a listener names a pool the held map lacks (a typo, or a
//!   pool not applied yet). Such a listener does not listen (see
//!   [`crate::listener::serve`]) and the proxy is not ready: `/readyz` answers
//!   503 naming the pools, so a zero-downtime handover that waits on
//!   `/readyz` never replaces a working proxy with one that can only
//!   refuse. One warning per pool when it goes missing, not one log line
//!   per connection.
//! - **Stale**: a pool kept from a previous store epoch (see
//!   [`crate::assemble`]). The proxy routes on it and stays ready — it is
//!   fail static, like a lost stream — but says so in `/readyz`'s body, in
//!   `trackwire_proxy_pools_stale` and in a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trackwire_core::HealthMap;
use trackwire_core::config::ListenerSpec;

use crate::metrics::Metrics;

/// The proxy's readiness at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// A map is held (from the control plane or the cache).
    pub has_map: bool,
    /// Pools named by listeners that the map lacks → those listeners' names.
    pub missing: BTreeMap<String, Vec<String>>,
    /// Pools kept from a previous store epoch.
    pub stale: BTreeSet<String>,
}

impl Readiness {
    pub fn of(map: &HealthMap, stale: &BTreeSet<String>, listeners: &[ListenerSpec]) -> Self {
        let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if map.received() {
            for l in listeners {
                if !map.pools.contains_key(&l.pool) {
                    missing
                        .entry(l.pool.clone())
                        .or_default()
                        .push(l.name.clone());
                }
            }
        }
        Readiness {
            has_map: map.received(),
            missing,
            stale: stale.clone(),
        }
    }

    /// Every listener can route: a map is held and has every listener's pool.
    pub fn ready(&self) -> bool {
        self.has_map && self.missing.is_empty()
    }

    /// `/readyz`'s body: why not ready, and which pools are stale.
    pub fn body(&self) -> String {
        let mut out = String::new();
        if !self.has_map {
            out.push_str("no health map yet\n");
        }
        for (pool, listeners) in &self.missing {
            let _ = writeln!(
                out,
                "pool {pool:?} (listener {}) is not in the health map",
                quoted(listeners)
            );
        }
        if self.ready() {
            out.push_str("ready\n");
        }
        for pool in &self.stale {
            let _ = writeln!(
                out,
                "pool {pool:?} is stale: kept from before the control plane's store changed epoch"
            );
        }
        out
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A change in which pools are missing, to log once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingChange {
    /// Newly missing, with the listeners that name it.
    Missing {
        pool: String,
        listeners: Vec<String>,
    },
    /// Was missing, is in the map now.
    Found { pool: String },
}

/// Remembers which pools were missing, so each goes into the log once when
/// it goes missing (and again only after it was found in between).
#[derive(Debug, Default)]
pub struct MissingLog {
    last: BTreeSet<String>,
}

impl MissingLog {
    pub fn observe(&mut self, r: &Readiness) -> Vec<MissingChange> {
        let mut out = Vec::new();
        for (pool, listeners) in &r.missing {
            if !self.last.contains(pool) {
                out.push(MissingChange::Missing {
                    pool: pool.clone(),
                    listeners: listeners.clone(),
                });
            }
        }
        for pool in &self.last {
            if !r.missing.contains_key(pool) {
                out.push(MissingChange::Found { pool: pool.clone() });
            }
        }
        self.last = r.missing.keys().cloned().collect();
        out
    }
}

/// The sources readiness is computed from, for the HTTP handlers.
#[derive(Clone)]
pub struct View {
    pub map: watch::Receiver<Arc<HealthMap>>,
    pub stale: watch::Receiver<BTreeSet<String>>,
    pub listeners: Arc<[ListenerSpec]>,
}

impl View {
    pub fn readiness(&self) -> Readiness {
        let map = Arc::clone(&self.map.borrow());
        Readiness::of(&map, &self.stale.borrow(), &self.listeners)
    }
}

/// Logs pools going missing and coming back, and keeps
/// `trackwire_proxy_pools_missing` current, until `shutdown`.
pub async fn watch_missing(view: View, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut map = view.map.clone();
    let mut log = MissingLog::default();
    loop {
        map.borrow_and_update();
        let r = view.readiness();
        metrics.pools_missing.set(r.missing.len() as u64);
        for change in log.observe(&r) {
            match change {
                MissingChange::Missing { pool, listeners } => warn!(
                    %pool,
                    listeners = %quoted(&listeners),
                    "a listener's pool is not in the health map: the listener does not listen \
                     (or, if already listening, refuses every connection) and /readyz answers \
                     503 until the control plane serves the pool; check the listener's `pool` \
                     and that the pool is applied"
                ),
                MissingChange::Found { pool } => {
                    info!(%pool, "pool is in the health map now");
                }
            }
        }
        tokio::select! {
            r = map.changed() => if r.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, pool: &str) -> ListenerSpec {
        ListenerSpec::new(name, "127.0.0.1:0".parse().expect("addr"), pool)
    }

    fn map_with(pools: &[&str]) -> HealthMap {
        HealthMap {
            epoch: 1,
            revision: 1,
            pools: pools
                .iter()
                .map(|p| (p.to_string(), Arc::default()))
                .collect(),
        }
    }

    #[test]
    fn readiness_names_missing_pools_and_stale_ones() {
        let listeners = [
            listener("web", "web"),
            listener("typo", "wbe"),
            listener("typo2", "wbe"),
        ];
        let none = BTreeSet::new();
        let r = Readiness::of(&HealthMap::default(), &none, &listeners);
        assert!(!r.ready() && r.missing.is_empty());
        assert_eq!(r.body(), "no health map yet\n");

        let r = Readiness::of(&map_with(&["web"]), &none, &listeners);
        assert!(!r.ready());
        assert_eq!(
            r.body(),
            "pool \"wbe\" (listener \"typo\", \"typo2\") is not in the health map\n"
        );

        let stale = BTreeSet::from(["web".to_string()]);
        let r = Readiness::of(&map_with(&["web", "wbe"]), &stale, &listeners);
        assert!(r.ready());
        assert_eq!(
            r.body(),
            "ready\npool \"web\" is stale: kept from before the control plane's store changed epoch\n"
        );
    }

    #[test]
    fn each_missing_pool_is_logged_once() {
        let listeners = [listener("a", "p"), listener("b", "q")];
        let none = BTreeSet::new();
        let mut log = MissingLog::default();
        let r = Readiness::of(&map_with(&[]), &none, &listeners);
        assert_eq!(log.observe(&r).len(), 2);
        // Every further map with the same pools missing: nothing new to say.
        assert!(log.observe(&r).is_empty());
        assert!(log.observe(&r).is_empty());
        let r = Readiness::of(&map_with(&["q"]), &none, &listeners);
        assert_eq!(log.observe(&r), [MissingChange::Found { pool: "q".into() }]);
        let r = Readiness::of(&map_with(&[]), &none, &listeners);
        assert_eq!(
            log.observe(&r),
            [MissingChange::Missing {
                pool: "q".into(),
                listeners: vec!["b".into()]
            }]
        );
    }
}
