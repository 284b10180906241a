//! `HealthMapService.Subscribe`: a snapshot of the requested pools, then
//! deltas. Each subscriber holds only the last map it was sent; when its
//! stream can take another message it gets the diff to the current map, so a
//! slow proxy skips intermediate states and costs at most one map of memory.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info_span};
use trackwire_core::HealthMap;
use trackwire_core::convert::pool_update_to_pb;
use trackwire_core::model::validate_name;
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::health_map_service_server::HealthMapService;

use crate::metrics::Metrics;
use crate::state::{StateRx, ready};

pub struct HealthMapSvc {
    pub state: StateRx,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::HealthMapUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl HealthMapService for HealthMapSvc {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let req = request.into_inner();
        for (i, p) in req.pools.iter().enumerate() {
            validate_name(p).map_err(|e| Status::invalid_argument(format!("pools[{i}]: {e}")))?;
        }
        if req.proxy_id.len() > 253 {
            return Err(Status::invalid_argument("proxy_id: at most 253 bytes"));
        }
        let mut state = self.state.clone();
        // Never answer from a partial view: an empty snapshot would make
        // proxies drop every backend (the reconnect race Envoy's #13072 hit).
        ready(&mut state)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;
        let (tx, rx) = mpsc::channel(1);
        let span = info_span!("subscriber", proxy = %req.proxy_id);
        let metrics = Arc::clone(&self.metrics);
        let shutdown = self.shutdown.clone();
        tokio::spawn(
            async move {
                metrics.subscribers.fetch_add(1, Relaxed);
                stream_map(req.pools, state, tx, &metrics, shutdown).await;
                metrics.subscribers.fetch_sub(1, Relaxed);
                debug!("subscriber gone");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn stream_map(
    pools: Vec<String>,
    mut state: StateRx,
    tx: mpsc::Sender<Result<pb::HealthMapUpdate, Status>>,
    metrics: &Metrics,
    shutdown: CancellationToken,
) {
    let mut sent = HealthMap::default();
    let mut first = true;
    loop {
        let snap = state.borrow_and_update().clone();
        if let Some(snap) = snap {
            let current = &snap.derived.map;
            let updates = current.diff_from(&sent, &pools);
            if first || !updates.is_empty() {
                let msg = pb::HealthMapUpdate {
                    revision: current.revision,
                    snapshot: first,
                    pools: updates.iter().map(pool_update_to_pb).collect(),
                };
                // Waits while the subscriber is slow; changes meanwhile are
                // coalesced into the next diff.
                let sent_ok = tokio::select! {
                    r = tx.send(Ok(msg)) => r.is_ok(),
                    () = shutdown.cancelled() => false,
                };
                if !sent_ok {
                    return;
                }
                metrics.map_updates_sent.fetch_add(1, Relaxed);
                first = false;
                sent = current.clone();
                sent.retain(&pools);
            }
        }
        tokio::select! {
            r = state.changed() => if r.is_err() { return },
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        }
    }
}
