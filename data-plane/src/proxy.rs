//! A TCP listener that balances connections over one pool. Per connection:
//! read the current map from the `watch` channel (never the network), pick
//! among the routable non-backup endpoints (backups only when none is left;
//! every non-`maint` endpoint in `panic` mode), connect with a timeout and
//! redispatch to another backend on failure (HAProxy's `retries` +
//! `redispatch`), then relay bytes both ways (see [`crate::relay`]) until
//! either side closes or the session is idle for `idle_timeout`. `max_connections` caps open
//! client connections: beyond it the listener stops accepting, so clients
//! wait in the kernel's accept queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use trackwire_core::config::{ListenerSpec, NoBackend};
use trackwire_core::{AdminState, Endpoint, HealthMap, HealthState};

use crate::balance::Balancer;
use crate::metrics::Metrics;
use crate::passive::{Passive, PassiveConfig};
use crate::proxy_protocol;
use crate::relay::relay;

/// A listener's socket: bound (so bind errors surface at start) but not
/// listening until [`serve`] holds a health map that has the listener's
/// pool, so the kernel hands a starting proxy no connection it could only
/// refuse. With SO_REUSEPORT a replacement process joins the old one's
/// listeners only once it can route (like Envoy's listener warming); a
/// listener whose pool the map lacks (a typo, a pool not applied yet)
/// leaves its connections to the old process.
pub struct Listener {
    pub spec: ListenerSpec,
    socket: socket2::Socket,
}

/// The listen backlog (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

impl Listener {
    /// Binds `spec.bind` with `SO_REUSEADDR` and, on Unix, `SO_REUSEPORT`:
    /// a new process can bind the address while the old one drains, and the
    /// kernel spreads new connections over both until the old one closes.
    pub fn bind(spec: ListenerSpec) -> std::io::Result<Listener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let addr = spec.bind;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(Listener { spec, socket })
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an IP socket"))
    }

    /// Starts listening (connections queue from here on).
    fn listen(self) -> std::io::Result<TcpListener> {
        self.socket.listen(BACKLOG)?;
        TcpListener::from_std(self.socket.into())
    }
}

struct Ctx {
    spec: ListenerSpec,
    map: watch::Receiver<Arc<HealthMap>>,
    balancer: Mutex<Balancer>,
    /// Open sessions per backend (for leastconn and random).
    active: Mutex<HashMap<String, u32>>,
    passive: Mutex<Passive>,
    /// backend → token cancelled when it is marked DOWN (shutdown_sessions_on_down).
    kill: Mutex<HashMap<String, CancellationToken>>,
    /// Cancelled when the drain grace period ends: every session closes.
    cut: CancellationToken,
    /// The candidates of the map last seen, computed once per map.
    routable: Mutex<(Arc<HealthMap>, Arc<Vec<Endpoint>>)>,
    metrics: Arc<Metrics>,
}

/// Listens once `map` holds a health map with the listener's pool, then
/// accepts until `shutdown`; open sessions are tracked by `tracker` so the
/// caller can wait for them to drain, and closed when `cut` is cancelled. A
/// listen(2) failure cancels `shutdown` (the whole proxy stops) and is
/// returned.
///
/// Once listening, a listener keeps listening if its pool later leaves the
/// map (an operator deleted it): it then refuses connections like a pool
/// with no UP backend, `/readyz` answers 503 and the proxy warns once.
/// Closing instead would reset the connections already queued, and
/// listening again would need a new bind that could fail.
pub async fn serve(
    listener: Listener,
    map: watch::Receiver<Arc<HealthMap>>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    cut: CancellationToken,
) -> Result<(), crate::Error> {
    let addr = listener.local_addr().unwrap_or(listener.spec.bind);
    let pool = listener.spec.pool.clone();
    let mut ready = map.clone();
    let routable = |m: &Arc<HealthMap>| m.received() && m.pools.contains_key(&pool);
    if !routable(&ready.borrow()) {
        info!(listener = %listener.spec.name, %addr, %pool, "waiting for a health map with the listener's pool before listening");
        tokio::select! {
            r = ready.wait_for(routable) => if r.is_err() { return Ok(()) },
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    let spec = listener.spec.clone();
    let socket = match listener.listen() {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(listener = %spec.name, %addr, %error, "listen failed; stopping");
            shutdown.cancel();
            return Err(crate::Error::Listen {
                listener: spec.name,
                addr,
                error,
            });
        }
    };
    info!(listener = %spec.name, %addr, pool = %spec.pool, "proxy listening");
    metrics.listeners_listening.fetch_add(1, Relaxed);
    let listener = Accepting { spec, socket };
    accept_loop(listener, map, Arc::clone(&metrics), tracker, shutdown, cut).await;
    metrics.listeners_listening.fetch_sub(1, Relaxed);
    Ok(())
}

async fn accept_loop(
    listener: Accepting,
    map: watch::Receiver<Arc<HealthMap>>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    cut: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(listener.spec.max_connections as usize));
    let ctx = Arc::new(Ctx {
        balancer: Mutex::new(Balancer::new(listener.spec.balance)),
        passive: Mutex::new(Passive::new(PassiveConfig {
            consecutive_failures: listener.spec.passive_failures,
            base_ejection: listener.spec.passive_ejection,
            max_percent: listener.spec.passive_max_percent,
        })),
        spec: listener.spec,
        map,
        active: Mutex::new(HashMap::new()),
        kill: Mutex::new(HashMap::new()),
        cut,
        routable: Mutex::new((Arc::new(HealthMap::default()), Arc::new(Vec::new()))),
        metrics,
    });
    if ctx.spec.shutdown_sessions_on_down {
        tokio::spawn(shut_down_sessions_of_down_backends(
            Arc::clone(&ctx),
            shutdown.clone(),
        ));
    }
    let mut accept_backoff = Duration::from_millis(5);
    loop {
        // At the connection limit, stop accepting until a session ends.
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.socket.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let (client, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(accept_backoff).await;
                accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        accept_backoff = Duration::from_millis(5);
        let ctx = Arc::clone(&ctx);
        let span = info_span!("conn", listener = %ctx.spec.name, %peer);
        tracker.spawn(
            async move {
                handle(ctx, client, peer).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

struct Accepting {
    spec: ListenerSpec,
    socket: TcpListener,
}

/// Cancels the sessions of every backend the map marks DOWN.
async fn shut_down_sessions_of_down_backends(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let mut map = ctx.map.clone();
    loop {
        let down: Vec<String> = map
            .borrow_and_update()
            .pools
            .get(&ctx.spec.pool)
            .map(|p| {
                p.values()
                    .filter(|e| e.state == HealthState::Down)
                    .map(|e| e.backend.clone())
                    .collect()
            })
            .unwrap_or_default();
        {
            let mut kill = ctx.kill.lock();
            for b in down {
                if let Some(t) = kill.remove(&b) {
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

/// [`candidates`] of the current map, computed once per map, not per
/// connection.
fn current_candidates(ctx: &Ctx) -> Arc<Vec<Endpoint>> {
    let map = Arc::clone(&ctx.map.borrow());
    let mut cached = ctx.routable.lock();
    if !Arc::ptr_eq(&cached.0, &map) {
        let eps = candidates(&map, &ctx.spec.pool, ctx.spec.on_no_backend);
        *cached = (map, Arc::new(eps));
    }
    Arc::clone(&cached.1)
}

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

/// Counts a session against its backend while alive.
struct ActiveGuard<'a> {
    ctx: &'a Ctx,
    backend: String,
}

impl<'a> ActiveGuard<'a> {
    fn new(ctx: &'a Ctx, backend: &str) -> Self {
        *ctx.active.lock().entry(backend.to_string()).or_insert(0) += 1;
        ActiveGuard {
            ctx,
            backend: backend.to_string(),
        }
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let mut a = self.ctx.active.lock();
        if let Some(n) = a.get_mut(&self.backend) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                a.remove(&self.backend);
            }
        }
    }
}

fn keepalive(s: &TcpStream, idle: Option<Duration>) {
    if let Some(idle) = idle {
        let ka = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(idle / 4 + Duration::from_secs(1));
        let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
    }
}

async fn handle(ctx: Arc<Ctx>, client: TcpStream, peer: SocketAddr) {
    ctx.metrics.connections_total.fetch_add(1, Relaxed);
    let _ = client.set_nodelay(true);
    keepalive(&client, ctx.spec.tcp_keepalive);
    let client_ip = peer.ip();
    let eps = current_candidates(&ctx);
    // Backends at their session limit are skipped like failed ones.
    let mut tried: Vec<String> = if ctx.spec.max_connections_per_backend > 0 {
        let active = ctx.active.lock();
        active
            .iter()
            .filter(|(_, n)| **n >= ctx.spec.max_connections_per_backend)
            .map(|(b, _)| b.clone())
            .collect()
    } else {
        Vec::new()
    };
    // Backends this proxy ejected after failed connects (passive health).
    tried.extend(ctx.passive.lock().ejected(Instant::now()));
    let mut upstream = None;
    for _ in 0..=ctx.spec.retries {
        let pick = {
            let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
            let units = {
                let mut r = rand::rng();
                (r.random_range(0.0..1.0), r.random_range(0.0..1.0))
            };
            // Read the counts under the lock instead of copying the map on
            // every connection (lock order: active, then balancer).
            let active = ctx.active.lock();
            let mut b = ctx.balancer.lock();
            b.pick(
                &eps,
                &exclude,
                client_ip,
                |n| active.get(n).copied().unwrap_or(0),
                units,
            )
        };
        let Some(ep) = pick else { break };
        let guard = ActiveGuard::new(&ctx, &ep.backend);
        let connected =
            tokio::time::timeout(ctx.spec.connect_timeout, TcpStream::connect(&ep.address)).await;
        let mut passive = ctx.passive.lock();
        match connected {
            Ok(Ok(s)) => {
                passive.on_success(&ep.backend);
                drop(passive);
                upstream = Some((ep, s, guard));
                break;
            }
            Ok(Err(e)) => {
                ctx.metrics.connect_failures_total.fetch_add(1, Relaxed);
                warn!(backend = %ep.backend, error = %e, "backend connect failed; redispatching");
            }
            Err(_) => {
                ctx.metrics.connect_failures_total.fetch_add(1, Relaxed);
                warn!(backend = %ep.backend, "backend connect timed out; redispatching");
            }
        }
        if passive.on_failure(&ep.backend, eps.len(), Instant::now()) {
            ctx.metrics.passive_ejections_total.fetch_add(1, Relaxed);
            warn!(backend = %ep.backend, "backend ejected after repeated connect failures (passive health)");
        }
        drop(passive);
        tried.push(ep.backend.clone());
    }
    let Some((ep, mut server, _guard)) = upstream else {
        ctx.metrics.no_backend_total.fetch_add(1, Relaxed);
        if ctx.map.borrow().pools.contains_key(&ctx.spec.pool) {
            info!(pool = %ctx.spec.pool, candidates = eps.len(), "no backend available; closing connection");
        } else {
            // Warned about once per pool (see `status`), not per connection.
            debug!(pool = %ctx.spec.pool, "pool not in the health map; closing connection");
        }
        return;
    };
    let _ = server.set_nodelay(true);
    keepalive(&server, ctx.spec.tcp_keepalive);
    if let Some(version) = ctx.spec.send_proxy {
        let local = client.local_addr().unwrap_or(peer);
        if let Err(e) = server
            .write_all(&proxy_protocol::header(version, peer, local))
            .await
        {
            debug!(backend = %ep.backend, error = %e, "writing the PROXY header failed");
            return;
        }
    }
    ctx.metrics.connections_active.fetch_add(1, Relaxed);
    let kill = if ctx.spec.shutdown_sessions_on_down {
        ctx.kill
            .lock()
            .entry(ep.backend.clone())
            .or_default()
            .clone()
    } else {
        CancellationToken::new()
    };
    // Marked DOWN between the pick and now: the watcher may have run already.
    if ctx.spec.shutdown_sessions_on_down
        && ctx
            .map
            .borrow()
            .pools
            .get(&ctx.spec.pool)
            .and_then(|p| p.get(&ep.backend))
            .is_some_and(|e| e.state == HealthState::Down)
    {
        kill.cancel();
    }
    let relayed = tokio::select! {
        r = relay(&client, &server, ctx.spec.idle_timeout) => r,
        () = kill.cancelled() => Err(std::io::Error::other("backend marked DOWN")),
        () = ctx.cut.cancelled() => Err(std::io::Error::other("drain grace period over")),
    };
    ctx.metrics.connections_active.fetch_sub(1, Relaxed);
    match relayed {
        Ok((up, down)) => debug!(backend = %ep.backend, up, down, "session closed"),
        Err(e) => debug!(backend = %ep.backend, error = %e, "session ended with error"),
    }
}
