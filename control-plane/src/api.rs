//! `GET /api/v1/health`: the derived state as JSON, for scripts (and the
//! status page): every backend with its state, admin state, votes, each
//! assigned agent's vote and latest check, recent state changes; suspect
//! agents; subscribed proxies and their lag.
//!
//! Query parameters filter: `pool=NAME` (repeatable) and `state=up|down`
//! (repeatable). An unknown parameter or value is a 400 naming it.

use serde::Serialize;

use crate::results::Results;
use crate::state::Snapshot;
use crate::subscribers::Subscribers;

#[derive(Debug, Serialize)]
pub struct Health {
    pub revision: u64,
    pub pools: Vec<Pool>,
    pub suspect_agents: Vec<String>,
    pub proxies: Vec<Proxy>,
}

#[derive(Debug, Serialize)]
pub struct Pool {
    pub name: String,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Serialize)]
pub struct Backend {
    pub name: String,
    pub address: String,
    /// `up` or `down`.
    pub state: &'static str,
    /// `ready`, `drain` or `maint`.
    pub admin_state: &'static str,
    pub weight: u32,
    pub backup: bool,
    pub stale: bool,
    /// When the state was decided (unix ms; 0: the pool's initial state).
    pub decided_at_ms: u64,
    pub votes_counted: u32,
    pub votes_up: u32,
    pub agents: Vec<Vote>,
    /// The last state changes, oldest first.
    pub history: Vec<Change>,
}

#[derive(Debug, Serialize)]
pub struct Vote {
    pub agent: String,
    pub state: &'static str,
    pub reason: String,
    pub since_ms: u64,
    /// False when the agent is suspect and its vote was ignored.
    pub counted: bool,
    pub last_check: Option<Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    /// HAProxy's outcome code (`L7OK`, `L7STS`, `L4CON`, …).
    pub outcome: String,
    /// The HTTP status (0: none).
    pub status: u32,
    pub latency_us: u32,
    pub at_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Change {
    pub at_ms: u64,
    pub from: &'static str,
    pub to: &'static str,
    pub votes_up: u32,
    pub votes_down: u32,
    pub votes_ignored: u32,
    pub reason: String,
    pub agents: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Proxy {
    pub proxy_id: String,
    pub pools: Vec<String>,
    pub lag_revisions: u64,
    pub last_sent_ms: u64,
}

/// What a request asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub pools: Vec<String>,
    pub states: Vec<trackwire_core::HealthState>,
}

impl Filter {
    /// From a query string (`pool=a&pool=b&state=down`).
    pub fn parse(query: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "pool" => f.pools.push(v.to_string()),
                "state" => f.states.push(
                    v.parse()
                        .map_err(|_| format!("state={v}: expected up or down"))?,
                ),
                other => return Err(format!("unknown query parameter {other:?}")),
            }
        }
        Ok(f)
    }

    fn pool(&self, name: &str) -> bool {
        self.pools.is_empty() || self.pools.iter().any(|p| p == name)
    }

    fn state(&self, s: trackwire_core::HealthState) -> bool {
        self.states.is_empty() || self.states.contains(&s)
    }
}

fn health_name(s: i32) -> &'static str {
    trackwire_core::convert::health_from_pb(s, "state").map_or("unknown", |h| h.as_str())
}

/// The JSON view of `snap`.
pub fn health(
    snap: &Snapshot,
    results: &Results,
    subscribers: &Subscribers,
    filter: &Filter,
) -> Health {
    let mut pools = Vec::new();
    for (pool, endpoints) in &snap.derived.map.pools {
        if !filter.pool(pool) {
            continue;
        }
        let mut backends = Vec::new();
        for e in endpoints.values().filter(|e| filter.state(e.state)) {
            let detail = snap.derived.detail(pool, &e.backend);
            let agents = detail
                .map(|d| {
                    d.votes
                        .iter()
                        .map(|v| Vote {
                            agent: v.agent.clone(),
                            state: v.verdict.state.as_str(),
                            reason: v.verdict.reason.clone(),
                            since_ms: v.verdict.since_ms,
                            counted: v.counted,
                            last_check: results.get(&v.agent, pool, &e.backend).map(|r| Check {
                                outcome: r.outcome,
                                status: r.status,
                                latency_us: r.latency_us,
                                at_ms: r.at_ms,
                            }),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let history = snap
                .facts
                .decisions
                .get(&(pool.clone(), e.backend.clone()))
                .map(|d| {
                    d.history
                        .iter()
                        .map(|t| Change {
                            at_ms: t.at_ms,
                            from: health_name(t.from),
                            to: health_name(t.to),
                            votes_up: t.votes_up,
                            votes_down: t.votes_down,
                            votes_ignored: t.votes_ignored,
                            reason: t.reason.clone(),
                            agents: t.agents.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            backends.push(Backend {
                name: e.backend.clone(),
                address: e.address.clone(),
                state: e.state.as_str(),
                admin_state: e.admin_state.as_str(),
                weight: e.weight,
                backup: e.backup,
                stale: e.stale,
                decided_at_ms: e.decided_at_ms,
                votes_counted: e.votes,
                votes_up: e.votes_up,
                agents,
                history,
            });
        }
        pools.push(Pool {
            name: pool.clone(),
            backends,
        });
    }
    let revision = snap.derived.map.revision;
    Health {
        revision,
        pools,
        suspect_agents: snap.derived.suspects.iter().cloned().collect(),
        proxies: subscribers
            .list(revision)
            .into_iter()
            .map(|s| Proxy {
                proxy_id: s.proxy_id,
                pools: s.pools,
                lag_revisions: s.lag_revisions,
                last_sent_ms: s.last_sent_ms,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_name_what_is_wrong() {
        let f = Filter::parse("pool=web&pool=db&state=down").expect("valid");
        assert_eq!(f.pools, ["web", "db"]);
        assert_eq!(f.states, [trackwire_core::HealthState::Down]);
        assert_eq!(Filter::parse("").expect("empty"), Filter::default());
        let e = Filter::parse("state=sideways").expect_err("bad state");
        assert!(e.contains("sideways"), "{e}");
        let e = Filter::parse("colour=red").expect_err("bad key");
        assert!(e.contains("colour"), "{e}");
    }
}
