//! `HealthMapService.Subscribe`: a snapshot of the requested pools (or a
//! delta from the revision the proxy resumes at, when this replica still
//! has it), then deltas. Each subscriber holds only the last map it was
//! sent; when its stream can take another message it gets the diff to the
//! current map, so a slow proxy skips intermediate states and costs at most
//! one map of memory, never a queue of changes.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span};
use trackwire_core::HealthMap;
use trackwire_core::convert::{endpoint_to_pb, pool_update_to_pb};
use trackwire_core::map::wants;
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::health_map_service_server::HealthMapService;

use crate::metrics::Metrics;
use crate::state::{MapHistory, StateRx, ready};
use crate::subscribers::Subscribers;
use trackwire_core::time::now_ms;

pub struct HealthMapSvc {
    pub state: StateRx,
    pub metrics: Arc<Metrics>,
    pub history: Arc<MapHistory>,
    pub subscribers: Arc<Subscribers>,
    pub snapshot_permits: Arc<Semaphore>,
    pub shutdown: CancellationToken,
}

/// Checks a `SubscribeRequest` before a subscriber is registered: pool
/// names, a bounded proxy id, at most 32 labels. Pure, so the fuzz harness
/// calls it as the service does.
pub fn validate_subscribe(req: &pb::SubscribeRequest) -> Result<(), Status> {
    super::validate_pool_filter(&req.pools)?;
    if req.proxy_id.len() > 253 {
        return Err(Status::invalid_argument("proxy_id: at most 253 bytes"));
    }
    if req.labels.len() > 32 {
        return Err(Status::invalid_argument("labels: at most 32"));
    }
    // Kept in the subscriber registry: bounded like Kubernetes labels.
    for (k, v) in &req.labels {
        if k.is_empty() || k.len() > 63 || v.len() > 253 {
            return Err(Status::invalid_argument(format!(
                "labels[{:?}]: keys 1 to 63 bytes, values at most 253",
                k.chars().take(63).collect::<String>()
            )));
        }
    }
    Ok(())
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::HealthMapUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl HealthMapService for HealthMapSvc {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let peer = super::peer_addr(&request);
        let caller = super::caller(&request);
        let req = request.into_inner();
        if let Some(name) = super::bound_name(&caller)
            && req.proxy_id != name
        {
            return Err(Status::permission_denied(format!(
                "proxy_id {:?}: the certificate {caller} may subscribe only as {name:?}",
                req.proxy_id
            )));
        }
        validate_subscribe(&req)?;
        let mut state = self.state.clone();
        // Never answer from a partial view: an empty snapshot would make
        // proxies drop every backend (the reconnect race of Envoy's #13072).
        ready(&mut state)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;
        // Resume from the proxy's map when this replica still has that revision.
        let base = (req.resume_revision != 0)
            .then(|| self.history.get(req.resume_epoch, req.resume_revision))
            .flatten();
        let id = self.subscribers.add(pb::SubscriberInfo {
            proxy_id: req.proxy_id.clone(),
            peer,
            pools: req.pools.clone(),
            labels: req.labels.clone(),
            connected_ms: now_ms(),
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel(1);
        let span = info_span!("subscriber", proxy = %req.proxy_id, resumed = base.is_some());
        let metrics = Arc::clone(&self.metrics);
        let subscribers = Arc::clone(&self.subscribers);
        let permits = Arc::clone(&self.snapshot_permits);
        let shutdown = self.shutdown.clone();
        tokio::spawn(
            async move {
                metrics.subscribers.inc();
                let stream = SubscriberStream {
                    id,
                    pools: req.pools,
                    tx,
                    metrics: &metrics,
                    subscribers: &subscribers,
                    snapshot_permits: &permits,
                };
                stream.run(base, state, shutdown).await;
                subscribers.remove(id);
                metrics.subscribers.dec();
                debug!("subscriber gone");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Endpoints per message, roughly: a chunk closes at the first pool boundary past it.
pub const CHUNK_ENDPOINTS: usize = 1_000;

/// Splits updates into messages' worth of pools (always at least one
/// range, possibly empty). Wire conversion happens per chunk, when sent.
fn chunk(updates: &[trackwire_core::PoolUpdate]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, u) in updates.iter().enumerate() {
        if size >= CHUNK_ENDPOINTS {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += u.upserts.len() + u.removals.len() + 1;
    }
    out.push(start..updates.len());
    out
}

/// Subscribers streaming a snapshot at the same time (per replica).
pub const SNAPSHOT_PERMITS: usize = 32;
/// Longest a subscriber may take to receive its snapshot.
pub const SNAPSHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

enum Sent {
    /// Nothing to send: already up to date.
    Nothing,
    /// The subscriber went away (or shutdown).
    Gone,
    Bytes(usize),
}

struct SubscriberStream<'a> {
    id: u64,
    pools: Vec<String>,
    tx: mpsc::Sender<Result<pb::HealthMapUpdate, Status>>,
    metrics: &'a Metrics,
    subscribers: &'a Subscribers,
    snapshot_permits: &'a Semaphore,
}

impl SubscriberStream<'_> {
    async fn run(
        self,
        base: Option<Arc<HealthMap>>,
        mut state: StateRx,
        shutdown: CancellationToken,
    ) {
        // The map this subscriber has (shared, never copied: diffs filter by
        // pool). `None`: nothing sent yet, the first message is a snapshot.
        let mut sent: Option<Arc<HealthMap>> = base;
        let mut first = true;
        loop {
            let snap = state.borrow_and_update().clone();
            if let Some(snap) = snap {
                let current = &snap.derived.map;
                let outcome = match &sent {
                    None => {
                        // Snapshots are built chunk by chunk straight from the
                        // shared map, and only SNAPSHOT_PERMITS subscribers
                        // stream one at a time, so a thousand proxies
                        // reconnecting at once cost a bounded amount of memory.
                        // A subscriber too slow to take its snapshot in
                        // SNAPSHOT_TIMEOUT is dropped (it reconnects) rather
                        // than holding a permit.
                        let _permit = self.snapshot_permits.acquire().await;
                        tokio::time::timeout(
                            SNAPSHOT_TIMEOUT,
                            self.send_snapshot(current, &shutdown),
                        )
                        .await
                        .unwrap_or(Sent::Gone)
                    }
                    Some(prev) => {
                        let updates = current.diff_from(prev, &self.pools);
                        if updates.is_empty() && !first {
                            // Nothing for this subscriber's pools: it is up to date.
                            self.subscribers.synced(self.id, current.revision);
                            sent = Some(Arc::clone(current));
                            Sent::Nothing
                        } else {
                            let msgs = chunk(&updates).into_iter().map(|range| {
                                updates[range].iter().map(pool_update_to_pb).collect()
                            });
                            self.send_chunks(current, false, msgs, &shutdown).await
                        }
                    }
                };
                match outcome {
                    Sent::Nothing => {}
                    Sent::Gone => return,
                    Sent::Bytes(bytes) => {
                        first = false;
                        sent = Some(Arc::clone(current));
                        self.subscribers
                            .sent(self.id, current.revision, bytes, now_ms());
                    }
                }
            }
            tokio::select! {
                r = state.changed() => if r.is_err() { return },
                () = self.tx.closed() => return,
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Sends the whole map (this subscriber's pools) in chunks.
    async fn send_snapshot(&self, current: &HealthMap, shutdown: &CancellationToken) -> Sent {
        let mut chunks: Vec<Vec<&str>> = vec![Vec::new()];
        let mut size = 0;
        for (name, pool) in &current.pools {
            if !wants(&self.pools, name) {
                continue;
            }
            if size >= CHUNK_ENDPOINTS {
                chunks.push(Vec::new());
                size = 0;
            }
            size += pool.len() + 1;
            if let Some(last) = chunks.last_mut() {
                last.push(name);
            }
        }
        let msgs = chunks.into_iter().map(|names| {
            names
                .into_iter()
                .map(|name| pb::PoolUpdate {
                    pool: name.to_string(),
                    upserts: current.pools[name].values().map(endpoint_to_pb).collect(),
                    removals: Vec::new(),
                    removed: false,
                })
                .collect()
        });
        self.send_chunks(current, true, msgs, shutdown).await
    }

    /// Sends one update as messages, built lazily one at a time.
    async fn send_chunks(
        &self,
        current: &HealthMap,
        snapshot: bool,
        msgs: impl ExactSizeIterator<Item = Vec<pb::PoolUpdate>>,
        shutdown: &CancellationToken,
    ) -> Sent {
        let last = msgs.len().saturating_sub(1);
        let mut bytes = 0;
        for (i, pools) in msgs.enumerate() {
            let msg = pb::HealthMapUpdate {
                revision: current.revision,
                snapshot: snapshot && i == 0,
                pools,
                epoch: current.epoch,
                more: i < last,
            };
            bytes += msg.encoded_len();
            // Waits while the subscriber is slow; changes meanwhile are
            // coalesced into the next diff.
            let ok = tokio::select! {
                r = self.tx.send(Ok(msg)) => r.is_ok(),
                () = shutdown.cancelled() => false,
            };
            if !ok {
                return Sent::Gone;
            }
        }
        self.metrics.map_updates_sent.inc();
        self.metrics.map_bytes_sent.inc_by(bytes as u64);
        Sent::Bytes(bytes)
    }
}
