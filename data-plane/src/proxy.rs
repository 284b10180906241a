//! A TCP listener that balances connections over the routable endpoints of
//! one pool. The map is read from a `watch` channel per connection; a failed
//! connect is retried on another backend (HAProxy's `retries` + `redispatch`).
//! Bytes are relayed with `copy_bidirectional`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};
use trackwire_core::config::ListenerSpec;
use trackwire_core::{Endpoint, HealthMap};

use crate::balance::SmoothWrr;
use crate::metrics::Metrics;

pub struct Listener {
    pub spec: ListenerSpec,
    pub socket: TcpListener,
}

struct Ctx {
    spec: ListenerSpec,
    map: watch::Receiver<Arc<HealthMap>>,
    wrr: Mutex<SmoothWrr>,
    metrics: Arc<Metrics>,
}

/// Accepts until `shutdown`; open sessions are tracked by `tracker` so the
/// caller can wait for them to drain.
pub async fn serve(
    listener: Listener,
    map: watch::Receiver<Arc<HealthMap>>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        spec: listener.spec,
        map,
        wrr: Mutex::new(SmoothWrr::default()),
        metrics,
    });
    let mut accept_backoff = Duration::from_millis(5);
    loop {
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
        tracker.spawn(async move { handle(ctx, client).await }.instrument(span));
    }
}

fn candidates(map: &HealthMap, pool: &str) -> Vec<Endpoint> {
    map.pools
        .get(pool)
        .map(|p| p.values().filter(|e| e.routable()).cloned().collect())
        .unwrap_or_default()
}

async fn handle(ctx: Arc<Ctx>, mut client: TcpStream) {
    ctx.metrics.connections_total.fetch_add(1, Relaxed);
    let _ = client.set_nodelay(true);
    let eps = candidates(&ctx.map.borrow(), &ctx.spec.pool);
    let mut tried: Vec<String> = Vec::new();
    let mut upstream = None;
    for _ in 0..=ctx.spec.retries {
        let pick = {
            let exclude: Vec<&str> = tried.iter().map(String::as_str).collect();
            let mut wrr = ctx.wrr.lock().unwrap_or_else(|p| p.into_inner());
            wrr.pick(&eps, &exclude).cloned()
        };
        let Some(ep) = pick else { break };
        match tokio::time::timeout(ctx.spec.connect_timeout, TcpStream::connect(&ep.address)).await
        {
            Ok(Ok(s)) => {
                upstream = Some((ep, s));
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
        tried.push(ep.backend);
    }
    let Some((ep, mut server)) = upstream else {
        ctx.metrics.no_backend_total.fetch_add(1, Relaxed);
        info!(pool = %ctx.spec.pool, candidates = eps.len(), "no backend available; closing connection");
        return;
    };
    let _ = server.set_nodelay(true);
    ctx.metrics.connections_active.fetch_add(1, Relaxed);
    let relayed = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    ctx.metrics.connections_active.fetch_sub(1, Relaxed);
    match relayed {
        Ok((up, down)) => debug!(backend = %ep.backend, up, down, "session closed"),
        Err(e) => debug!(backend = %ep.backend, error = %e, "session ended with error"),
    }
}
