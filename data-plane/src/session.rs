//! One client connection's life. [`connect`] finds it a backend: pick,
//! connect with a timeout, redispatch to another backend on failure
//! (HAProxy's `retries` + `redispatch`), skipping full and passively
//! ejected backends, then send the optional PROXY header. Then [`handle`]
//! relays until either side is done, the session is idle for
//! `idle_timeout`, its backend is marked DOWN (with
//! `shutdown_sessions_on_down`) or the drain grace period ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};
use trackwire_core::Endpoint;

use crate::proxy_protocol;
use crate::relay::relay;
use crate::routing::{Active, Routing};

/// Serves one accepted connection from `peer` to its end.
pub(crate) async fn handle(routing: Arc<Routing>, client: TcpStream, peer: SocketAddr) {
    let metrics = &routing.metrics;
    metrics.connections_total.fetch_add(1, Relaxed);
    tune(&client, routing.spec.tcp_keepalive);
    let (eps, skip) = routing.start();
    let Some(server) = connect(&routing, &eps, skip, &client, peer).await else {
        return;
    };
    let backend = &server.endpoint.backend;
    metrics.connections_active.fetch_add(1, Relaxed);
    let kill = routing.kill_token(backend);
    let relayed = tokio::select! {
        r = relay(&client, &server.stream, routing.spec.idle_timeout) => r,
        () = kill.cancelled() => Err(std::io::Error::other("backend marked DOWN")),
        () = routing.cut.cancelled() => Err(std::io::Error::other("drain grace period over")),
    };
    metrics.connections_active.fetch_sub(1, Relaxed);
    match relayed {
        Ok((up, down)) => debug!(%backend, up, down, "session closed"),
        Err(e) => debug!(%backend, error = %e, "session ended with error"),
    }
}

/// A connected backend.
struct Upstream<'a> {
    endpoint: &'a Endpoint,
    stream: TcpStream,
    /// Counts the session against its backend until dropped.
    _active: Active<'a>,
}

/// Connects `client` (from `peer`) to one of `eps`, trying up to
/// `retries + 1` backends. `None` when none could be reached (counted and
/// logged here) or the PROXY header could not be written.
async fn connect<'a>(
    routing: &'a Routing,
    eps: &'a [Endpoint],
    mut skip: Vec<String>,
    client: &TcpStream,
    peer: SocketAddr,
) -> Option<Upstream<'a>> {
    let spec = &routing.spec;
    let metrics = &routing.metrics;
    let mut upstream = None;
    for _ in 0..=spec.retries {
        let Some((ep, active)) = routing.pick(eps, &skip, peer.ip()) else {
            break;
        };
        let connected =
            tokio::time::timeout(spec.connect_timeout, TcpStream::connect(&ep.address)).await;
        match connected {
            Ok(Ok(stream)) => {
                routing.connected(&ep.backend, true, eps.len());
                upstream = Some(Upstream {
                    endpoint: ep,
                    stream,
                    _active: active,
                });
                break;
            }
            Ok(Err(e)) => {
                metrics.connect_failures_total.fetch_add(1, Relaxed);
                warn!(backend = %ep.backend, error = %e, "backend connect failed; redispatching");
            }
            Err(_) => {
                metrics.connect_failures_total.fetch_add(1, Relaxed);
                warn!(backend = %ep.backend, "backend connect timed out; redispatching");
            }
        }
        routing.connected(&ep.backend, false, eps.len());
        skip.push(ep.backend.clone());
    }
    let Some(mut up) = upstream else {
        metrics.no_backend_total.fetch_add(1, Relaxed);
        if routing.map.borrow().pools.contains_key(&spec.pool) {
            info!(pool = %spec.pool, candidates = eps.len(), "no backend available; closing connection");
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
