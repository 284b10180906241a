//! Records each backend's last decided state as a fact, and bounds how long
//! a stale one is trusted.
//!
//! Runs on every replica, like the damper. When what the live verdicts
//! decide for a backend differs from its `decisions/{pool}/{backend}` record
//! (state or target fingerprint), it writes the record by compare-and-set;
//! its content follows from the facts, so replicas racing each other write
//! the same thing once. Derivation falls back to the record when a
//! backend's verdicts vanish (agents' leases lapsing during a control-plane
//! or store outage, no live agent), so absence of evidence is not failure.
//!
//! **The bound.** A replica notes when it first sees a backend stale. After
//! `stale_max` (control-plane flag `--stale-max`, default 15 minutes; `0`
//! trusts stale states without bound) it deletes the record, and the pool's
//! `initial_state` applies from then on, as for a backend never decided.
//! A replica restart restarts its count, so a stale state is trusted for at
//! least `stale_max` after the last replica to start. Stale backends are
//! exported (`trackwire_backends_stale`, `trackwire_stale_max_seconds`) and
//! shown with their age by `trackwire get health` and `describe`.
//!
//! It also deletes records (decisions, admin overrides, damping) of
//! backends that no longer exist, which an interrupted `apply` may leave.

use std::collections::BTreeMap;
use std::sync::Arc;
use trackwire_core::time::now_ms;

use parking_lot::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trackwire_core::HealthState;
use trackwire_core::convert::health_to_pb;
use trackwire_proto::v1 as pb;

use crate::keys::{self, Keys};
use crate::state::{Snapshot, StateRx, next_change};
use crate::store::{Compare, Op, Store, batch};

/// Default trust for a stale state.
pub const DEFAULT_STALE_MAX: Duration = Duration::from_secs(15 * 60);

/// State changes kept per backend in its decision record.
pub const HISTORY_LEN: usize = 16;

/// When this replica first saw each stale backend, and the bound.
#[derive(Debug, Default)]
pub struct StaleClock {
    since: Mutex<BTreeMap<(String, String), u64>>,
    /// `None`: trusted without bound.
    pub max: Option<Duration>,
}

impl StaleClock {
    pub fn new(max: Option<Duration>) -> Self {
        StaleClock {
            since: Mutex::default(),
            max,
        }
    }

    /// (stale since, trusted until; 0 when unbounded) for a stale backend.
    pub fn get(&self, pool: &str, backend: &str) -> Option<(u64, u64)> {
        let since = *self.lock().get(&(pool.to_string(), backend.to_string()))?;
        let until = self
            .max
            .map_or(0, |m| since.saturating_add(m.as_millis() as u64));
        Some((since, until))
    }

    /// How many backends are stale, and the oldest one's start (unix ms).
    pub fn summary(&self) -> (usize, Option<u64>) {
        let g = self.lock();
        (g.len(), g.values().min().copied())
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeMap<(String, String), u64>> {
        self.since.lock()
    }
}

pub async fn run(
    store: Arc<dyn Store>,
    keys: Keys,
    mut state: StateRx,
    clock: Arc<StaleClock>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut written = Written::default();
    loop {
        let snap = state.borrow_and_update().clone();
        let next = match snap {
            Some(snap) => step(store.as_ref(), &keys, &snap, &clock, &mut written, now_ms()).await,
            None => None,
        };
        let (n, oldest) = clock.summary();
        metrics.backends_stale.set(n as u64);
        metrics
            .stale_oldest_since_ms
            .store(oldest.unwrap_or(0), Relaxed);
        if !next_change(&mut state, next, &shutdown).await {
            return;
        }
    }
}

/// Decisions this replica wrote that its facts may not show yet: (state,
/// fingerprint, revision written). Without it a record written a moment
/// ago would be written again, its compare would fail, and with it every
/// other record of the chunk.
#[derive(Debug, Default)]
pub struct Written(BTreeMap<(String, String), (HealthState, u64, u64)>);

/// One decision record to write, and what it says.
struct RecordWrite {
    id: (String, String),
    state: HealthState,
    /// The state before (recorded, else the pool's initial state), for the log.
    from: Option<HealthState>,
    /// Votes and reason, for the log.
    why: Why,
    fingerprint: u64,
    op: Op,
    compare: Compare,
}

/// What a transition's log line and history entry say about its votes.
#[derive(Debug, Default)]
struct Why {
    up: usize,
    down: usize,
    ignored: usize,
    reason: String,
    /// The agents whose counted votes were for the new state.
    agents: Vec<String>,
}

impl Why {
    fn of(detail: &crate::derive::BackendDetail, state: HealthState) -> Why {
        let mut why = Why::default();
        for v in &detail.votes {
            if !v.counted {
                why.ignored += 1;
            } else if v.verdict.state == HealthState::Up {
                why.up += 1;
            } else {
                why.down += 1;
            }
        }
        let for_it = || {
            detail
                .votes
                .iter()
                .filter(move |v| v.counted && v.verdict.state == state)
        };
        why.reason = for_it()
            .next()
            .map(|v| v.verdict.reason.clone())
            .unwrap_or_default();
        why.agents = for_it().map(|v| v.agent.clone()).collect();
        why
    }

    fn transition(&self, at_ms: u64, from: HealthState, to: HealthState) -> pb::Transition {
        pb::Transition {
            at_ms,
            from: health_to_pb(from),
            to: health_to_pb(to),
            votes_up: self.up as u32,
            votes_down: self.down as u32,
            votes_ignored: self.ignored as u32,
            reason: self.reason.clone(),
            agents: self.agents.clone(),
        }
    }
}

/// Makes the writes one snapshot calls for; returns when the next stale
/// state runs out of trust, if any.
pub async fn step(
    store: &dyn Store,
    keys: &Keys,
    snap: &Snapshot,
    clock: &StaleClock,
    written: &mut Written,
    now_ms: u64,
) -> Option<u64> {
    let facts = &snap.facts;
    written.0.retain(|_, (_, _, rev)| *rev > facts.revision);
    let mut writes: Vec<RecordWrite> = Vec::new();
    let mut expired: Vec<(Op, Compare)> = Vec::new();
    // Named in one log line each, not one per backend (a fleet's worth).
    let mut became_stale: Vec<String> = Vec::new();
    let mut expired_names: Vec<String> = Vec::new();
    let mut stale_now: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut next: Option<u64> = None;
    let previous = clock.lock().clone();
    for (pool, derived) in &snap.derived.pools {
        for (backend, detail) in &derived.details {
            let id = (pool.clone(), backend.clone());
            let record = facts.decisions.get(&id);
            let key = keys.decision(pool, backend);
            let compare = match record {
                Some(r) => Compare::ModRevision(key.clone(), r.mod_revision),
                None => Compare::Absent(key.clone()),
            };
            if let Some((state, at)) = detail.live {
                let same =
                    record.is_some_and(|r| r.state == state && r.fingerprint == detail.fingerprint);
                let in_flight = written
                    .0
                    .get(&id)
                    .is_some_and(|(s, fp, _)| *s == state && *fp == detail.fingerprint);
                if !same && !in_flight {
                    // Never decided: the pool's initial state was in force.
                    let from = record
                        .map(|r| r.state)
                        .or_else(|| facts.pools.get(pool).map(|p| p.initial_state));
                    let why = Why::of(detail, state);
                    let mut history = record.map(|r| r.history.clone()).unwrap_or_default();
                    let mut down_transitions = record.map_or(0, |r| r.down_transitions);
                    if from == Some(HealthState::Up) && state == HealthState::Down {
                        down_transitions += 1;
                    }
                    if let Some(from) = from.filter(|f| *f != state) {
                        history.push(why.transition(at, from, state));
                        let over = history.len().saturating_sub(HISTORY_LEN);
                        history.drain(..over);
                    }
                    let value = keys::encode_decision(pb::StoredDecision {
                        schema: keys::SCHEMA,
                        state: health_to_pb(state),
                        fingerprint: detail.fingerprint,
                        at_ms: at,
                        history,
                        down_transitions,
                    });
                    writes.push(RecordWrite {
                        id: id.clone(),
                        state,
                        from,
                        why,
                        fingerprint: detail.fingerprint,
                        op: Op::Put {
                            key,
                            value,
                            lease: None,
                        },
                        compare,
                    });
                }
                continue;
            }
            if !detail.stale {
                continue;
            }
            let since = previous.get(&id).copied().unwrap_or(now_ms);
            if !previous.contains_key(&id) {
                became_stale.push(format!("{pool}/{backend}"));
            }
            if let Some(max) = clock.max {
                let until = since.saturating_add(max.as_millis() as u64);
                if now_ms >= until {
                    expired_names.push(format!("{pool}/{backend}"));
                    expired.push((Op::Delete(key), compare));
                    continue;
                }
                next = Some(next.map_or(until, |n: u64| n.min(until)));
            }
            stale_now.insert(id, since);
        }
    }
    *clock.lock() = stale_now;
    if !became_stale.is_empty() {
        warn!(
            backends = became_stale.len(),
            first = ?&became_stale[..became_stale.len().min(5)],
            "no live verdict; keeping their last decided states (stale)"
        );
    }
    if !expired_names.is_empty() {
        warn!(
            backends = expired_names.len(),
            first = ?&expired_names[..expired_names.len().min(5)],
            stale_max_s = clock.max.map_or(0, |m| m.as_secs()),
            "stale states no longer trusted; the pools' initial state applies"
        );
    }

    // Records of backends that no longer exist (an interrupted apply).
    let exists = |pool: &str, backend: &str| facts.has_backend(pool, backend);
    let mut orphans: Vec<Op> = Vec::new();
    for (pool, backend) in facts.decisions.keys() {
        if !exists(pool, backend) {
            orphans.push(Op::Delete(keys.decision(pool, backend)));
        }
    }
    for (pool, backend) in facts.admin.keys() {
        if !exists(pool, backend) {
            orphans.push(Op::Delete(keys.admin(pool, backend)));
        }
    }
    for (pool, backend) in facts.damping.keys() {
        if !exists(pool, backend) {
            orphans.push(Op::Delete(keys.damping(pool, backend)));
        }
    }

    if !writes.is_empty() {
        let n = writes.len();
        for chunk in batch::chunks_by(writes, |w| batch::op_bytes(&w.op)) {
            let mut ids = Vec::with_capacity(chunk.len());
            let (ops, compares): (Vec<Op>, Vec<Compare>) = chunk
                .into_iter()
                .map(|w| {
                    ids.push((w.id, w.state, w.from, w.why, w.fingerprint));
                    (w.op, w.compare)
                })
                .unzip();
            match store.txn(compares, ops).await {
                Ok(r) if r.succeeded => {
                    for ((pool, backend), state, from, why, fp) in ids {
                        // Once per transition in the fleet: the replica whose
                        // compare-and-set wrote the record logs it.
                        if from.is_some_and(|f| f != state) {
                            info!(
                                %pool, %backend,
                                from = from.map_or("-", HealthState::as_str),
                                to = state.as_str(),
                                votes_up = why.up, votes_down = why.down, votes_ignored = why.ignored,
                                reason = %why.reason,
                                revision = r.revision,
                                "backend state changed"
                            );
                        }
                        written.0.insert((pool, backend), (state, fp, r.revision));
                    }
                }
                Ok(_) => debug!("decision records changed meanwhile (another replica wrote them)"),
                Err(e) => {
                    warn!(error = %e, "writing decision records failed; retrying on the next change")
                }
            }
        }
        debug!(records = n, "decision records written");
    }
    for chunk in batch::chunks_by(expired, |(op, _)| batch::op_bytes(op)) {
        let (ops, compares): (Vec<Op>, Vec<Compare>) = chunk.into_iter().unzip();
        if let Err(e) = store.txn(compares, ops).await {
            warn!(error = %e, "removing expired decision records failed; retrying on the next change");
        }
    }
    if !orphans.is_empty() {
        info!(
            records = orphans.len(),
            "removing records of backends that no longer exist"
        );
        if let Err(e) = batch::txn_chunked(store, orphans, |_, _| Vec::new()).await {
            warn!(error = %e, "removing orphaned records failed; retrying on the next change");
        }
    }
    next
}
