//! The control plane's metrics, registered in the component's registry by
//! [`register`]:
//!
//! - [`Metrics`]: counters and gauges the control plane updates as it goes
//!   (`prometheus-client` types: one atomic each, no lock), and per-operation
//!   store latency and errors ([`StoreOps`], filled by [`crate::store::Metered`]);
//! - [`Fleet`]: series read from the current snapshot at each scrape — one
//!   per pool, backend, live agent or proxy id, named like HAProxy's
//!   exporter (`trackwire_server_status{pool,backend,state}` as
//!   `haproxy_server_status{proxy,server,state}`) plus what only trackwire
//!   has: votes, suspect agents, verdict age and staleness;
//! - gRPC calls by service, method and code ([`crate::grpc::calls`]) and the
//!   transport's TLS and connection metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use trackwire_core::histogram::Histogram;
use trackwire_core::metrics::{
    Collector, DescriptorEncoder, Registry, age_seconds, counters, gauges, histograms,
};
use trackwire_core::{AdminState, HealthState};

use crate::derive::Derived;
use crate::facts::Facts;
use crate::state::StateRx;
use crate::subscribers::Subscribers;

type U64Gauge = Gauge<u64, AtomicU64>;

#[derive(Debug, Default)]
pub struct Metrics {
    pub revision: U64Gauge,
    pub pools: U64Gauge,
    pub backends_up: U64Gauge,
    pub backends_down: U64Gauge,
    pub agents_live: U64Gauge,
    pub agents_suspect: U64Gauge,
    pub agent_sessions: U64Gauge,
    pub subscribers: U64Gauge,
    pub verdict_writes: Counter,
    pub map_updates_sent: Counter,
    pub map_bytes_sent: Counter,
    /// 1 while the store answers (probed every 2 s), else 0.
    pub store_up: U64Gauge,
    /// Backends whose state is the last decided one, without live verdicts.
    pub backends_stale: U64Gauge,
    /// When the oldest stale state became stale (unix ms; 0: none).
    pub stale_oldest_since_ms: AtomicU64,
    /// How long a stale state is trusted, in seconds (0: without bound).
    pub stale_max_seconds: U64Gauge,
    /// Verdicts an agent sent about backends not assigned to it (dropped).
    pub verdicts_rejected: Counter,
    /// The gRPC port's connection counters.
    pub grpc_listener: Arc<trackwire_transport::ListenerStats>,
    pub store_ops: StoreOps,
    /// gRPC calls by service, method and code.
    pub calls: crate::grpc::calls::Calls,
    /// xDS (ADS) streams connected to this replica.
    pub xds_streams: U64Gauge,
    /// xDS responses sent and rejected (NACKed), by resource type
    /// (indexed by `xds::Kind`).
    pub xds_responses: [Counter; 4],
    pub xds_nacks: [Counter; 4],
}

/// A store operation, for [`StoreOps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Get,
    List,
    Put,
    Delete,
    Txn,
    Watch,
    GrantLease,
    KeepAlive,
    Revoke,
    Revision,
}

impl StoreOp {
    pub const ALL: [StoreOp; 10] = [
        StoreOp::Get,
        StoreOp::List,
        StoreOp::Put,
        StoreOp::Delete,
        StoreOp::Txn,
        StoreOp::Watch,
        StoreOp::GrantLease,
        StoreOp::KeepAlive,
        StoreOp::Revoke,
        StoreOp::Revision,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::List => "list",
            StoreOp::Put => "put",
            StoreOp::Delete => "delete",
            StoreOp::Txn => "txn",
            StoreOp::Watch => "watch",
            StoreOp::GrantLease => "grant_lease",
            StoreOp::KeepAlive => "keep_alive",
            StoreOp::Revoke => "revoke",
            StoreOp::Revision => "revision",
        }
    }
}

/// Latency and errors of each store operation (a fixed set, so no lock).
#[derive(Debug, Default)]
pub struct StoreOps {
    latency: [Histogram; StoreOp::ALL.len()],
    errors: [AtomicU64; StoreOp::ALL.len()],
}

impl StoreOps {
    pub fn observe(&self, op: StoreOp, took: std::time::Duration, ok: bool) {
        let i = op as usize;
        self.latency[i].observe(took);
        if !ok {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    pub fn errors(&self, op: StoreOp) -> u64 {
        self.errors[op as usize].load(Relaxed)
    }

    pub fn count(&self, op: StoreOp) -> u64 {
        self.latency[op as usize].count()
    }
}

impl Metrics {
    pub fn observe_map(&self, d: &Derived, f: &Facts) {
        let (mut up, mut down) = (0, 0);
        for pool in d.map.pools.values() {
            for e in pool.values() {
                match e.state {
                    HealthState::Up => up += 1,
                    HealthState::Down => down += 1,
                }
            }
        }
        self.revision.set(d.map.revision);
        self.pools.set(d.map.pools.len() as u64);
        self.backends_up.set(up);
        self.backends_down.set(down);
        self.agents_live.set(f.agents.len() as u64);
        self.agents_suspect.set(d.suspects.len() as u64);
    }
}

/// Registers every control-plane metric in `registry`: `metrics`' own, the
/// fleet's (read from `state` and `subscribers` at each scrape), the gRPC
/// port's and, when serving with TLS, the material's.
pub fn register(
    registry: &mut Registry,
    metrics: &Arc<Metrics>,
    state: StateRx,
    subscribers: Arc<Subscribers>,
    tls: Option<&trackwire_transport::Tls>,
) {
    let m = metrics;
    for (name, help, g) in [
        (
            "trackwire_store_up",
            "1 while the store answers this replica, else 0",
            &m.store_up,
        ),
        (
            "trackwire_backends_stale",
            "Backends kept at their last decided state without live verdicts",
            &m.backends_stale,
        ),
        (
            "trackwire_stale_max_seconds",
            "How long a stale state is trusted (0: without bound)",
            &m.stale_max_seconds,
        ),
        (
            "trackwire_store_revision",
            "Store revision of the served health map",
            &m.revision,
        ),
        ("trackwire_pools", "Pools in the health map", &m.pools),
        (
            "trackwire_backends_up",
            "Backends derived UP",
            &m.backends_up,
        ),
        (
            "trackwire_backends_down",
            "Backends derived DOWN",
            &m.backends_down,
        ),
        (
            "trackwire_agents_live",
            "Agents with a live session lease",
            &m.agents_live,
        ),
        (
            "trackwire_agents_suspect",
            "Agents whose votes are ignored as suspected partitioned checkers",
            &m.agents_suspect,
        ),
        (
            "trackwire_agent_sessions",
            "Agent sessions connected to this replica",
            &m.agent_sessions,
        ),
        (
            "trackwire_subscribers",
            "Health-map subscribers (proxies' streams) connected to this replica",
            &m.subscribers,
        ),
        (
            "trackwire_xds_streams",
            "xDS (ADS) streams of Envoy and gRPC clients connected to this replica",
            &m.xds_streams,
        ),
    ] {
        registry.register(name, help, g.clone());
    }
    for (name, help, c) in [
        (
            "trackwire_verdicts_rejected",
            "Verdicts dropped because they were not about the sending agent's assignment",
            &m.verdicts_rejected,
        ),
        (
            "trackwire_verdict_writes",
            "Verdict transitions written to the store",
            &m.verdict_writes,
        ),
        (
            "trackwire_map_updates_sent",
            "Health-map messages sent to subscribers",
            &m.map_updates_sent,
        ),
        (
            "trackwire_map_bytes_sent",
            "Encoded bytes of health-map messages sent to subscribers",
            &m.map_bytes_sent,
        ),
    ] {
        registry.register(name, help, c.clone());
    }
    registry.register_collector(Box::new(Fleet {
        metrics: Arc::clone(metrics),
        state,
        subscribers,
    }));
    trackwire_transport::metrics::register_listener(registry, &metrics.grpc_listener);
    if let Some(tls) = tls {
        trackwire_transport::metrics::register_tls(registry, tls);
    }
}

/// Series read from the current snapshot at each scrape.
pub struct Fleet {
    metrics: Arc<Metrics>,
    state: StateRx,
    subscribers: Arc<Subscribers>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fleet")
    }
}

/// HAProxy's server states, as `haproxy_server_status` names them.
const STATES: [&str; 4] = ["UP", "DOWN", "DRAIN", "MAINT"];

fn haproxy_state(admin: AdminState, health: HealthState) -> &'static str {
    match (admin, health) {
        (AdminState::Maint, _) => "MAINT",
        (AdminState::Drain, _) => "DRAIN",
        (AdminState::Ready, HealthState::Up) => "UP",
        (AdminState::Ready, HealthState::Down) => "DOWN",
    }
}

impl Collector for Fleet {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let now = trackwire_core::time::now_ms();
        let m = &self.metrics;
        let oldest = m.stale_oldest_since_ms.load(Relaxed);
        let none: [(&str, &str); 0] = [];
        gauges(
            &mut e,
            "trackwire_stale_oldest_seconds",
            "Age of the oldest stale backend state (0: none).",
            [(
                none,
                if oldest == 0 {
                    0.0
                } else {
                    age_seconds(oldest, now)
                },
            )],
        )?;
        let ops = &m.store_ops;
        histograms(
            &mut e,
            "trackwire_store_operation_seconds",
            "Store operation latency, by operation.",
            StoreOp::ALL
                .iter()
                .map(|op| ([("op", op.name())], &ops.latency[*op as usize])),
        )?;
        counters(
            &mut e,
            "trackwire_store_errors",
            "Store operations that failed, by operation.",
            StoreOp::ALL
                .iter()
                .map(|op| ([("op", op.name())], ops.errors(*op))),
        )?;
        m.calls.encode(&mut e)?;
        let kinds = crate::xds::Kind::ALL;
        counters(
            &mut e,
            "trackwire_xds_responses",
            "xDS responses sent, by resource type.",
            kinds
                .iter()
                .map(|k| ([("type", k.name())], m.xds_responses[*k as usize].get())),
        )?;
        counters(
            &mut e,
            "trackwire_xds_nacks",
            "xDS responses a client rejected (NACK), by resource type; the client keeps its last accepted version.",
            kinds
                .iter()
                .map(|k| ([("type", k.name())], m.xds_nacks[*k as usize].get())),
        )?;
        let snap = self.state.borrow().clone();
        let Some(snap) = snap else {
            return Ok(());
        };
        self.encode_fleet(&mut e, &snap, now)
    }
}

impl Fleet {
    fn encode_fleet(
        &self,
        e: &mut DescriptorEncoder,
        snap: &crate::state::Snapshot,
        now: u64,
    ) -> std::fmt::Result {
        let map = &snap.derived.map;
        let facts = &snap.facts;
        let backends = || {
            map.pools
                .iter()
                .flat_map(|(pool, eps)| eps.values().map(move |ep| (pool.as_str(), ep)))
        };
        let labels = |pool: &'_ str, ep: &'_ trackwire_core::Endpoint| {
            [("pool", pool.to_owned()), ("backend", ep.backend.clone())]
        };
        gauges(
            e,
            "trackwire_server_status",
            "Each backend's state as HAProxy names it, one series per state (UP, DOWN, DRAIN, MAINT), exactly one at 1.",
            backends().flat_map(|(pool, ep)| {
                let now_state = haproxy_state(ep.admin_state, ep.state);
                STATES.iter().map(move |s| {
                    (
                        [
                            ("pool", pool.to_owned()),
                            ("backend", ep.backend.clone()),
                            ("state", (*s).to_owned()),
                        ],
                        u64::from(*s == now_state),
                    )
                })
            }),
        )?;
        counters(
            e,
            "trackwire_server_check_up_down",
            "UP to DOWN transitions the fleet decided for each backend (HAProxy's chkdown), kept in the store.",
            backends().map(|(pool, ep)| {
                let n = facts
                    .decisions
                    .get(&(pool.to_owned(), ep.backend.clone()))
                    .map_or(0, |d| d.down_transitions);
                (labels(pool, ep), n)
            }),
        )?;
        gauges(
            e,
            "trackwire_server_check_last_change_seconds",
            "Seconds since each backend's last state change (since it was first decided when it never changed).",
            backends().filter_map(|(pool, ep)| {
                let last = facts
                    .decisions
                    .get(&(pool.to_owned(), ep.backend.clone()))
                    .and_then(|d| d.history.last().map(|t| t.at_ms))
                    .unwrap_or(ep.decided_at_ms);
                (last != 0).then(|| (labels(pool, ep), age_seconds(last, now)))
            }),
        )?;
        gauges(
            e,
            "trackwire_server_verdict_age_seconds",
            "Seconds since the counted verdicts decided each backend's state in force (it grows while a backend is stale).",
            backends()
                .filter(|(_, ep)| ep.decided_at_ms != 0)
                .map(|(pool, ep)| (labels(pool, ep), age_seconds(ep.decided_at_ms, now))),
        )?;
        gauges(
            e,
            "trackwire_server_stale",
            "1 while a backend is kept at its last decided state without live verdicts.",
            backends().map(|(pool, ep)| (labels(pool, ep), u64::from(ep.stale))),
        )?;
        gauges(
            e,
            "trackwire_server_votes_up",
            "Counted votes for UP, per backend.",
            backends().map(|(pool, ep)| (labels(pool, ep), ep.votes_up)),
        )?;
        gauges(
            e,
            "trackwire_server_votes_down",
            "Counted votes for DOWN, per backend.",
            backends().map(|(pool, ep)| (labels(pool, ep), ep.votes.saturating_sub(ep.votes_up))),
        )?;
        gauges(
            e,
            "trackwire_server_votes_counted",
            "Votes counted toward each backend's state (suspect agents' votes are not).",
            backends().map(|(pool, ep)| (labels(pool, ep), ep.votes)),
        )?;
        gauges(
            e,
            "trackwire_backend_active_servers",
            "Non-backup backends that take new connections (UP and not drained or in maintenance), per pool, like haproxy_backend_active_servers.",
            map.pools.iter().map(|(pool, eps)| {
                let n = eps
                    .values()
                    .filter(|ep| ep.routable() && !ep.backup)
                    .count() as u64;
                ([("pool", pool.as_str())], n)
            }),
        )?;
        gauges(
            e,
            "trackwire_backend_backup_servers",
            "Backup backends that take new connections, per pool, like haproxy_backend_backup_servers.",
            map.pools.iter().map(|(pool, eps)| {
                let n = eps.values().filter(|ep| ep.routable() && ep.backup).count() as u64;
                ([("pool", pool.as_str())], n)
            }),
        )?;
        gauges(
            e,
            "trackwire_agent_suspect",
            "1 for a live agent whose votes are ignored as a suspected partitioned checker.",
            facts.agents.keys().map(|agent| {
                (
                    [("agent", agent.as_str())],
                    u64::from(snap.derived.suspects.contains(agent)),
                )
            }),
        )?;
        // One series per proxy id (the fleet's size), never per connection
        // or peer port: the largest lag among a proxy id's subscriptions.
        let mut lag: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for s in self.subscribers.list(map.revision) {
            let l = lag.entry(s.proxy_id).or_default();
            *l = (*l).max(s.lag_revisions);
        }
        gauges(
            e,
            "trackwire_subscriber_lag_revisions",
            "Revisions the current map is ahead of what a proxy has (the largest over its subscriptions).",
            lag.iter().map(|(id, l)| ([("proxy_id", id.as_str())], *l)),
        )
    }
}
