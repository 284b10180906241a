//! The health-map subscription: a task that holds a `Subscribe` stream to
//! one of the configured control-plane endpoints (failing over with jittered
//! backoff) and publishes each new map into a `watch` channel. Routing reads
//! the channel and never waits on the network. When the stream is lost the
//! last map stays published — fail static — until a new stream delivers a
//! snapshot.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{info, warn};
use trackwire_core::endpoints::Backoff;
use trackwire_core::{HealthMap, PoolUpdate};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::health_map_service_client::HealthMapServiceClient;

use crate::cache;
use crate::metrics::Metrics;

pub struct SubscribeConfig {
    pub endpoints: Vec<String>,
    pub pools: Vec<String>,
    pub proxy_id: String,
    pub state_dir: Option<PathBuf>,
}

/// What to say when the stream is lost, given the map held.
pub fn stream_lost_message(held: &HealthMap) -> &'static str {
    if held.received() {
        "health-map stream lost; routing on the last map"
    } else {
        "control plane unreachable and no health map yet; not listening"
    }
}

pub async fn run(
    cfg: SubscribeConfig,
    tx: watch::Sender<Arc<HealthMap>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut next = 0usize;
    loop {
        let url = &cfg.endpoints[next % cfg.endpoints.len()];
        let result = tokio::select! {
            r = stream(url, &cfg, &tx, &metrics, &mut backoff) => r,
            () = shutdown.cancelled() => return,
        };
        metrics.stream_connected.store(0, Relaxed);
        let e = result.err().unwrap_or_else(|| "stream ended".into());
        let held = Arc::clone(&tx.borrow());
        if held.received() {
            warn!(endpoint = %url, error = %e, epoch = held.epoch, revision = held.revision, "{}", stream_lost_message(&held));
        } else {
            warn!(endpoint = %url, error = %e, "{}", stream_lost_message(&held));
        }
        next += 1;
        let delay = backoff.next_delay(rand::rng().random_range(0.0..1.0));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn stream(
    url: &str,
    cfg: &SubscribeConfig,
    tx: &watch::Sender<Arc<HealthMap>>,
    metrics: &Metrics,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // Offer the map held (from any replica of the same store, or the
    // cache): a replica that still has that revision answers with a delta.
    let (resume_epoch, resume_revision) = {
        let held = tx.borrow();
        (held.epoch, held.revision)
    };
    let mut updates = HealthMapServiceClient::new(channel)
        .subscribe(pb::SubscribeRequest {
            pools: cfg.pools.clone(),
            proxy_id: cfg.proxy_id.clone(),
            labels: Default::default(),
            resume_revision,
            resume_epoch,
        })
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let mut first = true;
    // A chunked update is assembled here and published when complete.
    let mut staging: Option<HealthMap> = None;
    loop {
        let msg = updates
            .message()
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .ok_or("stream closed by the control plane")?;
        let pools = msg
            .pools
            .iter()
            .map(PoolUpdate::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("invalid update: {e}"))?;
        if first {
            first = false;
            metrics.stream_connected.store(1, Relaxed);
            backoff.reset();
            if msg.snapshot {
                info!(endpoint = %url, revision = msg.revision, pools = pools.len(), "health-map snapshot received");
            } else {
                info!(endpoint = %url, from = resume_revision, revision = msg.revision, "health-map stream resumed with a delta");
            }
        }
        let mut map = if msg.snapshot {
            // A snapshot replaces everything held: the control plane only
            // sends one once it has loaded all facts, so it is complete.
            HealthMap::default()
        } else {
            staging.take().unwrap_or_else(|| (**tx.borrow()).clone())
        };
        map.apply(&pools);
        map.retain(&cfg.pools);
        map.revision = msg.revision;
        map.epoch = msg.epoch;
        if msg.more {
            // Never route on half an update: wait for the rest.
            staging = Some(map);
            continue;
        }
        metrics.observe_update(&pools);
        metrics.map_revision.store(map.revision, Relaxed);
        let map = Arc::new(map);
        // Routing gets the new map first; persisting (with fsync) follows
        // off the runtime threads.
        tx.send_replace(Arc::clone(&map));
        if let Some(dir) = cfg.state_dir.clone() {
            let saved = tokio::task::spawn_blocking(move || cache::save(&dir, &map)).await;
            if let Ok(Err(e)) = saved {
                warn!(error = %e, "persisting the health map failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losing_the_stream_without_a_map_says_there_is_none() {
        let none = HealthMap::default();
        assert_eq!(
            stream_lost_message(&none),
            "control plane unreachable and no health map yet; not listening"
        );
        let held = HealthMap {
            epoch: 3,
            revision: 9,
            ..HealthMap::default()
        };
        assert_eq!(
            stream_lost_message(&held),
            "health-map stream lost; routing on the last map"
        );
    }
}
