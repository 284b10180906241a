//! `AdminService`: apply and list pools, read derived health.
//!
//! `ApplyPools` validates the whole request first, then writes through
//! [`crate::pools`] (chunked within etcd's limits, each pool guarded by its
//! key's revision); domain errors become statuses here, at the edge.

use std::sync::Arc;
use tracing::{Instrument, info};

use tonic::{Request, Response, Status};
use trackwire_core::convert::{admin_from_pb, endpoint_to_pb, health_to_pb, pool_to_pb};
use trackwire_core::{AdminState, PoolSpec};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::admin_service_server::AdminService;

use crate::keys::Keys;
use crate::state::{StateRx, ready};
use crate::store::Store;
use crate::subscribers::Subscribers;
use crate::writes::WriteError;

use super::probe::store_status;

pub struct AdminSvc {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub state: StateRx,
    pub subscribers: Arc<Subscribers>,
    pub history: Arc<crate::state::MapHistory>,
    pub results: Arc<crate::results::Results>,
    pub stale: Arc<crate::recorder::StaleClock>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Validates a request's pools into domain specs, naming the failing field
/// with the wire's names (`pools[1].backends[0].address`).
pub fn validate_pools(pools: &[pb::PoolSpec]) -> Result<Vec<PoolSpec>, Status> {
    use trackwire_core::FieldNames;
    let invalid = |e: trackwire_core::FieldError| Status::invalid_argument(e.to_string());
    let list = FieldNames::Wire.pools();
    let specs = pools
        .iter()
        .enumerate()
        .map(|(i, p)| PoolSpec::try_from(p).map_err(|e| invalid(e.within(&format!("{list}[{i}]")))))
        .collect::<Result<Vec<_>, _>>()?;
    trackwire_core::model::validate_pools(&specs, FieldNames::Wire).map_err(invalid)?;
    Ok(specs)
}

/// The override a `SetBackendStateRequest` asks for: `None` (unspecified)
/// clears it.
pub fn requested_state(state: i32) -> Result<Option<AdminState>, Status> {
    match pb::AdminState::try_from(state) {
        Ok(pb::AdminState::Unspecified) => Ok(None),
        Ok(_) => admin_from_pb(state, "state")
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string())),
        Err(_) => Err(Status::invalid_argument(format!(
            "state: invalid admin state {state}"
        ))),
    }
}

/// Maps a write's domain error to its gRPC status.
pub fn write_status(e: WriteError) -> Status {
    match e {
        e @ WriteError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        WriteError::NotFound(m) => Status::not_found(m),
        WriteError::Stale(m) => Status::failed_precondition(m),
        WriteError::Conflict(m) | WriteError::Partial(m) => Status::aborted(m),
        WriteError::Store(e) => store_status(e),
    }
}

#[tonic::async_trait]
impl AdminService for AdminSvc {
    async fn apply_pools(
        &self,
        request: Request<pb::ApplyPoolsRequest>,
    ) -> Result<Response<pb::ApplyPoolsResponse>, Status> {
        let (caller, peer) = (super::caller(&request), super::peer_addr(&request));
        let req = request.into_inner();
        let specs = validate_pools(&req.pools)?;
        let dry_run = req.dry_run;
        // Run to completion even if the client goes away: a large apply is
        // several transactions, and stopping between them helps nobody.
        let store = Arc::clone(&self.store);
        let keys = self.keys.clone();
        let applied = tokio::spawn(
            async move {
                crate::writes::apply(
                    store.as_ref(),
                    &keys,
                    &specs,
                    req.expected_revision,
                    req.dry_run,
                )
                .await
            }
            .in_current_span(),
        )
        .await
        .map_err(|e| Status::internal(format!("apply task: {e}")))?
        .map_err(write_status)?;
        if !dry_run && (!applied.created.is_empty() || !applied.updated.is_empty()) {
            info!(%caller, %peer, created = ?applied.created, updated = ?applied.updated, revision = applied.revision, "pools applied");
        }
        Ok(Response::new(pb::ApplyPoolsResponse {
            revision: applied.revision,
            created: applied.created,
            updated: applied.updated,
            unchanged: applied.unchanged,
        }))
    }

    async fn get_pool(
        &self,
        request: Request<pb::GetPoolRequest>,
    ) -> Result<Response<pb::GetPoolResponse>, Status> {
        let name = request.into_inner().name;
        let mut st = self.state.clone();
        let snap = ready(&mut st)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;
        let pool = snap
            .facts
            .pools
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("pool {name:?} does not exist")))?;
        Ok(Response::new(pb::GetPoolResponse {
            revision: snap.facts.revision,
            pool: Some(pool_to_pb(pool)),
        }))
    }

    type WatchEventsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let req = request.into_inner();
        super::validate_pool_filter(&req.pools)?;
        let mut state = self.state.clone();
        let snap = ready(&mut state)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;
        // Resume: replay from the map at `from_revision`, which must still be kept.
        let mut last = if req.from_revision == 0 || req.from_revision == snap.derived.map.revision {
            Arc::clone(&snap.derived.map)
        } else if req.from_revision > snap.derived.map.revision {
            return Err(Status::out_of_range(format!(
                "from_revision: {} is ahead of this replica's map (revision {})",
                req.from_revision, snap.derived.map.revision
            )));
        } else {
            self.history
                .as_of(snap.derived.map.epoch, req.from_revision)
                .ok_or_else(|| {
                    Status::out_of_range(format!(
                        "from_revision: revision {} is no longer kept (this replica keeps the last {} map revisions{}); watch without --from-revision to start from now",
                        req.from_revision,
                        crate::state::HISTORY_LEN,
                        self.history
                            .oldest(snap.derived.map.epoch)
                            .map(|r| format!(", oldest {r}"))
                            .unwrap_or_default()
                    ))
                })?
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let shutdown = self.shutdown.clone();
        tokio::spawn(
            async move {
                state.mark_changed();
                loop {
                    tokio::select! {
                        r = state.changed() => if r.is_err() { return },
                        () = tx.closed() => return,
                        () = shutdown.cancelled() => return,
                    }
                    let Some(snap) = state.borrow_and_update().clone() else {
                        continue;
                    };
                    let events = crate::events::between(
                        &last,
                        &snap.derived.map,
                        &snap.facts.admin,
                        &req.pools,
                    );
                    for e in events {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    last = Arc::clone(&snap.derived.map);
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delete_pool(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        let (caller, peer) = (super::caller(&request), super::peer_addr(&request));
        let name = request.into_inner().name;
        trackwire_core::model::validate_name(&name)
            .map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        let store = Arc::clone(&self.store);
        let keys = self.keys.clone();
        let pool = name.clone();
        let revision = tokio::spawn(
            async move { crate::writes::delete(store.as_ref(), &keys, &pool).await }
                .in_current_span(),
        )
        .await
        .map_err(|e| Status::internal(format!("delete task: {e}")))?
        .map_err(write_status)?;
        info!(%caller, %peer, pool = %name, revision, "pool deleted");
        Ok(Response::new(pb::DeletePoolResponse { revision }))
    }

    async fn set_backend_state(
        &self,
        request: Request<pb::SetBackendStateRequest>,
    ) -> Result<Response<pb::SetBackendStateResponse>, Status> {
        let (caller, peer) = (super::caller(&request), super::peer_addr(&request));
        let req = request.into_inner();
        let state = requested_state(req.state)?;
        let revision = crate::writes::set_admin_state(
            self.store.as_ref(),
            &self.keys,
            &req.pool,
            &req.backend,
            state,
            crate::writes::OverrideNote {
                reason: req.reason.clone(),
                // A certificate names who did it; the client's own claim is kept beside it.
                set_by: match (&caller, req.set_by.is_empty()) {
                    (trackwire_transport::Caller::Peer(id), true) => id.name.clone(),
                    (trackwire_transport::Caller::Peer(id), false) => {
                        format!("{} ({})", req.set_by, id.name)
                    }
                    _ => req.set_by.clone(),
                },
            },
        )
        .await
        .map_err(write_status)?;
        info!(%caller, %peer, pool = %req.pool, backend = %req.backend, state = ?state, reason = %req.reason, revision, "admin state set");
        Ok(Response::new(pb::SetBackendStateResponse { revision }))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let mut st = self.state.clone();
        let snap = ready(&mut st)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;
        let agents = snap
            .facts
            .agents
            .iter()
            .map(|(id, a)| pb::AgentInfo {
                agent_id: id.clone(),
                zone: a.zone.clone(),
                address: a.address.clone(),
                assigned: snap
                    .derived
                    .pools
                    .values()
                    .filter_map(|p| p.targets.get(id))
                    .map(|t| t.len() as u32)
                    .sum(),
                suspect: snap.derived.suspects.contains(id),
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse {
            revision: snap.derived.map.revision,
            agents,
        }))
    }

    async fn list_subscribers(
        &self,
        _request: Request<pb::ListSubscribersRequest>,
    ) -> Result<Response<pb::ListSubscribersResponse>, Status> {
        let revision = self
            .state
            .borrow()
            .as_ref()
            .map(|s| s.derived.map.revision)
            .unwrap_or(0);
        Ok(Response::new(pb::ListSubscribersResponse {
            revision,
            subscribers: self.subscribers.list(revision),
        }))
    }

    async fn list_pools(
        &self,
        _request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let mut state = self.state.clone();
        let snap = ready(&mut state)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;
        Ok(Response::new(pb::ListPoolsResponse {
            revision: snap.facts.revision,
            pools: snap.facts.pools.values().map(pool_to_pb).collect(),
        }))
    }

    async fn get_health(
        &self,
        request: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::GetHealthResponse>, Status> {
        let pool = request.into_inner().pool;
        let mut state = self.state.clone();
        let snap = ready(&mut state)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;
        if !pool.is_empty() && !snap.derived.map.pools.contains_key(&pool) {
            return Err(Status::not_found(format!("pool {pool:?} does not exist")));
        }
        let mut backends = Vec::new();
        for (name, endpoints) in &snap.derived.map.pools {
            if !pool.is_empty() && *name != pool {
                continue;
            }
            for e in endpoints.values() {
                let detail = snap.derived.detail(name, &e.backend);
                let (stale_since_ms, stale_expires_ms) = if e.stale {
                    self.stale.get(name, &e.backend).unwrap_or_default()
                } else {
                    (0, 0)
                };
                backends.push(pb::BackendHealth {
                    stale_since_ms,
                    stale_expires_ms,
                    history: snap
                        .facts
                        .decisions
                        .get(&(name.clone(), e.backend.clone()))
                        .map(|d| d.history.clone())
                        .unwrap_or_default(),
                    pool: name.clone(),
                    endpoint: Some(endpoint_to_pb(e)),
                    assigned_agents: detail.map(|d| d.assigned.clone()).unwrap_or_default(),
                    votes: detail
                        .map(|d| {
                            d.votes
                                .iter()
                                .map(|v| pb::AgentVote {
                                    agent_id: v.agent.clone(),
                                    state: health_to_pb(v.verdict.state),
                                    reason: v.verdict.reason.clone(),
                                    since_ms: v.verdict.since_ms,
                                    suspect: !v.counted,
                                    last_result: self.results.get(&v.agent, name, &e.backend),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        Ok(Response::new(pb::GetHealthResponse {
            revision: snap.derived.map.revision,
            backends,
            suspect_agents: snap.derived.suspects.iter().cloned().collect(),
        }))
    }
}
