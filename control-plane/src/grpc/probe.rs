//! `ProbeService.Connect`: one bidirectional session per agent.
//!
//! The first message is `AgentHello`. The session claims the agent id (one
//! live session per id: the same agent process may take its keys over when
//! failing over between replicas, another process with that id is refused
//! while the first one's registration lives), grants a store lease, and
//! writes the agent key and every verdict the agent holds bound to that
//! lease, in chunks within stock etcd's transaction limits. Then it streams
//! the agent's assignment whenever it changes, removes the agent's verdict
//! keys that are no longer about its assignment, writes each reported
//! verdict transition, and keeps the lease alive while heartbeats arrive.
//! Every write requires the agent key still at the revision the hello
//! wrote, and a session whose registration vanished or was taken over ends,
//! so its agent reconnects and re-registers instead of idling with no
//! assignment. When the stream ends the lease is left to expire (TTL) rather
//! than revoked, so an agent failing over to another replica keeps its votes
//! counted throughout.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use trackwire_core::time::now_ms;

use futures::{FutureExt, Stream};
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
use crate::keys::{self, KeyKind, Keys};
use crate::metrics::Metrics;
use crate::state::{StateRx, ready};
use crate::store::{Compare, LeaseId, Op, Store, StoreError, batch};
use trackwire_core::limits::MAX_VERDICTS_PER_HELLO;

pub struct ProbeSvc {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
    pub state: StateRx,
    pub metrics: Arc<Metrics>,
    pub agent_ttl: Duration,
    /// Messages one session may send per second (`--agent-reports-per-second`).
    pub reports_per_second: u32,
    pub results: Arc<crate::results::Results>,
    pub shutdown: CancellationToken,
}

pub fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Invalid(m) => Status::invalid_argument(m),
        other => Status::unavailable(other.to_string()),
    }
}

/// Checks one verdict an agent sent (names, state, reason size); `path`
/// names it in the error (`hello.verdicts[3]`).
pub fn validate_verdict(v: &pb::Verdict, path: &str) -> Result<(), Status> {
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

/// Checks an `AgentHello` before anything is written: a UUID agent id, a
/// bounded instance id and zone, at most [`MAX_VERDICTS_PER_HELLO`] valid
/// verdicts. Pure, so the fuzz harness calls it as the session does.
pub fn validate_hello(hello: &pb::AgentHello) -> Result<(), Status> {
    // The id is a store key part: the same rules as a certificate's name.
    trackwire_transport::identity::check_name(&hello.agent_id)
        .map_err(|e| Status::invalid_argument(format!("hello.agent_id: {e}")))?;
    if hello.instance_id.is_empty() || hello.instance_id.len() > 64 {
        return Err(Status::invalid_argument(
            "hello.instance_id: required, at most 64 bytes",
        ));
    }
    if hello.zone.len() > 63 {
        return Err(Status::invalid_argument("hello.zone: at most 63 bytes"));
    }
    if hello.verdicts.len() > MAX_VERDICTS_PER_HELLO {
        return Err(Status::invalid_argument(format!(
            "hello.verdicts: {} verdicts; at most {MAX_VERDICTS_PER_HELLO} per agent",
            hello.verdicts.len()
        )));
    }
    for (i, v) in hello.verdicts.iter().enumerate() {
        validate_verdict(v, &format!("hello.verdicts[{i}]"))?;
    }
    Ok(())
}

/// Checks every verdict of a report (the whole report is refused if one is invalid).
pub fn validate_report(r: &pb::VerdictReport) -> Result<(), Status> {
    for (i, v) in r.verdicts.iter().enumerate() {
        validate_verdict(v, &format!("report.verdicts[{i}]"))?;
    }
    Ok(())
}

/// The heartbeat results a session keeps: at most
/// [`MAX_VERDICTS_PER_HELLO`], with bounded strings, about backends that
/// `exists`.
pub fn heartbeat_results(
    results: Vec<pb::ResultSummary>,
    exists: impl Fn(&str, &str) -> bool,
) -> Vec<pb::ResultSummary> {
    results
        .into_iter()
        .take(MAX_VERDICTS_PER_HELLO)
        .filter(|r| r.outcome.len() <= 8 && r.reason.len() <= 256)
        .filter(|r| exists(&r.pool, &r.backend))
        .collect()
}

fn target_to_pb(t: &Target) -> pb::CheckTarget {
    pb::CheckTarget {
        pool: t.pool.clone(),
        backend: t.backend.clone(),
        address: t.address.clone(),
        check: Some(check_to_pb(&t.check)),
        fingerprint: t.fingerprint,
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
        let peer = super::peer_addr(&request);
        let caller = super::caller(&request);
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
        validate_hello(&hello)?;
        // With a certificate, the agent id is the certificate's name: one
        // agent cannot speak for another.
        if let Some(name) = super::bound_name(&caller)
            && hello.agent_id != name
        {
            warn!(%peer, claimed = %hello.agent_id, %caller, "refused an agent speaking for another agent id");
            return Err(Status::permission_denied(format!(
                "hello.agent_id {:?}: the certificate {caller} may speak only as agent {name:?}",
                hello.agent_id
            )));
        }
        let mut state = self.state.clone();
        let snap = ready(&mut state)
            .await
            .ok_or_else(|| Status::unavailable("control plane shutting down"))?;

        let agent_key = self.keys.agent(&hello.agent_id);
        // One live session per agent id: the same process (instance) may take
        // its keys over (it is failing over between replicas); another
        // process with the same id is refused while the session it would
        // orphan is alive (its key exists until its lease lapses).
        let claim = match self.store.get(&agent_key).await.map_err(store_status)? {
            Some(kv) => {
                let held = keys::decode_agent(&kv.value).unwrap_or_default();
                if held.instance_id != hello.instance_id {
                    warn!(agent = %hello.agent_id, %peer, holder = %held.address, "refused a second session for a live agent id");
                    return Err(Status::failed_precondition(format!(
                        "agent id {} has a live session from another process (instance {}, peer {}); \
                         refusing a second one until it ends and its lease lapses (a cloned state dir?)",
                        hello.agent_id, held.instance_id, held.address
                    )));
                }
                Compare::ModRevision(agent_key.clone(), kv.mod_revision)
            }
            None => Compare::Absent(agent_key.clone()),
        };

        let lease = self
            .store
            .grant_lease(self.agent_ttl)
            .await
            .map_err(store_status)?;
        // Kept alive from now on, by a task of its own: neither a long hello
        // (thousands of verdicts in chunks) nor a slow assignment send may
        // let the lease lapse.
        let keepalive = KeepAlive::start(Arc::clone(&self.store), lease, self.agent_ttl);
        let mut ops = vec![Op::Put {
            key: agent_key.clone(),
            value: keys::encode_agent(pb::StoredAgent {
                schema: keys::SCHEMA,
                agent_id: hello.agent_id.clone(),
                zone: hello.zone.clone(),
                address: peer.clone(),
                connected_ms: now_ms(),
                instance_id: hello.instance_id.clone(),
            }),
            lease: Some(lease),
        }];
        // Only verdicts about backends this agent checks — as assigned over
        // the live agents and itself — are stored: never about pools or
        // backends that do not exist, nor about another agent's backends.
        let mut written: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut latest: BTreeMap<(&str, &str), &pb::Verdict> = BTreeMap::new();
        for v in &hello.verdicts {
            latest.insert((&v.pool, &v.backend), v);
        }
        let checker = snap.facts.checker(&hello.agent_id, &hello.zone);
        let mut rejected = 0u64;
        for v in latest.into_values() {
            if !checker.checks(&v.pool, &v.backend) {
                rejected += 1;
                continue;
            }
            written.insert((v.pool.clone(), v.backend.clone()), v.fingerprint);
            ops.push(Op::Put {
                key: self.keys.verdict(&hello.agent_id, &v.pool, &v.backend),
                value: keys::encode_verdict(v.clone()),
                lease: Some(lease),
            });
        }
        // Within stock etcd's limits: the agent key and the first verdicts in
        // one transaction (the claim), the rest in chunks that each still
        // require the claim to hold.
        let mut owner_rev = 0;
        let result = batch::txn_chunked(self.store.as_ref(), ops, |i, rev| {
            if i == 0 {
                vec![claim.clone()]
            } else {
                if i == 1 {
                    owner_rev = rev;
                }
                vec![Compare::ModRevision(agent_key.clone(), owner_rev)]
            }
        })
        .await
        .map_err(store_status)?;
        if !result.succeeded {
            keepalive.stop();
            let _ = self.store.revoke(lease).await;
            return Err(Status::failed_precondition(format!(
                "agent id {}: another session claimed it meanwhile",
                hello.agent_id
            )));
        }
        let owner_rev = if result.chunks == 1 {
            result.revision
        } else {
            owner_rev
        };
        self.metrics.verdict_writes.inc_by(written.len() as u64);
        if rejected > 0 {
            self.metrics.verdicts_rejected.inc_by(rejected);
            warn!(agent = %hello.agent_id, rejected, "hello verdicts about backends not assigned to this agent were not stored");
        }
        info!(agent = %hello.agent_id, instance = %hello.instance_id, zone = %hello.zone, %peer, verdicts = written.len(), "agent connected");

        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            store: Arc::clone(&self.store),
            keys: self.keys.clone(),
            metrics: Arc::clone(&self.metrics),
            agent: hello.agent_id.clone(),
            zone: hello.zone.clone(),
            agent_key,
            owner_rev,
            lease,
            ttl: self.agent_ttl,
            results: Arc::clone(&self.results),
            written,
            assigned: None,
            keepalive,
            rate: Bucket::new(self.reports_per_second),
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
    zone: String,
    agent_key: String,
    /// The agent key's revision written by this session's hello: every write
    /// requires it unchanged, so a session that lost its claim writes nothing.
    owner_rev: u64,
    lease: LeaseId,
    ttl: Duration,
    results: Arc<crate::results::Results>,
    /// Verdict keys of this agent in the store → the fingerprint written.
    written: BTreeMap<(String, String), u64>,
    /// The last assignment sent: (pool, backend) → fingerprint.
    assigned: Option<BTreeMap<(String, String), u64>>,
    keepalive: KeepAlive,
    rate: Bucket,
}

/// A token bucket: `rate` per second, bursts of ten seconds' worth. An
/// agent over its rate is read more slowly (HTTP/2 flow control pushes back
/// on it); nothing is dropped.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(per_second: u32) -> Bucket {
        let rate = f64::from(per_second.max(1));
        Bucket {
            rate,
            burst: rate * 10.0,
            tokens: rate * 10.0,
            at: tokio::time::Instant::now(),
        }
    }

    async fn take(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens < 1.0 {
            tokio::time::sleep(Duration::from_secs_f64((1.0 - self.tokens) / self.rate)).await;
            self.tokens = 1.0;
            self.at = tokio::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Renews a session's lease every third of its TTL until stopped (or
/// dropped); `failed` is cancelled when the store refuses a renewal.
struct KeepAlive {
    task: tokio::task::JoinHandle<()>,
    failed: CancellationToken,
    error: Arc<parking_lot::Mutex<Option<StoreError>>>,
}

impl KeepAlive {
    fn start(store: Arc<dyn Store>, lease: LeaseId, ttl: Duration) -> Self {
        let failed = CancellationToken::new();
        let error = Arc::new(parking_lot::Mutex::new(None));
        let (f, e) = (failed.clone(), Arc::clone(&error));
        let task = tokio::spawn(
            async move {
                let mut tick = tokio::time::interval(ttl / 3);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(err) = store.keep_alive(lease).await {
                        *e.lock() = Some(err);
                        f.cancel();
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        KeepAlive {
            task,
            failed,
            error,
        }
    }

    fn stop(&self) {
        self.task.abort();
    }

    fn error(&self) -> Status {
        self.error
            .lock()
            .clone()
            .map(store_status)
            .unwrap_or_else(|| Status::unavailable("lease keep-alive stopped"))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    fn owner(&self) -> Vec<Compare> {
        vec![Compare::ModRevision(self.agent_key.clone(), self.owner_rev)]
    }

    fn lost_claim(&self) -> Status {
        Status::aborted(format!(
            "agent {}: this session no longer holds the agent's registration \
             (its lease lapsed or another session took it over); reconnect to re-register",
            self.agent
        ))
    }

    /// Writes `ops` in chunks while this session holds the agent's claim.
    async fn write(&self, ops: Vec<Op>) -> Result<(), Status> {
        let r = batch::txn_chunked(self.store.as_ref(), ops, |_, _| self.owner())
            .await
            .map_err(store_status)?;
        if r.succeeded {
            Ok(())
        } else {
            Err(self.lost_claim())
        }
    }

    /// Learns the agent's verdict keys left by earlier sessions, so keys the
    /// agent no longer holds are removed rather than left to a lease.
    async fn load_written(&mut self) -> Result<(), Status> {
        let prefix = self.keys.agent_verdicts(&self.agent);
        let (kvs, _) = self.store.list(&prefix).await.map_err(store_status)?;
        for kv in kvs {
            let KeyKind::Verdict { pool, backend, .. } = self.keys.parse(&kv.key) else {
                continue;
            };
            let fp = keys::decode_verdict(&kv.value)
                .map(|v| v.fingerprint)
                .unwrap_or(0);
            self.written
                .entry((pool.to_string(), backend.to_string()))
                .or_insert(fp);
        }
        Ok(())
    }

    /// Deletes this agent's verdict keys that are not about its assignment
    /// as it stands (pool or backend gone, moved to another agent, or made
    /// against an address or check that has since changed).
    async fn prune(&mut self) -> Result<(), Status> {
        let Some(assigned) = &self.assigned else {
            return Ok(());
        };
        let stale: Vec<(String, String)> = self
            .written
            .iter()
            .filter(|(k, fp)| assigned.get(*k) != Some(*fp))
            .map(|(k, _)| k.clone())
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let ops = stale
            .iter()
            .map(|(p, b)| Op::Delete(self.keys.verdict(&self.agent, p, b)))
            .collect();
        self.write(ops).await?;
        debug!(
            removed = stale.len(),
            "removed verdicts no longer about the assignment"
        );
        for k in stale {
            self.written.remove(&k);
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut inbound: Streaming<pb::AgentMessage>,
        mut state: StateRx,
        tx: mpsc::Sender<Result<pb::ControlMessage, Status>>,
        shutdown: CancellationToken,
    ) {
        self.metrics.agent_sessions.inc();
        let lease_failed = self.keepalive.failed.clone();
        let mut last_sent: Option<Vec<Target>> = None;
        // Per-pool derivations seen last: a new snapshot that leaves this
        // agent's targets in every pool alone costs pointer comparisons.
        let mut last_pools: BTreeMap<String, Arc<PoolDerived>> = BTreeMap::new();
        // Mark the current state as unseen so the first assignment goes out at once.
        state.mark_changed();
        let loaded = self.load_written().await;
        let end: Result<(), Status> = loop {
            if let Err(e) = &loaded {
                break Err(e.clone());
            }
            tokio::select! {
                msg = tokio::time::timeout(self.ttl, inbound.message()) => {
                    match msg {
                        Err(_) => break Err(Status::deadline_exceeded("no heartbeat within the agent TTL")),
                        Ok(Err(e)) => break Err(e),
                        Ok(Ok(None)) => break Ok(()),
                        Ok(Ok(Some(m))) => {
                            // Coalesce what has already arrived: an agent with
                            // thousands of transitions at once (after a blip)
                            // costs a few transactions, not one per report.
                            let mut msgs = vec![m];
                            let mut end = None;
                            while msgs.len() < 256 {
                                match inbound.message().now_or_never() {
                                    Some(Ok(Some(m))) => msgs.push(m),
                                    Some(Ok(None)) => { end = Some(Ok(())); break }
                                    Some(Err(e)) => { end = Some(Err(e)); break }
                                    None => break,
                                }
                            }
                            if let Err(e) = self.handle_all(msgs, &state).await {
                                break Err(e);
                            }
                            if let Some(end) = end {
                                break end;
                            }
                        }
                    }
                }
                () = lease_failed.cancelled() => break Err(self.keepalive.error()),
                changed = state.changed() => {
                    if changed.is_err() {
                        break Err(Status::unavailable("control plane shutting down"));
                    }
                    let snap = state.borrow_and_update().clone();
                    let Some(snap) = snap else { continue };
                    // A snapshot from before this session's registration
                    // would assign the agent nothing and prune the verdicts
                    // its hello just stored: wait for one that has it.
                    if snap.facts.revision < self.owner_rev {
                        continue;
                    }
                    // The registration this session wrote must still be the
                    // agent's: gone (lease lapsed) or rewritten (taken over)
                    // means the agent would sit with no assignment; end the
                    // session so it re-registers.
                    if snap.facts.revision >= self.owner_rev
                        && snap.facts.agents.get(&self.agent).is_none_or(|a| a.mod_revision != self.owner_rev)
                    {
                        break Err(self.lost_claim());
                    }
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
                        Ok(Ok(())) => {
                            self.assigned = Some(
                                targets
                                    .iter()
                                    .map(|t| ((t.pool.clone(), t.backend.clone()), t.fingerprint))
                                    .collect(),
                            );
                            last_sent = Some(targets);
                        }
                        _ => break Err(Status::deadline_exceeded("agent not reading assignments")),
                    }
                    if let Err(e) = self.prune().await {
                        break Err(e);
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
        self.metrics.agent_sessions.dec();
    }

    /// Handles messages in order, with all their reports merged into one.
    async fn handle_all(
        &mut self,
        msgs: Vec<pb::AgentMessage>,
        state: &StateRx,
    ) -> Result<(), Status> {
        let mut merged: Option<pb::VerdictReport> = None;
        for m in msgs {
            self.rate.take().await;
            match m.msg {
                Some(pb::agent_message::Msg::Report(r)) => match &mut merged {
                    Some(all) => all.verdicts.extend(r.verdicts),
                    None => merged = Some(r),
                },
                msg => self.handle(pb::AgentMessage { msg }, state).await?,
            }
        }
        match merged {
            Some(r) => {
                self.handle(
                    pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::Report(r)),
                    },
                    state,
                )
                .await
            }
            None => Ok(()),
        }
    }

    async fn handle(&mut self, m: pb::AgentMessage, state: &StateRx) -> Result<(), Status> {
        match m.msg {
            Some(pb::agent_message::Msg::Report(r)) => {
                validate_report(&r)?;
                // The latest verdict per backend (a transaction may name a key once).
                let mut latest: BTreeMap<(String, String), pb::Verdict> = BTreeMap::new();
                for v in r.verdicts {
                    latest.insert((v.pool.clone(), v.backend.clone()), v);
                }
                let r = pb::VerdictReport {
                    verdicts: latest.into_values().collect(),
                };
                // Only verdicts about this agent's assignment (or, before the
                // first one is sent, about backends that exist) are stored,
                // so a confused agent cannot fill the store with stray keys.
                let sent = r.verdicts.len();
                let known: Vec<pb::Verdict> = {
                    let snap = state.borrow();
                    // Before the first assignment: the one assignment would give
                    // (built once per report, not once per verdict).
                    let checker = snap
                        .as_ref()
                        .map(|s| s.facts.checker(&self.agent, &self.zone));
                    r.verdicts
                        .into_iter()
                        .filter(|v| match &self.assigned {
                            Some(a) => {
                                a.get(&(v.pool.clone(), v.backend.clone())) == Some(&v.fingerprint)
                            }
                            None => checker
                                .as_ref()
                                .is_some_and(|c| c.checks(&v.pool, &v.backend)),
                        })
                        .collect()
                };
                if known.len() < sent {
                    self.metrics
                        .verdicts_rejected
                        .inc_by((sent - known.len()) as u64);
                    debug!(
                        dropped = sent - known.len(),
                        "dropped verdicts not about this agent's assignment"
                    );
                }
                if known.is_empty() {
                    return Ok(());
                }
                let ops = known
                    .iter()
                    .map(|v| Op::Put {
                        key: self.keys.verdict(&self.agent, &v.pool, &v.backend),
                        value: keys::encode_verdict(v.clone()),
                        lease: Some(self.lease),
                    })
                    .collect();
                self.write(ops).await?;
                for v in &known {
                    self.written
                        .insert((v.pool.clone(), v.backend.clone()), v.fingerprint);
                }
                self.metrics.verdict_writes.inc_by(known.len() as u64);
                Ok(())
            }
            Some(pb::agent_message::Msg::Heartbeat(h)) => {
                // Summaries of backends that exist only, with bounded strings.
                let snap = state.borrow().clone();
                let known = heartbeat_results(h.results, |pool, backend| {
                    snap.as_ref()
                        .is_some_and(|s| s.facts.has_backend(pool, backend))
                });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A session may burst ten seconds' worth of messages, then is read at
    /// its rate.
    #[tokio::test(start_paused = true)]
    async fn report_rate_allows_a_burst_then_paces() {
        let mut b = Bucket::new(5);
        let t0 = tokio::time::Instant::now();
        for _ in 0..50 {
            b.take().await;
        }
        assert_eq!(t0.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            b.take().await;
        }
        let paced = t0.elapsed();
        assert!(
            paced >= Duration::from_millis(1990) && paced <= Duration::from_millis(2010),
            "10 more at 5/s take 2s, took {paced:?}"
        );
    }
}
