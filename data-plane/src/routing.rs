//! One listener's routing: which endpoints a new connection may go to
//! ([`candidates`]: primaries, then backups, or everything but `maint` in
//! panic mode) and the listener's state, shared by its worker threads: the
//! candidates of the map last seen with each one's counters, the balancer,
//! passive health and the sessions to close when a backend is marked DOWN
//! behind one lock; open connections per backend in atomics (leastconn,
//! random, the per-backend limit). Every critical section is short and
//! awaits nothing, allocates nothing and clones no name; a session takes
//! the lock once to learn what to skip and once per pick (and once per
//! connect outcome only when its backend has failures on record).

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
/// its accept loops (one per worker thread) and its sessions.
pub(crate) struct Routing {
    pub spec: ListenerSpec,
    pub map: watch::Receiver<Arc<HealthMap>>,
    pub metrics: Arc<Metrics>,
    /// This listener's counters (its backends' come with the candidates).
    pub stats: Arc<ListenerStats>,
    /// Connect failures and refusals are logged at most once per interval.
    pub log_limit: trackwire_transport::server::LogLimiter,
    /// Cancelled when the drain grace period ends: every session closes.
    pub cut: CancellationToken,
    /// `max_connections` over every worker's accept loop.
    pub limit: Arc<tokio::sync::Semaphore>,
    /// Sockets of this listener listening now (one per worker).
    pub listening: std::sync::atomic::AtomicUsize,
    state: Mutex<State>,
}

/// The endpoints a new connection may go to, and each one's counters (same
/// order), computed once per map.
#[derive(Default)]
pub(crate) struct Candidates {
    pub eps: Vec<Endpoint>,
    pub stats: Vec<Arc<BackendStats>>,
}

struct State {
    /// The map [`State::candidates`] were computed from (once per map).
    seen: Arc<HealthMap>,
    candidates: Arc<Candidates>,
    balancer: Balancer,
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
            passive: Passive::new(PassiveConfig {
                consecutive_failures: spec.passive_failures,
                base_ejection: spec.passive_ejection,
                max_percent: spec.passive_max_percent,
            }),
            kill: HashMap::new(),
        };
        let stats = metrics.listener(&spec.name, &spec.pool);
        Routing {
            limit: Arc::new(tokio::sync::Semaphore::new(spec.max_connections as usize)),
            spec,
            map,
            metrics,
            stats,
            log_limit: trackwire_transport::server::LogLimiter::new(
                std::time::Duration::from_secs(10),
            ),
            cut,
            listening: std::sync::atomic::AtomicUsize::new(0),
            state: Mutex::new(state),
        }
    }

    /// The [`candidates`] of the current map (computed once per map, not per
    /// connection), and the backends to skip: those at their session limit
    /// and those this proxy ejected after failed connects (passive health).
    /// Allocates only when there is something to skip.
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
        let c = Arc::clone(&st.candidates);
        let mut skip = st.passive.ejected(Instant::now());
        drop(st);
        let limit = self.spec.max_connections_per_backend;
        if limit > 0 {
            for (ep, s) in c.eps.iter().zip(&c.stats) {
                if s.active.load(Relaxed) >= u64::from(limit) {
                    skip.push(ep.backend.clone());
                }
            }
        }
        (c, skip)
    }

    /// Picks a backend among `c` but those in `skip` and counts a session
    /// against it (open connections, for leastconn, random and the
    /// per-backend limit) until the returned guard drops.
    pub fn pick<'a>(
        &self,
        c: &'a Candidates,
        skip: &[String],
        client: IpAddr,
    ) -> Option<(usize, Active<'a>)> {
        let exclude: Vec<&str> = skip.iter().map(String::as_str).collect();
        let units = {
            let mut r = rand::rng();
            (r.random_range(0.0..1.0), r.random_range(0.0..1.0))
        };
        let i = self.state.lock().balancer.pick(
            &c.eps,
            &exclude,
            client,
            |i| u32::try_from(c.stats[i].active.load(Relaxed)).unwrap_or(u32::MAX),
            units,
        )?;
        let stats = &c.stats[i];
        stats.active.fetch_add(1, Relaxed);
        Some((i, Active(stats)))
    }

    /// Records a connect's outcome for passive health (`pool_size`: the
    /// candidates it was picked from). A success on a backend with no
    /// failure on record takes no lock.
    pub fn connected(&self, backend: &str, ok: bool, pool_size: usize, stats: &BackendStats) {
        if ok && !stats.failing.load(Relaxed) {
            return;
        }
        let mut st = self.state.lock();
        if ok {
            stats.failing.store(false, Relaxed);
            st.passive.on_success(backend);
            return;
        }
        stats.failing.store(true, Relaxed);
        if st.passive.on_failure(backend, pool_size, Instant::now()) {
            self.stats.passive_ejections.fetch_add(1, Relaxed);
            stats.passive_ejections.fetch_add(1, Relaxed);
            warn!(listener = %self.spec.name, %backend, "backend ejected after repeated connect failures (passive health)");
        }
    }

    /// The token that ends a session on `backend`: cancelled when the drain
    /// grace period ends (`cut`) and, with `shutdown_sessions_on_down`, when
    /// the backend is marked DOWN (a child of `cut`, one per backend). Without
    /// that option it is `cut` itself: nothing allocated per connection.
    pub fn kill_token(&self, backend: &str) -> CancellationToken {
        if !self.spec.shutdown_sessions_on_down {
            return self.cut.clone();
        }
        let kill = self
            .state
            .lock()
            .kill
            .entry(backend.to_string())
            .or_insert_with(|| self.cut.child_token())
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
pub(crate) struct Active<'a>(&'a BackendStats);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
