//! `ProbeService.Connect`: one bidirectional session per agent.
//!
//! The first message is `AgentHello`. The session grants a store lease, writes
//! the agent key and every verdict the agent holds bound to that lease (one
//! transaction), then: streams the agent's assignment whenever it changes,
//! writes each reported verdict transition, and keeps the lease alive while
//! heartbeats arrive. When the stream ends the lease is left to expire (TTL)
//! rather than revoked, so an agent failing over to another replica keeps its
//! votes counted throughout.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};
use trackwire_core::convert::{check_to_pb, health_from_pb};
use trackwire_core::model::validate_name;
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::probe_service_server::ProbeService;

use crate::derive::{PoolDerived, Target};
use crate::keys::{self, Keys};
use crate::metrics::Metrics;
use crate::state::{StateRx, ready};
use crate::store::{LeaseId, Op, Store, StoreError};

pub struct ProbeSvc {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub state: StateRx,
    pub metrics: Arc<Metrics>,
    pub agent_ttl: Duration,
    pub results: Arc<crate::results::Results>,
    pub shutdown: CancellationToken,
}

pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Invalid(m) => Status::invalid_argument(m),
        other => Status::unavailable(other.to_string()),
    }
}

fn validate_verdict(v: &pb::Verdict, path: &str) -> Result<(), Status> {
    validate_name(&v.pool).map_err(|e| Status::invalid_argument(format!("{path}.pool: {e}")))?;
    validate_name(&v.backend)
        .map_err(|e| Status::invalid_argument(format!("{path}.backend: {e}")))?;
    health_from_pb(v.state, &format!("{path}.state"))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if v.reason.len() > 256 {
        return Err(Status::invalid_argument(format!(
            "{path}.reason: at most 256 bytes"
        )));
    }
    Ok(())
}

fn target_to_pb(t: &Target) -> pb::CheckTarget {
    pb::CheckTarget {
        pool: t.pool.clone(),
        backend: t.backend.clone(),
        address: t.address.clone(),
        check: Some(check_to_pb(&t.check)),
    }
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ProbeService for ProbeSvc {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<ConnectStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no AgentHello within 10s"))??;
        let Some(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be an AgentHello",
            ));
        };
        uuid::Uuid::parse_str(&hello.agent_id)
            .map_err(|e| Status::invalid_argument(format!("hello.agent_id: not a UUID ({e})")))?;
        if hello.zone.len() > 63 {
            return Err(Status::invalid_argument("hello.zone: at most 63 bytes"));
        }
        for (i, v) in hello.verdicts.iter().enumerate() {
            validate_verdict(v, &format!("hello.verdicts[{i}]"))?;
        }
        let mut state = self.state.clone();
        ready(&mut state)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;

        let lease = self
            .store
            .grant_lease(self.agent_ttl)
            .await
            .map_err(store_status)?;
        let mut ops = vec![Op::Put {
            key: self.keys.agent(&hello.agent_id),
            value: keys::encode_agent(pb::StoredAgent {
                schema: keys::SCHEMA,
                agent_id: hello.agent_id.clone(),
                zone: hello.zone.clone(),
                address: peer.clone(),
                connected_ms: now_ms(),
            }),
            lease: Some(lease),
        }];
        for v in &hello.verdicts {
            ops.push(Op::Put {
                key: self.keys.verdict(&hello.agent_id, &v.pool, &v.backend),
                value: keys::encode_verdict(v.clone()),
                lease: Some(lease),
            });
        }
        self.store.txn(vec![], ops).await.map_err(store_status)?;
        self.metrics
            .verdict_writes
            .fetch_add(hello.verdicts.len() as u64, Relaxed);
        info!(agent = %hello.agent_id, zone = %hello.zone, %peer, verdicts = hello.verdicts.len(), "agent connected");

        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            store: Arc::clone(&self.store),
            keys: self.keys.clone(),
            metrics: Arc::clone(&self.metrics),
            agent: hello.agent_id.clone(),
            lease,
            ttl: self.agent_ttl,
            results: Arc::clone(&self.results),
        };
        let span = info_span!("agent_session", agent = %hello.agent_id);
        let shutdown = self.shutdown.clone();
        tokio::spawn(session.run(inbound, state, tx, shutdown).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Session {
    store: Arc<dyn Store>,
    keys: Keys,
    metrics: Arc<Metrics>,
    agent: String,
    lease: LeaseId,
    ttl: Duration,
    results: Arc<crate::results::Results>,
}

impl Session {
    async fn run(
        self,
        mut inbound: Streaming<pb::AgentMessage>,
        mut state: StateRx,
        tx: mpsc::Sender<Result<pb::ControlMessage, Status>>,
        shutdown: CancellationToken,
    ) {
        self.metrics.agent_sessions.fetch_add(1, Relaxed);
        let mut keepalive = tokio::time::interval(self.ttl / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent: Option<Vec<Target>> = None;
        // Per-pool derivations seen last: a new snapshot that leaves this
        // agent's targets in every pool alone costs pointer comparisons.
        let mut last_pools: BTreeMap<String, Arc<PoolDerived>> = BTreeMap::new();
        // Mark the current state as unseen so the first assignment goes out at once.
        state.mark_changed();
        let end: Result<(), Status> = loop {
            tokio::select! {
                msg = tokio::time::timeout(self.ttl, inbound.message()) => {
                    match msg {
                        Err(_) => break Err(Status::deadline_exceeded("no heartbeat within the agent TTL")),
                        Ok(Err(e)) => break Err(e),
                        Ok(Ok(None)) => break Ok(()),
                        Ok(Ok(Some(m))) => {
                            if let Err(e) = self.handle(m, &state).await {
                                break Err(e);
                            }
                        }
                    }
                }
                _ = keepalive.tick() => {
                    if let Err(e) = self.store.keep_alive(self.lease).await {
                        break Err(store_status(e));
                    }
                }
                changed = state.changed() => {
                    if changed.is_err() {
                        break Err(Status::unavailable("control plane shutting down"));
                    }
                    let snap = state.borrow_and_update().clone();
                    let Some(snap) = snap else { continue };
                    let pools = &snap.derived.pools;
                    let mine_changed = last_sent.is_none()
                        || pools.len() != last_pools.len()
                        || pools.iter().any(|(name, p)| {
                            last_pools.get(name).is_none_or(|q| {
                                !Arc::ptr_eq(p, q) && p.targets.get(&self.agent) != q.targets.get(&self.agent)
                            })
                        });
                    last_pools = pools.clone();
                    if !mine_changed {
                        continue;
                    }
                    let targets = snap.derived.targets_for(&self.agent);
                    if last_sent.as_ref() == Some(&targets) {
                        continue;
                    }
                    let msg = pb::ControlMessage {
                        msg: Some(pb::control_message::Msg::Assignment(pb::Assignment {
                            revision: snap.facts.revision,
                            targets: targets.iter().map(target_to_pb).collect(),
                        })),
                    };
                    debug!(targets = targets.len(), "sending assignment");
                    match tokio::time::timeout(self.ttl, tx.send(Ok(msg))).await {
                        Ok(Ok(())) => last_sent = Some(targets),
                        _ => break Err(Status::deadline_exceeded("agent not reading assignments")),
                    }
                }
                () = shutdown.cancelled() => break Err(Status::unavailable("control plane shutting down")),
            }
        };
        match &end {
            Ok(()) => info!("agent disconnected"),
            Err(e) => {
                warn!(code = ?e.code(), message = e.message(), "agent session ended");
                let _ = tx.try_send(Err(e.clone()));
            }
        }
        self.results.forget(&self.agent);
        self.metrics.agent_sessions.fetch_sub(1, Relaxed);
    }

    async fn handle(&self, m: pb::AgentMessage, state: &StateRx) -> Result<(), Status> {
        match m.msg {
            Some(pb::agent_message::Msg::Report(r)) => {
                for (i, v) in r.verdicts.iter().enumerate() {
                    validate_verdict(v, &format!("report.verdicts[{i}]"))?;
                }
                // Only verdicts about backends that exist are stored, so a
                // confused agent cannot fill the store with stray keys.
                let known: Vec<&pb::Verdict> = {
                    let snap = state.borrow();
                    r.verdicts
                        .iter()
                        .filter(|v| {
                            snap.as_ref().is_some_and(|s| {
                                s.facts
                                    .pools
                                    .get(&v.pool)
                                    .is_some_and(|p| p.backends.iter().any(|b| b.name == v.backend))
                            })
                        })
                        .collect()
                };
                if known.is_empty() {
                    return Ok(());
                }
                let ops = known
                    .iter()
                    .map(|v| Op::Put {
                        key: self.keys.verdict(&self.agent, &v.pool, &v.backend),
                        value: keys::encode_verdict((*v).clone()),
                        lease: Some(self.lease),
                    })
                    .collect();
                self.store.txn(vec![], ops).await.map_err(store_status)?;
                self.metrics
                    .verdict_writes
                    .fetch_add(known.len() as u64, Relaxed);
                Ok(())
            }
            Some(pb::agent_message::Msg::Heartbeat(h)) => {
                // Summaries of backends that exist only, with bounded strings.
                let snap = state.borrow().clone();
                let known: Vec<pb::ResultSummary> = h
                    .results
                    .into_iter()
                    .filter(|r| r.outcome.len() <= 8 && r.reason.len() <= 256)
                    .filter(|r| {
                        snap.as_ref().is_some_and(|s| {
                            s.facts
                                .pools
                                .get(&r.pool)
                                .is_some_and(|p| p.backends.iter().any(|b| b.name == r.backend))
                        })
                    })
                    .collect();
                self.results.update(&self.agent, known);
                Ok(())
            }
            Some(pb::agent_message::Msg::Hello(_)) => Err(Status::invalid_argument(
                "AgentHello may only be the first message",
            )),
            None => Err(Status::invalid_argument("empty AgentMessage")),
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
