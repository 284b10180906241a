//! One client connection's life. [`connect`] finds it a backend: pick,
//! connect with a timeout, redispatch to another backend on failure
//! (HAProxy's `retries` + `redispatch`), skipping full and passively
//! ejected backends, then send the optional PROXY header. Counters are
//! reached through `Arc`s the listener and the candidates hold: relaxed
//! adds only, no lock or allocation for metrics; failures are logged at
//! most once per interval per listener, never once per connection. Then [`handle`]
//! relays until either side is done, the session is idle for
//! `idle_timeout`, its backend is marked DOWN (with
//! `shutdown_sessions_on_down`) or the drain grace period ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};
use trackwire_core::Endpoint;

use crate::metrics::BackendStats;
use crate::proxy_protocol;
use crate::relay::{Moved, relay};
use crate::routing::{Active, Candidates, Routing};

/// Serves one accepted connection from `peer` to its end.
pub(crate) async fn handle(routing: Arc<Routing>, client: TcpStream, peer: SocketAddr) {
    let stats = &routing.stats;
    stats.connections.fetch_add(1, Relaxed);
    tune(&client, routing.spec.tcp_keepalive);
    let (candidates, skip) = routing.start();
    let Some(server) = connect(&routing, &candidates, skip, &client, peer).await else {
        stats.failed.fetch_add(1, Relaxed);
        return;
    };
    let backend = &server.endpoint.backend;
    let b = server.stats;
    stats.active.fetch_add(1, Relaxed);
    b.connections.fetch_add(1, Relaxed);
    let kill = routing.kill_token(backend);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let moved = Moved {
        up: &[&up, &stats.bytes_in, &b.bytes_in],
        down: &[&down, &stats.bytes_out, &b.bytes_out],
    };
    let relayed = tokio::select! {
        r = relay(&client, &server.stream, routing.spec.idle_timeout, moved) => r,
        () = kill.cancelled() => Err(std::io::Error::other(if routing.cut.is_cancelled() {
            "drain grace period over"
        } else {
            "backend marked DOWN"
        })),
    };
    let (up, down) = (up.load(Relaxed), down.load(Relaxed));
    stats.active.fetch_sub(1, Relaxed);
    match relayed {
        Ok(()) => debug!(%backend, up, down, "session closed"),
        Err(e) => debug!(%backend, up, down, error = %e, "session ended with error"),
    }
}

/// A connected backend.
struct Upstream<'a> {
    endpoint: &'a Endpoint,
    stats: &'a BackendStats,
    stream: TcpStream,
    /// Counts the session against its backend until dropped.
    _active: Active<'a>,
}

/// Connects `client` (from `peer`) to one of `candidates`, trying up to
/// `retries + 1` backends. `None` when none could be reached (counted, and
/// logged at most once per interval per listener) or the PROXY header
/// could not be written.
async fn connect<'a>(
    routing: &'a Routing,
    candidates: &'a Candidates,
    mut skip: Vec<String>,
    client: &TcpStream,
    peer: SocketAddr,
) -> Option<Upstream<'a>> {
    let spec = &routing.spec;
    let stats = &routing.stats;
    let eps = &candidates.eps;
    let mut upstream = None;
    for attempt in 0..=spec.retries {
        let Some((i, active)) = routing.pick(candidates, &skip, peer.ip()) else {
            break;
        };
        if attempt > 0 {
            stats.retries.fetch_add(1, Relaxed);
        }
        let (ep, b) = (&eps[i], &*candidates.stats[i]);
        let start = Instant::now();
        let connected =
            tokio::time::timeout(spec.connect_timeout, TcpStream::connect(&ep.address)).await;
        let error = match connected {
            Ok(Ok(stream)) => {
                stats.connect.observe(start.elapsed());
                routing.connected(&ep.backend, true, eps.len(), b);
                upstream = Some(Upstream {
                    endpoint: ep,
                    stats: b,
                    stream,
                    _active: active,
                });
                break;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_owned(),
        };
        stats.connect_failures.fetch_add(1, Relaxed);
        b.connect_failures.fetch_add(1, Relaxed);
        if let Some(suppressed) = routing.log_limit.allow() {
            warn!(listener = %spec.name, backend = %ep.backend, %error, suppressed, "backend connect failed; redispatching");
        }
        routing.connected(&ep.backend, false, eps.len(), b);
        skip.push(ep.backend.clone());
    }
    let Some(mut up) = upstream else {
        if routing.map.borrow().pools.contains_key(&spec.pool) {
            if let Some(suppressed) = routing.log_limit.allow() {
                info!(listener = %spec.name, pool = %spec.pool, candidates = eps.len(), suppressed, "no backend available; closing connections");
            }
        } else {
            // Warned about once per pool (see `status`), not per connection.
            debug!(pool = %spec.pool, "pool not in the health map; closing connection");
        }
        return None;
    };
    tune(&up.stream, spec.tcp_keepalive);
    if let Some(version) = spec.send_proxy {
        let local = client.local_addr().unwrap_or(peer);
        let header = proxy_protocol::header(version, peer, local);
        if let Err(e) = up.stream.write_all(&header).await {
            debug!(backend = %up.endpoint.backend, error = %e, "writing the PROXY header failed");
            return None;
        }
    }
    Some(up)
}

/// `TCP_NODELAY`, and TCP keep-alive probes after `idle` without traffic,
/// on either side of a session.
fn tune(s: &TcpStream, idle: Option<Duration>) {
    let _ = s.set_nodelay(true);
    if let Some(idle) = idle {
        let ka = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(idle / 4 + Duration::from_secs(1));
        let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// What an idle session costs in memory is mostly its future: keep it
    /// small (2.5 KiB while the relay stored its pumps twice and a
    /// readiness future per await; under 1 KiB as a state machine).
    #[tokio::test]
    async fn an_idle_session_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let c = tokio::net::TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let spec = trackwire_core::config::ListenerSpec::new(
            "x",
            "127.0.0.1:0".parse().expect("addr"),
            "p",
        );
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(trackwire_core::HealthMap::default()));
        let routing = Arc::new(crate::routing::Routing::new(
            spec,
            rx,
            Arc::default(),
            Default::default(),
        ));
        let session = super::handle(routing, c, "127.0.0.1:1".parse().expect("addr"));
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1280, "a session future takes {size} bytes");
    }
}
