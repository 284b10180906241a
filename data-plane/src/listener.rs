//! A TCP listener that balances connections over one pool: bound at start,
//! listening once the health map has its pool, then accepting under a
//! `max_connections` semaphore shared by its workers' sockets — at the
//! limit each accept loop holds the one connection it accepted until a
//! slot frees and stops accepting, so other clients wait in the kernel's
//! accept queue — and backing off on
//! accept errors. Each accepted connection becomes a session (see
//! `session`), tracked so the caller can drain it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug_span, info, info_span, warn};
use trackwire_core::HealthMap;
use trackwire_core::backoff::Backoff;
use trackwire_core::config::ListenerSpec;

use crate::Error;
use crate::metrics::Metrics;
use crate::routing::Routing;
use crate::session;

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
) -> Result<(), Error> {
    let routing = Arc::new(Routing::new(listener.spec.clone(), map, metrics, cut));
    serve_shared(listener, routing, tracker, shutdown).await
}

/// [`serve`] for one of several sockets of the same listener (one per
/// worker thread, bound with SO_REUSEPORT to the same address), sharing
/// its routing state, counters and connection limit.
pub(crate) async fn serve_shared(
    listener: Listener,
    routing: Arc<Routing>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = listener.local_addr().unwrap_or(listener.spec.bind);
    let pool = listener.spec.pool.clone();
    let mut ready = routing.map.clone();
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
            return Err(Error::Listen {
                listener: spec.name,
                addr,
                error,
            });
        }
    };
    // The first socket of a listener to listen counts it and logs it.
    if routing.listening.fetch_add(1, Relaxed) == 0 {
        info!(listener = %spec.name, %addr, pool = %spec.pool, "proxy listening");
        routing.metrics.listeners_listening.inc();
        if spec.shutdown_sessions_on_down {
            tokio::spawn(
                Arc::clone(&routing)
                    .close_sessions_of_down_backends(shutdown.clone())
                    .instrument(info_span!("down", listener = %spec.name)),
            );
        }
    }
    accept_loop(socket, Arc::clone(&routing), tracker, shutdown).await;
    if routing.listening.fetch_sub(1, Relaxed) == 1 {
        routing.metrics.listeners_listening.dec();
    }
    Ok(())
}

async fn accept_loop(
    socket: TcpListener,
    routing: Arc<Routing>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let limit = Arc::clone(&routing.limit);
    // EMFILE and friends: back off instead of spinning.
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            () = shutdown.cancelled() => return,
        };
        let (client, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                warn!(listener = %routing.spec.name, error = %e, "accept failed");
                tokio::time::sleep(backoff.next_jittered()).await;
                continue;
            }
        };
        backoff.reset();
        // At the connection limit, stop accepting until a session ends:
        // the connection in hand waits for a slot, the rest wait in the
        // kernel's queue. A slot is asked for only with a connection in
        // hand: a worker holding the listener's last slot while waiting on
        // an empty socket would starve the connections queued on the
        // other workers' sockets.
        // A connection in hand is served even when shutdown has just begun:
        // `biased` takes a free slot before looking at the token (unbiased,
        // a connection accepted as SIGTERM arrived was dropped unanswered
        // half the time; seen once in chaos scenario 4). The ones still in
        // the kernel's queue move to the new process (tcp_migrate_req).
        let permit = tokio::select! {
            biased;
            p = Arc::clone(&limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
        let routing = Arc::clone(&routing);
        // Per connection: below `info`, so nothing is formatted for it at
        // the default level.
        let span = debug_span!("conn", listener = %routing.spec.name, %peer);
        tracker.spawn(
            async move {
                session::handle(routing, client, peer).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}
