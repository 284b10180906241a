//! The health-map subscription: a task that holds a `Subscribe` stream to
//! one of the configured control-plane endpoints (failing over with jittered
//! backoff) and publishes each new map into a `watch` channel. Routing reads
//! the channel and never waits on the network. When the stream is lost the
//! last map stays published — fail static — until a new stream delivers a
//! snapshot. Messages are folded into maps by [`crate::assemble`], which
//! also decides which pools are stale after a store epoch change.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use trackwire_connect::Failover;
use trackwire_core::{HealthMap, PoolUpdate};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::health_map_service_client::HealthMapServiceClient;

use crate::assemble::{Assembler, Held, Message};
use crate::cache;
use crate::metrics::Metrics;

pub struct SubscribeConfig {
    /// Control-plane URLs, tried in turn.
    pub control_plane: Vec<String>,
    pub pools: Vec<String>,
    pub proxy_id: String,
    pub state_dir: Option<PathBuf>,
    pub tls: Option<trackwire_transport::Tls>,
}

/// Where the subscription publishes: the map routing reads, and its stale
/// pools (for `/readyz`).
pub struct Publish {
    pub map: watch::Sender<Arc<HealthMap>>,
    pub stale: watch::Sender<BTreeSet<String>>,
}

/// Publishing the map alone (tests and tools that do not need the stale set).
impl From<watch::Sender<Arc<HealthMap>>> for Publish {
    fn from(map: watch::Sender<Arc<HealthMap>>) -> Self {
        Publish {
            map,
            stale: watch::Sender::new(BTreeSet::new()),
        }
    }
}

impl Publish {
    fn held(&self) -> Held {
        Held {
            map: Arc::clone(&self.map.borrow()),
            stale: self.stale.borrow().clone(),
        }
    }
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
    publish: impl Into<Publish>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let publish = publish.into();
    let mut failover = Failover::new(&cfg.control_plane);
    loop {
        let url = failover.next_url();
        let mut established = false;
        let result = tokio::select! {
            r = stream(&url, &cfg, &publish, &metrics, &mut established) => r,
            () = shutdown.cancelled() => return,
        };
        if metrics.stream_connected.set(0) == 1 {
            metrics
                .map_current_at_ms
                .store(trackwire_core::time::now_ms(), Relaxed);
        }
        let e = result.err().unwrap_or_else(|| "stream ended".into());
        let held = Arc::clone(&publish.map.borrow());
        if held.received() {
            warn!(endpoint = %url, error = %e, epoch = held.epoch, revision = held.revision, "{}", stream_lost_message(&held));
        } else {
            warn!(endpoint = %url, error = %e, "{}", stream_lost_message(&held));
        }
        if !failover.pause(established.into(), &shutdown).await {
            return;
        }
    }
}

async fn stream(
    url: &str,
    cfg: &SubscribeConfig,
    publish: &Publish,
    metrics: &Metrics,
    established: &mut bool,
) -> Result<(), String> {
    let channel = trackwire_connect::channel(url, cfg.tls.as_ref()).await?;
    // Offer the map held (from any replica of the same store, or the
    // cache): a replica that still has that revision answers with a delta.
    let (resume_epoch, resume_revision) = {
        let held = publish.map.borrow();
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
    let mut assembler = Assembler::new(cfg.pools.clone());
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
            metrics.stream_connected.set(1);
            *established = true;
            if msg.snapshot {
                info!(endpoint = %url, epoch = msg.epoch, revision = msg.revision, pools = pools.len(), "health-map snapshot received");
            } else {
                info!(endpoint = %url, from = resume_revision, revision = msg.revision, "health-map stream resumed with a delta");
            }
        }
        metrics.observe_update(&pools);
        let held = publish.held();
        let message = Message {
            epoch: msg.epoch,
            revision: msg.revision,
            snapshot: msg.snapshot,
            more: msg.more,
            pools,
        };
        // Never route on half an update: `None` until it is complete.
        let Some(new) = assembler.push(&held, message) else {
            continue;
        };
        report_stale(&held, &new, metrics);
        metrics.map_revision.set(new.map.revision);
        // Routing gets the new map first; persisting (with fsync) follows
        // off the runtime threads.
        publish.stale.send_replace(new.stale.clone());
        publish.map.send_replace(Arc::clone(&new.map));
        if let Some(dir) = cfg.state_dir.clone() {
            let saved =
                tokio::task::spawn_blocking(move || cache::save(&dir, &new.map, &new.stale)).await;
            if let Ok(Err(e)) = saved {
                warn!(error = %e, "persisting the health map failed");
            }
        }
    }
}

/// Logs pools becoming stale (loudly) or fresh again, and sets the gauge.
fn report_stale(old: &Held, new: &Held, metrics: &Metrics) {
    metrics.pools_stale.set(new.stale.len() as u64);
    let became: Vec<&String> = new.stale.difference(&old.stale).collect();
    let fresh: Vec<&String> = old.stale.difference(&new.stale).collect();
    if !became.is_empty() {
        warn!(
            pools = ?became,
            old_epoch = old.map.epoch,
            new_epoch = new.map.epoch,
            "the control plane's store has a new epoch without pools this proxy serves: \
             keeping their last known backends (flagged stale) instead of emptying them, \
             until the store has them again"
        );
    }
    if !fresh.is_empty() {
        info!(pools = ?fresh, epoch = new.map.epoch, "stale pools replaced by the control plane's current state");
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
