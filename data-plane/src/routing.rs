//! One listener's routing: which endpoints a new connection may go to
//! ([`candidates`]: primaries, then backups, or everything but `maint` in
//! panic mode) and the listener's mutable state, behind one lock — the
//! candidates of the map last seen, the balancer, open sessions per
//! backend, passive health and the sessions to close when a backend is
//! marked DOWN. Every critical section is short and awaits nothing; a
//! session takes the lock once to learn what to skip, once per pick, once
//! per connect outcome and once when it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trackwire_core::config::{ListenerSpec, NoBackend};
use trackwire_core::{AdminState, Endpoint, HealthMap, HealthState};

use crate::balance::Balancer;
use crate::metrics::{BackendStats, ListenerStats, Metrics};
use crate::passive::{Passive, PassiveConfig};

/// The endpoints a new connection may go to, by the listener's policy.
pub fn candidates(map: &HealthMap, pool: &str, on_no_backend: NoBackend) -> Vec<Endpoint> {
    let Some(p) = map.pools.get(pool) else {
        return Vec::new();
    };
    let primaries: Vec<Endpoint> = p
        .values()
        .filter(|e| e.routable() && !e.backup)
        .cloned()
        .collect();
    if !primaries.is_empty() {
        return primaries;
    }
    let backups: Vec<Endpoint> = p
        .values()
        .filter(|e| e.routable() && e.backup)
        .cloned()
        .collect();
    if !backups.is_empty() || on_no_backend == NoBackend::Refuse {
        return backups;
    }
    // Panic mode: every backend not in maintenance, whatever its health.
    p.values()
        .filter(|e| e.admin_state != AdminState::Maint)
        .cloned()
        .collect()
}

/// A listener's configuration, map, counters and routing state, shared by
/// its accept loop and its sessions.
pub(crate) struct Routing {
    pub spec: ListenerSpec,
    pub map: watch::Receiver<Arc<HealthMap>>,
    /// This listener's counters (its backends' come with the candidates).
    pub stats: Arc<ListenerStats>,
    /// Connect failures and refusals are logged at most once per interval.
    pub log_limit: trackwire_transport::server::LogLimiter,
    /// Cancelled when the drain grace period ends: every session closes.
    pub cut: CancellationToken,
    state: Mutex<State>,
}

/// The endpoints a new connection may go to, and each one's counters (same
/// order), computed once per map.
#[derive(Default)]
pub(crate) struct Candidates {
    pub eps: Vec<Endpoint>,
    pub stats: Vec<Arc<BackendStats>>,
}

impl Candidates {
    /// The counters of `ep`, one of [`Candidates::eps`].
    pub fn stats_of(&self, ep: &Endpoint) -> Option<&Arc<BackendStats>> {
        let i = self.eps.iter().position(|e| std::ptr::eq(e, ep))?;
        self.stats.get(i)
    }
}

struct State {
    /// The map [`State::candidates`] were computed from (once per map).
    seen: Arc<HealthMap>,
    candidates: Arc<Candidates>,
    balancer: Balancer,
    /// Open sessions per backend (leastconn, random, the per-backend limit).
    active: HashMap<String, u32>,
    passive: Passive,
    /// backend → token cancelled when it is marked DOWN (shutdown_sessions_on_down).
    kill: HashMap<String, CancellationToken>,
}

impl Routing {
    pub fn new(
        spec: ListenerSpec,
        map: watch::Receiver<Arc<HealthMap>>,
        metrics: Arc<Metrics>,
        cut: CancellationToken,
    ) -> Routing {
        let state = State {
            seen: Arc::new(HealthMap::default()),
            candidates: Arc::new(Candidates::default()),
            balancer: Balancer::new(spec.balance),
            active: HashMap::new(),
            passive: Passive::new(PassiveConfig {
                consecutive_failures: spec.passive_failures,
                base_ejection: spec.passive_ejection,
                max_percent: spec.passive_max_percent,
            }),
            kill: HashMap::new(),
        };
        let stats = metrics.listener(&spec.name, &spec.pool);
        Routing {
            spec,
            map,
            stats,
            log_limit: trackwire_transport::server::LogLimiter::new(
                std::time::Duration::from_secs(10),
            ),
            cut,
            state: Mutex::new(state),
        }
    }

    /// The [`candidates`] of the current map (computed once per map, not per
    /// connection), and the backends to skip: those at their session limit
    /// and those this proxy ejected after failed connects (passive health).
    pub fn start(&self) -> (Arc<Candidates>, Vec<String>) {
        let map = Arc::clone(&self.map.borrow());
        let mut st = self.state.lock();
        if !Arc::ptr_eq(&st.seen, &map) {
            let eps = candidates(&map, &self.spec.pool, self.spec.on_no_backend);
            let in_pool = map.pools.get(&self.spec.pool);
            let stats = self.stats.backends_for(
                &eps,
                in_pool
                    .into_iter()
                    .flat_map(|p| p.keys().map(String::as_str)),
            );
            st.seen = map;
            st.candidates = Arc::new(Candidates { eps, stats });
        }
        let limit = self.spec.max_connections_per_backend;
        let mut skip: Vec<String> = if limit > 0 {
            st.active
                .iter()
                .filter(|(_, n)| **n >= limit)
                .map(|(b, _)| b.clone())
                .collect()
        } else {
            Vec::new()
        };
        skip.extend(st.passive.ejected(Instant::now()));
        (Arc::clone(&st.candidates), skip)
    }

    /// Picks a backend among `eps` but those in `skip` and counts a session
    /// against it until the returned guard drops.
    pub fn pick<'a>(
        &'a self,
        eps: &'a [Endpoint],
        skip: &[String],
        client: IpAddr,
    ) -> Option<(&'a Endpoint, Active<'a>)> {
        let exclude: Vec<&str> = skip.iter().map(String::as_str).collect();
        let units = {
            let mut r = rand::rng();
            (r.random_range(0.0..1.0), r.random_range(0.0..1.0))
        };
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let active = &st.active;
        let ep = st.balancer.pick(
            eps,
            &exclude,
            client,
            |n| active.get(n).copied().unwrap_or(0),
            units,
        )?;
        match st.active.get_mut(&ep.backend) {
            Some(n) => *n += 1,
            None => {
                st.active.insert(ep.backend.clone(), 1);
            }
        }
        let active = Active {
            routing: self,
            backend: &ep.backend,
        };
        Some((ep, active))
    }

    /// Records a connect's outcome for passive health (`pool_size`: the
    /// candidates it was picked from).
    pub fn connected(&self, backend: &str, ok: bool, pool_size: usize, stats: &BackendStats) {
        let mut st = self.state.lock();
        if ok {
            st.passive.on_success(backend);
        } else if st.passive.on_failure(backend, pool_size, Instant::now()) {
            self.stats.passive_ejections.fetch_add(1, Relaxed);
            stats.passive_ejections.fetch_add(1, Relaxed);
            warn!(%backend, "backend ejected after repeated connect failures (passive health)");
        }
    }

    /// The token cancelled when `backend` is marked DOWN (a fresh one, never
    /// cancelled, unless the listener has `shutdown_sessions_on_down`).
    pub fn kill_token(&self, backend: &str) -> CancellationToken {
        if !self.spec.shutdown_sessions_on_down {
            return CancellationToken::new();
        }
        let kill = self
            .state
            .lock()
            .kill
            .entry(backend.to_string())
            .or_default()
            .clone();
        // Marked DOWN between the pick and now: the watcher may have run already.
        if self.state_of(backend) == Some(HealthState::Down) {
            kill.cancel();
        }
        kill
    }

    fn state_of(&self, backend: &str) -> Option<HealthState> {
        let map = self.map.borrow();
        Some(map.pools.get(&self.spec.pool)?.get(backend)?.state)
    }

    /// Cancels the sessions of every backend the map marks DOWN, until
    /// `shutdown` (run only with `shutdown_sessions_on_down`).
    pub async fn close_sessions_of_down_backends(self: Arc<Self>, shutdown: CancellationToken) {
        let mut map = self.map.clone();
        loop {
            let down: Vec<String> = map
                .borrow_and_update()
                .pools
                .get(&self.spec.pool)
                .map(|p| {
                    p.values()
                        .filter(|e| e.state == HealthState::Down)
                        .map(|e| e.backend.clone())
                        .collect()
                })
                .unwrap_or_default();
            {
                let mut st = self.state.lock();
                for b in down {
                    if let Some(t) = st.kill.remove(&b) {
                        info!(backend = %b, "backend marked DOWN: closing its sessions");
                        t.cancel();
                    }
                }
            }
            tokio::select! {
                r = map.changed() => if r.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// Counts a session against its backend while alive.
pub(crate) struct Active<'a> {
    routing: &'a Routing,
    backend: &'a str,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let mut st = self.routing.state.lock();
        if let Some(n) = st.active.get_mut(self.backend) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.active.remove(self.backend);
            }
        }
    }
}
