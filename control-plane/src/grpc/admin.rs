//! `AdminService`: apply and list pools, read derived health.
//!
//! `ApplyPools` validates the whole request first, then writes every pool in
//! one store transaction guarded by each key's revision: all pools are
//! written or none, and a concurrent writer makes it fail rather than
//! interleave.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trackwire_core::PoolSpec;
use trackwire_core::convert::{endpoint_to_pb, health_to_pb, pool_to_pb};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::admin_service_server::AdminService;

use crate::keys::{self, Keys};
use crate::state::{StateRx, ready};
use crate::store::{Compare, Op, Store};
use crate::subscribers::Subscribers;

use super::probe::store_status;

pub struct AdminSvc {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub state: StateRx,
    pub subscribers: Arc<Subscribers>,
    pub history: Arc<crate::state::MapHistory>,
    pub results: Arc<crate::results::Results>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Validates a request's pools into domain specs, naming the failing field.
pub fn validate_pools(pools: &[pb::PoolSpec]) -> Result<Vec<PoolSpec>, Status> {
    let specs = pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            PoolSpec::try_from(p)
                .map_err(|e| Status::invalid_argument(e.within(&format!("pools[{i}]")).to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let doc = trackwire_core::config::Document {
        pools: specs,
        listeners: vec![],
    };
    doc.validate().map_err(|e| {
        Status::invalid_argument(
            e.to_string()
                .replace("pool[", "pools[")
                .replace("backend[", "backends["),
        )
    })?;
    Ok(doc.pools)
}

/// Creates or replaces `specs` (already validated) in one transaction guarded
/// by each pool key's revision. Pools not named are left as they are.
pub async fn apply(
    store: &dyn Store,
    keys: &Keys,
    specs: &[PoolSpec],
    expected_revision: u64,
    dry_run: bool,
) -> Result<pb::ApplyPoolsResponse, Status> {
    let (existing, revision) = store.list(&keys.pools()).await.map_err(store_status)?;
    if expected_revision != 0
        && let Some(newer) = existing
            .iter()
            .find(|kv| kv.mod_revision > expected_revision)
    {
        return Err(Status::failed_precondition(format!(
            "expected_revision: pools changed since revision {expected_revision} ({} at revision {})",
            newer.key, newer.mod_revision
        )));
    }
    let mut resp = pb::ApplyPoolsResponse {
        revision,
        ..Default::default()
    };
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    for spec in specs {
        let key = keys.pool(&spec.name);
        let value = keys::encode_pool(pool_to_pb(spec));
        match existing.iter().find(|kv| kv.key == key) {
            Some(kv) if kv.value == value => resp.unchanged.push(spec.name.clone()),
            Some(kv) => {
                compares.push(Compare::ModRevision(key.clone(), kv.mod_revision));
                ops.push(Op::Put {
                    key,
                    value,
                    lease: None,
                });
                resp.updated.push(spec.name.clone());
            }
            None => {
                compares.push(Compare::Absent(key.clone()));
                ops.push(Op::Put {
                    key,
                    value,
                    lease: None,
                });
                resp.created.push(spec.name.clone());
            }
        }
    }
    if !ops.is_empty() && !dry_run {
        let r = store.txn(compares, ops).await.map_err(store_status)?;
        if !r.succeeded {
            return Err(Status::aborted(
                "pools changed concurrently; nothing was written, apply again",
            ));
        }
        resp.revision = r.revision;
    }
    Ok(resp)
}

#[tonic::async_trait]
impl AdminService for AdminSvc {
    async fn apply_pools(
        &self,
        request: Request<pb::ApplyPoolsRequest>,
    ) -> Result<Response<pb::ApplyPoolsResponse>, Status> {
        let req = request.into_inner();
        let specs = validate_pools(&req.pools)?;
        let resp = apply(
            self.store.as_ref(),
            &self.keys,
            &specs,
            req.expected_revision,
            req.dry_run,
        )
        .await?;
        Ok(Response::new(resp))
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
        for (i, p) in req.pools.iter().enumerate() {
            trackwire_core::model::validate_name(p)
                .map_err(|e| Status::invalid_argument(format!("pools[{i}]: {e}")))?;
        }
        let mut state = self.state.clone();
        let snap = ready(&mut state)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;
        // Resume: replay from the map at `from_revision` when it is still kept.
        let mut last = (req.from_revision != 0)
            .then(|| self.history.get(snap.derived.map.epoch, req.from_revision))
            .flatten()
            .unwrap_or_else(|| Arc::clone(&snap.derived.map));
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
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
                let events =
                    crate::events::between(&last, &snap.derived.map, &snap.facts.admin, &req.pools);
                for e in events {
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                last = Arc::clone(&snap.derived.map);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delete_pool(
        &self,
        request: Request<pb::DeletePoolRequest>,
    ) -> Result<Response<pb::DeletePoolResponse>, Status> {
        let name = request.into_inner().name;
        trackwire_core::model::validate_name(&name)
            .map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        let key = self.keys.pool(&name);
        let Some(kv) = self.store.get(&key).await.map_err(store_status)? else {
            return Err(Status::not_found(format!("pool {name:?} does not exist")));
        };
        // The pool and everything kept about it, in one transaction.
        let mut ops = vec![Op::Delete(key.clone())];
        for prefix in [
            self.keys.damping_prefix(&name),
            self.keys.admin_prefix(&name),
        ] {
            let (kvs, _) = self.store.list(&prefix).await.map_err(store_status)?;
            ops.extend(kvs.into_iter().map(|kv| Op::Delete(kv.key)));
        }
        let r = self
            .store
            .txn(vec![Compare::ModRevision(key, kv.mod_revision)], ops)
            .await
            .map_err(store_status)?;
        if !r.succeeded {
            return Err(Status::aborted(
                "the pool changed concurrently; nothing was deleted",
            ));
        }
        Ok(Response::new(pb::DeletePoolResponse {
            revision: r.revision,
        }))
    }

    async fn set_backend_state(
        &self,
        request: Request<pb::SetBackendStateRequest>,
    ) -> Result<Response<pb::SetBackendStateResponse>, Status> {
        let req = request.into_inner();
        if req.reason.len() > 256 {
            return Err(Status::invalid_argument("reason: at most 256 bytes"));
        }
        if req.set_by.len() > 128 {
            return Err(Status::invalid_argument("set_by: at most 128 bytes"));
        }
        let state = pb::AdminState::try_from(req.state).map_err(|_| {
            Status::invalid_argument(format!("state: invalid admin state {}", req.state))
        })?;
        let mut st = self.state.clone();
        let snap = ready(&mut st)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;
        let exists = snap
            .facts
            .pools
            .get(&req.pool)
            .is_some_and(|p| p.backends.iter().any(|b| b.name == req.backend));
        if !exists {
            return Err(Status::not_found(format!(
                "backend {}/{} does not exist",
                req.pool, req.backend
            )));
        }
        let key = self.keys.admin(&req.pool, &req.backend);
        let revision = if state == pb::AdminState::Unspecified {
            self.store.delete(&key).await.map_err(store_status)?
        } else {
            let value = keys::encode_admin(pb::StoredAdmin {
                schema: keys::SCHEMA,
                state: state as i32,
                reason: req.reason,
                set_by: req.set_by,
                at_ms: crate::grpc::probe::now_ms(),
            });
            self.store
                .put(&key, value, None)
                .await
                .map_err(store_status)?
        };
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
                backends.push(pb::BackendHealth {
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
