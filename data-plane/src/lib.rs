//! The trackwire data plane: TCP listeners that route only to backends the
//! health map says are UP, fed by a subscription to the control plane.
//!
//! - [`subscribe`]: the `HealthMapService.Subscribe` task → `watch` channel.
//! - [`assemble`]: stream messages → complete maps; stale pools (sans IO).
//! - [`cache`]: the fail-static cache of the last map on disk.
//! - [`status`]: readiness (`/readyz`): missing and stale pools.
//! - [`balance`]: roundrobin, leastconn, random (p2c) and source hashing (sans IO).
//! - [`passive`]: local ejection after consecutive connect failures (sans IO).
//! - [`listener`]: bind, listen (once the map has the listener's pool), accept.
//! - [`routing`]: candidates of the map, and a listener's routing state
//!   (balancer, open sessions, passive health) behind one lock.
//! - `session`: one connection's life: pick, connect with redispatch,
//!   PROXY header ([`proxy_protocol`]), relay.
//! - [`relay`]: the one pump per direction, half-closes and the idle timeout.
//! - `splice` (Linux): zero-copy relaying; the workspace's only `unsafe`.
//! - [`Error`]: every error the data plane reports.
//!
//! Fail static: losing the control plane never changes routing; the last map
//! stays in force and is loaded from the state dir after a restart. A new
//! store epoch that lacks a served pool does not empty it either: the pool
//! is kept, flagged stale (see [`assemble`]).
//!
//! Restarts: listeners bind with SO_REUSEPORT, so a new process serves the
//! same addresses beside the old one; on shutdown the old one closes its
//! listeners, waits up to the drain grace for open sessions, then cuts them.

pub mod assemble;
pub mod balance;
pub mod cache;
mod error;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod passive;
pub mod proxy_protocol;
pub mod relay;
pub mod routing;
mod session;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod status;
pub mod subscribe;

pub use error::Error;
pub use listener::Listener;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use trackwire_core::config::ListenerSpec;
use trackwire_core::limits::HttpLimits;
use trackwire_transport::{Role, Tls};

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct Config {
    pub control_plane: Vec<String>,
    pub listeners: Vec<ListenerSpec>,
    /// Where the last health map is persisted (fail static across restarts).
    pub state_dir: Option<PathBuf>,
    pub proxy_id: String,
    /// How long open sessions may run after shutdown before they are cut.
    pub drain_grace: Duration,
    /// Mutual TLS to `https://` control planes; the proxy id is then the
    /// certificate's name.
    pub tls: Option<Tls>,
    /// Worker threads serving the listeners (0: one per CPU; see [`run`]).
    pub workers: usize,
}

/// The most worker threads a proxy runs.
pub const MAX_WORKERS: usize = 256;

impl Config {
    pub fn validate(&self) -> Result<(), Error> {
        trackwire_connect::check_client(
            &self.control_plane,
            self.tls.as_ref(),
            Role::Proxy,
            "a data-plane proxy",
        )
        .map_err(Error::Config)?;
        if self.listeners.is_empty() {
            return Err(Error::Config(
                "listener: the config defines no [[listener]]".into(),
            ));
        }
        if let Some(dir) = &self.state_dir {
            check_state_dir(dir)?;
        }
        if self.workers > MAX_WORKERS {
            return Err(Error::Config(format!(
                "--workers {}: at most {MAX_WORKERS} (0: one per CPU)",
                self.workers
            )));
        }
        Ok(())
    }

    /// The worker threads to run: `workers`, or one per CPU when 0.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The pools the listeners route to, deduplicated.
    pub fn pools(&self) -> Vec<String> {
        let mut pools: Vec<String> = self.listeners.iter().map(|l| l.pool.clone()).collect();
        pools.sort();
        pools.dedup();
        pools
    }
}

/// A state dir must be a directory, or not exist yet (the first save
/// creates it): a proxy that cannot keep its cache would lose fail static
/// across restarts while looking fine, so it refuses to start instead.
fn check_state_dir(dir: &Path) -> Result<(), Error> {
    let reason = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => "not a directory".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => e.to_string(),
    };
    Err(Error::StateDir {
        path: dir.to_path_buf(),
        reason,
    })
}

/// Binds every listener's address (call before anything else starts, so a
/// bind error exits early and cleanly). The sockets listen only once the
/// proxy holds a health map; see [`Listener`].
pub async fn bind(specs: &[ListenerSpec]) -> Result<Vec<Listener>, Error> {
    specs
        .iter()
        .map(|spec| {
            Listener::bind(spec.clone()).map_err(|error| Error::Bind {
                listener: spec.name.clone(),
                addr: spec.bind,
                error,
            })
        })
        .collect()
}

/// Whether this host lets a restarting proxy hand its queued connections to
/// the new process (Linux `net.ipv4.tcp_migrate_req`, per network
/// namespace, kernel ≥ 5.14). `None` when the setting does not exist.
pub fn check_handover() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .ok()
        .map(|v| v.trim() == "1")
}

/// Serves until `shutdown`, then stops accepting and lets open sessions run
/// for up to `drain_grace`.
///
/// Connections are served thread per core, HAProxy's and Envoy's model:
/// each of [`Config::worker_threads`] threads runs its own single-threaded
/// runtime with its own socket for every listener (SO_REUSEPORT on the same
/// address, so the kernel spreads connections over them), and a connection
/// lives on the thread that accepted it, never crossing threads. The
/// workers share each listener's routing state, counters and limits. The
/// subscription, the HTTP port and the drain run on the caller's runtime.
pub async fn run(
    config: Config,
    listeners: Vec<Listener>,
    http: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let metrics = Arc::new(Metrics::default());
    let initial = match &config.state_dir {
        Some(dir) => match cache::load(dir) {
            Ok(Some(mut cached)) => {
                // Only the pools served now (the config may have changed).
                let pools = config.pools();
                cached.map.retain(&pools);
                cached.stale.retain(|p| cached.map.pools.contains_key(p));
                info!(
                    epoch = cached.map.epoch,
                    revision = cached.map.revision,
                    pools = cached.map.pools.len(),
                    "loaded the last health map from the state dir"
                );
                if !cached.stale.is_empty() {
                    warn!(
                        pools = ?cached.stale,
                        "the cached map has stale pools (kept from before the control plane's \
                         store changed epoch); routing on their last known backends"
                    );
                }
                cached
            }
            Ok(None) => cache::Cached::default(),
            Err(e) => {
                warn!(error = %e, "ignoring unreadable health-map cache");
                cache::Cached::default()
            }
        },
        None => cache::Cached::default(),
    };
    metrics.map_revision.set(initial.map.revision);
    metrics.pools_stale.set(initial.stale.len() as u64);
    if let Some(at) = config
        .state_dir
        .as_deref()
        .filter(|_| initial.map.received())
        .and_then(|dir| std::fs::metadata(cache::path(dir)).ok()?.modified().ok())
    {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        metrics
            .map_current_at_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
    match &config.tls {
        Some(tls) => {
            tls.spawn_reloader(shutdown.clone());
        }
        None => warn!(
            "the control-plane link is PLAINTEXT: anyone on the path can read the health map \
             and forge it (routing traffic anywhere); give --tls-ca, --tls-cert, --tls-key and \
             https:// URLs"
        ),
    }
    let (tx, rx) = watch::channel(Arc::new(initial.map));
    let (stale_tx, stale_rx) = watch::channel::<BTreeSet<String>>(initial.stale);
    let view = status::View {
        map: rx.clone(),
        stale: stale_rx,
        listeners: config.listeners.clone().into(),
    };
    // Cancelled by `shutdown`, or by a listener that cannot listen.
    let stop = shutdown.child_token();
    let sub = tokio::spawn(
        subscribe::run(
            subscribe::SubscribeConfig {
                control_plane: config.control_plane.clone(),
                pools: config.pools(),
                proxy_id: match &config.tls {
                    Some(tls) => tls.identity().name,
                    None => config.proxy_id.clone(),
                },
                state_dir: config.state_dir.clone(),
                tls: config.tls.clone(),
            },
            subscribe::Publish {
                map: tx,
                stale: stale_tx,
            },
            Arc::clone(&metrics),
            stop.clone(),
        )
        .instrument(info_span!("subscription")),
    );
    tokio::spawn(
        status::watch_missing(view.clone(), Arc::clone(&metrics), stop.clone())
            .instrument(info_span!("pools")),
    );
    if check_handover() == Some(false) {
        info!(
            "net.ipv4.tcp_migrate_req is 0: when this process stops, connections still queued \
             on its listeners are reset instead of moving to a replacement; set it to 1 for \
             zero-downtime restarts"
        );
    }
    let mut registry = trackwire_core::metrics::Registry::default();
    metrics.register(&mut registry, config.tls.as_ref());
    let tracker = TaskTracker::new();
    // Cancelled when the drain grace ends: cuts the sessions still open.
    let cut = CancellationToken::new();
    let workers = config.worker_threads();
    // Per worker: its sockets, each with its listener's shared routing.
    let mut sockets: Vec<Vec<(Listener, Arc<routing::Routing>)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for l in listeners {
        let routing = Arc::new(routing::Routing::new(
            l.spec.clone(),
            rx.clone(),
            Arc::clone(&metrics),
            cut.clone(),
        ));
        // The bound address (port 0 resolved), which the others join.
        let bind = l.local_addr().unwrap_or(l.spec.bind);
        for w in sockets.iter_mut().skip(1) {
            let spec = ListenerSpec {
                bind,
                ..l.spec.clone()
            };
            let extra = Listener::bind(spec).map_err(|error| Error::Bind {
                listener: l.spec.name.clone(),
                addr: bind,
                error,
            })?;
            w.push((extra, Arc::clone(&routing)));
        }
        sockets[0].push((l, routing));
    }
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut threads = Vec::new();
    for (w, socks) in sockets.into_iter().enumerate() {
        let (tracker, stop, done) = (tracker.clone(), stop.clone(), done_tx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("trackwire-w{w}"))
            .spawn(move || worker(w, socks, tracker, stop, done))
            .map_err(Error::Worker)?;
        threads.push(thread);
    }
    drop(done_tx);
    info!(workers, "serving listeners on one thread per worker");
    if let Some(l) = http {
        info!(http_addr = %l.local_addr().map_err(Error::Http)?, "data plane HTTP listening");
        trackwire_transport::http::serve(
            l,
            http::router(view, Arc::new(registry)),
            HttpLimits::default(),
            stop.clone(),
        )
        .await
        .map_err(Error::Http)?;
    }
    stop.cancelled().await;
    let mut failed = None;
    // Every accept loop's end (and a worker that could not start).
    while let Some(r) = done_rx.recv().await {
        if let Err(e) = r {
            failed.get_or_insert(e);
        }
    }
    let _ = sub.await;
    tracker.close();
    let open = metrics.total(|l| &l.active);
    info!(open_sessions = open, grace = ?config.drain_grace, "stopped accepting; draining sessions");
    if tokio::time::timeout(config.drain_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(grace = ?config.drain_grace, "sessions still open after the drain grace period; closing them");
        cut.cancel();
        tracker.wait().await;
    }
    // Each worker returns once every session is over.
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One worker thread: its own single-threaded runtime serving its sockets;
/// the sessions they accept run here until they end. Reports each accept
/// loop's end on `done`.
fn worker(
    id: usize,
    sockets: Vec<(Listener, Arc<routing::Routing>)>,
    tracker: TaskTracker,
    stop: CancellationToken,
    done: tokio::sync::mpsc::UnboundedSender<Result<(), Error>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot start a worker runtime; stopping");
            let _ = done.send(Err(Error::Worker(e)));
            stop.cancel();
            return;
        }
    };
    runtime.block_on(async move {
        let serving = sockets.into_iter().map(|(l, routing)| {
            let span = info_span!("listener", name = %l.spec.name, worker = id);
            let (tracker, stop, done) = (tracker.clone(), stop.clone(), done.clone());
            async move {
                let r = listener::serve_shared(l, routing, tracker, stop).await;
                let _ = done.send(r);
            }
            .instrument(span)
        });
        for s in serving.collect::<Vec<_>>() {
            tokio::spawn(s);
        }
        drop(done);
        // Runs this thread's sessions until the proxy is done with them
        // (the tracker is closed once every accept loop has ended).
        tracker.wait().await;
    });
}
