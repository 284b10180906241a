//! The views of `get`, `describe` and `watch`: each is a typed row built
//! once from the control plane's answer and printed by [`super::output`]
//! as a table or as JSON. States are the domain's enums; times are unix
//! milliseconds in JSON and `2026-11-26T21:29:41Z (12s ago)` in tables.

use anyhow::Context;
use serde::Serialize;
use trackwire_core::convert::health_from_pb;
use trackwire_core::{AdminState, CheckKind, Endpoint, HealthState, PoolSpec, Quorum};
use trackwire_proto::v1 as pb;

use super::output::{Column, Row, col, human_age, human_latency, human_time, render_table};

/// A row of `get pools`.
#[derive(Debug, Serialize)]
pub struct PoolRow {
    pub name: String,
    pub backends: usize,
    /// `http GET /readyz expect 200`, `tcp`; `None`: not checked (always UP).
    pub check: Option<String>,
    pub quorum: Quorum,
    pub initial_state: HealthState,
}

impl PoolRow {
    pub fn new(spec: &PoolSpec) -> Self {
        PoolRow {
            name: spec.name.clone(),
            backends: spec.backends.len(),
            check: spec.check.as_ref().map(|c| match c.kind {
                CheckKind::Tcp => "tcp".to_string(),
                k => format!(
                    "{} {} {} expect {}",
                    k.as_str(),
                    c.method,
                    c.path,
                    c.expect_status
                ),
            }),
            quorum: spec.quorum,
            initial_state: spec.initial_state,
        }
    }
}

impl Row for PoolRow {
    const COLUMNS: &'static [Column<Self>] = &[
        col("NAME", |r, _| r.name.clone()),
        col("BACKENDS", |r, _| r.backends.to_string()),
        col("CHECK", |r, _| {
            r.check.clone().unwrap_or_else(|| "none".into())
        }),
        col("QUORUM", |r, _| r.quorum.as_str().into()),
        col("INITIAL", |r, _| r.initial_state.as_str().into()),
    ];
}

/// A row of `get proxies`.
#[derive(Debug, Serialize)]
pub struct ProxyRow {
    pub proxy: String,
    pub peer: String,
    /// The pools it subscribed to (empty: all).
    pub pools: Vec<String>,
    /// The revision of the last map sent to it, and how far the current one is ahead.
    pub revision: u64,
    pub lag: u64,
    pub messages: u64,
}

impl ProxyRow {
    pub fn new(s: &pb::SubscriberInfo) -> Self {
        ProxyRow {
            proxy: s.proxy_id.clone(),
            peer: s.peer.clone(),
            pools: s.pools.clone(),
            revision: s.last_revision_sent,
            lag: s.lag_revisions,
            messages: s.messages_sent,
        }
    }
}

impl Row for ProxyRow {
    const COLUMNS: &'static [Column<Self>] = &[
        col("PROXY", |r, _| r.proxy.clone()),
        col("PEER", |r, _| r.peer.clone()),
        col("POOLS", |r, _| {
            if r.pools.is_empty() {
                "*".into()
            } else {
                r.pools.join(",")
            }
        }),
        col("REVISION", |r, _| r.revision.to_string()),
        col("LAG", |r, _| r.lag.to_string()),
        col("MESSAGES", |r, _| r.messages.to_string()),
    ];
}

/// A row of `get agents`.
#[derive(Debug, Serialize)]
pub struct AgentRow {
    pub agent: String,
    pub zone: String,
    pub address: String,
    /// Checks assigned to it now.
    pub checks: u32,
    /// A suspected partitioned checker: its votes are not counted.
    pub suspect: bool,
}

impl AgentRow {
    pub fn new(a: &pb::AgentInfo) -> Self {
        AgentRow {
            agent: a.agent_id.clone(),
            zone: a.zone.clone(),
            address: a.address.clone(),
            checks: a.assigned,
            suspect: a.suspect,
        }
    }
}

impl Row for AgentRow {
    const COLUMNS: &'static [Column<Self>] = &[
        col("AGENT", |r, _| r.agent.clone()),
        col("ZONE", |r, _| r.zone.clone()),
        col("ADDRESS", |r, _| r.address.clone()),
        col("CHECKS", |r, _| r.checks.to_string()),
        col("SUSPECT", |r, _| {
            if r.suspect { "yes" } else { "no" }.into()
        }),
    ];
}

/// A row of `get backends`.
#[derive(Debug, Serialize)]
pub struct BackendRow {
    pub pool: String,
    pub backend: String,
    pub address: String,
    pub state: HealthState,
    /// The state is the last one decided, kept without live verdicts.
    pub stale: bool,
    /// When the serving replica first saw it stale (0: not stale, or unknown).
    pub stale_since_ms: u64,
    pub admin_state: AdminState,
    pub votes_up: u32,
    pub votes: u32,
    /// The first reason an agent gave (`L7STS 503`), if any.
    pub reason: String,
}

impl BackendRow {
    /// The rows of a `GetHealth` answer (backends without an endpoint are skipped).
    pub fn all(resp: &pb::GetHealthResponse) -> anyhow::Result<Vec<Self>> {
        let mut rows = Vec::new();
        for (i, b) in resp.backends.iter().enumerate() {
            let Some(e) = &b.endpoint else { continue };
            let e = Endpoint::try_from(e).with_context(|| {
                format!("control plane sent an invalid endpoint (backends[{i}].endpoint)")
            })?;
            let reason = b
                .votes
                .iter()
                .find(|v| !v.reason.is_empty())
                .map(|v| v.reason.clone())
                .unwrap_or_default();
            rows.push(BackendRow {
                pool: b.pool.clone(),
                backend: e.backend,
                address: e.address,
                state: e.state,
                stale: e.stale,
                stale_since_ms: b.stale_since_ms,
                admin_state: e.admin_state,
                votes_up: e.votes_up,
                votes: e.votes,
                reason,
            });
        }
        Ok(rows)
    }
}

impl Row for BackendRow {
    const COLUMNS: &'static [Column<Self>] = &[
        col("POOL", |r, _| r.pool.clone()),
        col("BACKEND", |r, _| r.backend.clone()),
        col("ADDRESS", |r, _| r.address.clone()),
        col("STATE", |r, now| {
            state_label(r.state, r.stale, r.stale_since_ms, now)
        }),
        col("ADMIN", |r, _| r.admin_state.as_str().into()),
        col("VOTES(UP/ALL)", |r, _| {
            format!("{}/{}", r.votes_up, r.votes)
        }),
        col("REASON", |r, _| r.reason.clone()),
    ];
}

/// `UP`, or `UP (stale 4m2s)` for a state kept without live verdicts.
fn state_label(state: HealthState, stale: bool, stale_since_ms: u64, now_ms: u64) -> String {
    let state = state.as_str().to_uppercase();
    match (stale, stale_since_ms) {
        (false, _) => state,
        (true, 0) => format!("{state} (stale)"),
        (true, since) => format!(
            "{state} (stale {})",
            human_age(now_ms.saturating_sub(since))
        ),
    }
}

/// `describe backend POOL/NAME`: one backend in detail.
#[derive(Debug, Serialize)]
pub struct BackendDetail {
    pub pool: String,
    pub backend: String,
    pub address: String,
    pub state: HealthState,
    pub admin_state: AdminState,
    pub weight: u32,
    pub backup: bool,
    /// When the state was decided (0: the pool's initial state).
    pub decided_at_ms: u64,
    pub stale: bool,
    pub stale_since_ms: u64,
    /// When a stale state stops being trusted (0: not stale, or without bound).
    pub stale_expires_ms: u64,
    pub votes: u32,
    pub votes_up: u32,
    pub assigned_agents: Vec<String>,
    pub agent_votes: Vec<VoteRow>,
    /// The last state changes, oldest first.
    pub history: Vec<TransitionRow>,
}

/// One recorded state change of a backend.
#[derive(Debug, Serialize)]
pub struct TransitionRow {
    pub at_ms: u64,
    pub from: HealthState,
    pub to: HealthState,
    pub votes_up: u32,
    pub votes_down: u32,
    pub votes_ignored: u32,
    pub reason: String,
    /// The agents whose votes were for the new state.
    pub agents: Vec<String>,
}

impl Row for TransitionRow {
    const COLUMNS: &'static [Column<Self>] = &[
        col("CHANGED", |r, now| human_time(r.at_ms, now)),
        col("FROM", |r, _| r.from.as_str().to_uppercase()),
        col("TO", |r, _| r.to.as_str().to_uppercase()),
        col("VOTES UP/DOWN", |r, _| {
            let ignored = if r.votes_ignored > 0 {
                format!(" ({} ignored)", r.votes_ignored)
            } else {
                String::new()
            };
            format!("{}/{}{ignored}", r.votes_up, r.votes_down)
        }),
        col("BY", |r, _| r.agents.join(",")),
        col("REASON", |r, _| r.reason.clone()),
    ];
}

/// One agent's vote on a backend, with its latest check when known.
#[derive(Debug, Serialize)]
pub struct VoteRow {
    pub agent: String,
    pub state: HealthState,
    pub reason: String,
    pub since_ms: u64,
    /// A suspected partitioned checker: this vote was not counted.
    pub suspect: bool,
    pub last_result: Option<LastCheck>,
}

/// An agent's latest check of a backend (`ResultSummary`).
#[derive(Debug, Serialize)]
pub struct LastCheck {
    /// HAProxy's outcome code: `L7OK`, `L7STS`, `L4CON`, ...
    pub outcome: String,
    /// The HTTP status, when there was one.
    pub status: Option<u32>,
    pub latency_us: u32,
    pub at_ms: u64,
    pub reason: String,
}

impl LastCheck {
    fn new(r: &pb::ResultSummary) -> Self {
        LastCheck {
            outcome: r.outcome.clone(),
            status: (r.status != 0).then_some(r.status),
            latency_us: r.latency_us,
            at_ms: r.at_ms,
            reason: r.reason.clone(),
        }
    }

    /// `L7OK 200 in 1.2ms, 2026-11-26T21:29:41Z (2s ago)`.
    fn label(&self, now_ms: u64) -> String {
        // The reason says more than the status (`L4CON connection
        // refused`); a passed check has none, only a status.
        let what = match (self.reason.as_str(), self.status) {
            ("", Some(status)) => format!("{} {status}", self.outcome),
            ("", None) => self.outcome.clone(),
            (reason, _) => format!("{} {reason}", self.outcome),
        };
        format!(
            "{what} in {}, {}",
            human_latency(self.latency_us),
            human_time(self.at_ms, now_ms)
        )
    }
}

impl Row for VoteRow {
    const COLUMNS: &'static [Column<Self>] = &[
        col("AGENT", |r, _| r.agent.clone()),
        col("VERDICT", |r, _| r.state.as_str().to_uppercase()),
        col("REASON", |r, _| r.reason.clone()),
        col("SINCE", |r, now| human_time(r.since_ms, now)),
        col("NOTE", |r, _| {
            if r.suspect {
                "suspect (not counted)".into()
            } else {
                String::new()
            }
        }),
        col("LAST CHECK", |r, now| {
            r.last_result
                .as_ref()
                .map_or_else(|| "-".into(), |c| c.label(now))
        }),
    ];
}

impl BackendDetail {
    /// `backend` of a `GetHealth` answer for its pool.
    pub fn find(
        resp: &pb::GetHealthResponse,
        pool: &str,
        backend: &str,
    ) -> anyhow::Result<Option<Self>> {
        let Some((i, b, e)) = resp.backends.iter().enumerate().find_map(|(i, b)| {
            b.endpoint
                .as_ref()
                .filter(|e| b.pool == pool && e.backend == backend)
                .map(|e| (i, b, e))
        }) else {
            return Ok(None);
        };
        let e = Endpoint::try_from(e).with_context(|| {
            format!("control plane sent an invalid endpoint (backends[{i}].endpoint)")
        })?;
        let agent_votes = b
            .votes
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let path = format!("backends[{i}].votes[{j}].state");
                Ok(VoteRow {
                    agent: v.agent_id.clone(),
                    state: health_from_pb(v.state, &path)
                        .context("control plane sent an invalid vote")?,
                    reason: v.reason.clone(),
                    since_ms: v.since_ms,
                    suspect: v.suspect,
                    last_result: v.last_result.as_ref().map(LastCheck::new),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let history = b
            .history
            .iter()
            .enumerate()
            .map(|(j, t)| {
                let path = |f: &str| format!("backends[{i}].history[{j}].{f}");
                Ok(TransitionRow {
                    at_ms: t.at_ms,
                    from: health_from_pb(t.from, &path("from"))
                        .context("control plane sent an invalid transition")?,
                    to: health_from_pb(t.to, &path("to"))
                        .context("control plane sent an invalid transition")?,
                    votes_up: t.votes_up,
                    votes_down: t.votes_down,
                    votes_ignored: t.votes_ignored,
                    reason: t.reason.clone(),
                    agents: t.agents.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(BackendDetail {
            history,
            pool: pool.to_string(),
            backend: e.backend,
            address: e.address,
            state: e.state,
            admin_state: e.admin_state,
            weight: e.weight,
            backup: e.backup,
            decided_at_ms: e.decided_at_ms,
            stale: e.stale,
            stale_since_ms: b.stale_since_ms,
            stale_expires_ms: b.stale_expires_ms,
            votes: e.votes,
            votes_up: e.votes_up,
            assigned_agents: b.assigned_agents.clone(),
            agent_votes,
        }))
    }

    /// The human form: a field per line, then the votes as a table.
    pub fn render(&self, now_ms: u64) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            out.push_str(&format!("{:<14}{value}\n", format!("{label}:")));
        };
        line("Backend", format!("{}/{}", self.pool, self.backend));
        line("Address", self.address.clone());
        line(
            "State",
            format!(
                "{} ({} of {} counted votes UP)",
                self.state.as_str().to_uppercase(),
                self.votes_up,
                self.votes
            ),
        );
        if self.stale {
            line(
                "Stale",
                format!(
                    "yes: no live verdict; the last decided state, kept {}{}",
                    if self.stale_since_ms > 0 {
                        format!(
                            "for {}",
                            human_age(now_ms.saturating_sub(self.stale_since_ms))
                        )
                    } else {
                        "(age unknown)".into()
                    },
                    if self.stale_expires_ms > 0 {
                        format!(
                            "; the pool's initial state applies in {}",
                            human_age(self.stale_expires_ms.saturating_sub(now_ms))
                        )
                    } else {
                        "; trusted without bound".into()
                    }
                ),
            );
        }
        line("Admin state", self.admin_state.as_str().into());
        line(
            "Weight",
            format!(
                "{}{}",
                self.weight,
                if self.backup { " (backup)" } else { "" }
            ),
        );
        line(
            "Decided at",
            if self.decided_at_ms == 0 {
                "never: the pool's initial state".into()
            } else {
                human_time(self.decided_at_ms, now_ms)
            },
        );
        line("Checked by", self.assigned_agents.join(", "));
        out.push_str(&render_table(&self.agent_votes, now_ms));
        if !self.history.is_empty() {
            out.push_str("\nRecent state changes (oldest first):\n");
            out.push_str(&render_table(&self.history, now_ms));
        }
        out
    }
}

/// A line of `watch`: one event.
#[derive(Debug, Serialize)]
pub struct EventRow {
    pub revision: u64,
    pub pool: String,
    pub backend: String,
    /// `state` (UP/DOWN), `admin` (ready/drain/maint), `added`, `removed`.
    pub kind: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub at_ms: u64,
}

impl EventRow {
    pub fn new(e: pb::Event) -> Self {
        EventRow {
            revision: e.revision,
            pool: e.pool,
            backend: e.backend,
            kind: e.kind,
            from: e.from,
            to: e.to,
            reason: e.reason,
            at_ms: e.at_ms,
        }
    }
}

impl Row for EventRow {
    const COLUMNS: &'static [Column<Self>] = &[
        col("AT", |r, now| human_time(r.at_ms, now)),
        col("REVISION", |r, _| r.revision.to_string()),
        col("BACKEND", |r, _| format!("{}/{}", r.pool, r.backend)),
        col("KIND", |r, _| r.kind.clone()),
        col("CHANGE", |r, _| format!("{} -> {}", r.from, r.to)),
        col("REASON", |r, _| r.reason.clone()),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::output::render_table;

    const NOW: u64 = 1_798_320_581_000;

    fn health(stale: bool) -> pb::GetHealthResponse {
        let endpoint = |backend: &str, state: pb::HealthState| pb::Endpoint {
            backend: backend.into(),
            address: "10.0.0.1:443".into(),
            weight: 1,
            admin_state: pb::AdminState::Drain as i32,
            state: state as i32,
            decided_at_ms: NOW - 60_000,
            votes: 2,
            votes_up: 1,
            backup: false,
            stale,
        };
        let vote = |agent: &str, state: pb::HealthState, reason: &str, last: bool| pb::AgentVote {
            agent_id: agent.into(),
            state: state as i32,
            reason: reason.into(),
            since_ms: NOW - 12_000,
            suspect: agent == "a2",
            last_result: last.then(|| pb::ResultSummary {
                pool: "web".into(),
                backend: "b1".into(),
                outcome: "L7STS".into(),
                status: 503,
                latency_us: 1_234,
                at_ms: NOW - 2_000,
                reason: "503".into(),
            }),
        };
        pb::GetHealthResponse {
            revision: 7,
            backends: vec![pb::BackendHealth {
                pool: "web".into(),
                endpoint: Some(endpoint("b1", pb::HealthState::Up)),
                assigned_agents: vec!["a1".into(), "a2".into()],
                votes: vec![
                    vote("a1", pb::HealthState::Down, "L7STS 503", true),
                    vote("a2", pb::HealthState::Up, "", false),
                ],
                stale_since_ms: if stale { NOW - 242_000 } else { 0 },
                stale_expires_ms: if stale { NOW + 180_000 } else { 0 },
                history: vec![pb::Transition {
                    at_ms: NOW - 61_000,
                    from: pb::HealthState::Down as i32,
                    to: pb::HealthState::Up as i32,
                    votes_up: 2,
                    votes_down: 0,
                    votes_ignored: 0,
                    reason: "L7OK 200".into(),
                    agents: vec!["a1".into(), "a2".into()],
                }],
            }],
            suspect_agents: vec!["a2".into()],
        }
    }

    #[test]
    fn backends_show_stale_states_with_their_age() {
        let rows = BackendRow::all(&health(true)).expect("rows");
        assert_eq!(
            render_table(&rows, NOW),
            "POOL  BACKEND  ADDRESS       STATE            ADMIN  VOTES(UP/ALL)  REASON\n\
             web   b1       10.0.0.1:443  UP (stale 4m2s)  drain  1/2            L7STS 503\n"
        );
        let json = serde_json::to_value(&rows).expect("json");
        assert_eq!(json[0]["state"], "up");
        assert_eq!(json[0]["stale"], true);
        assert_eq!(json[0]["stale_since_ms"], NOW - 242_000);
        assert_eq!(json[0]["admin_state"], "drain");
    }

    #[test]
    fn describe_lays_out_every_vote_column() {
        let d = BackendDetail::find(&health(true), "web", "b1")
            .expect("valid")
            .expect("found");
        assert_eq!(
            d.render(NOW),
            "Backend:      web/b1\n\
             Address:      10.0.0.1:443\n\
             State:        UP (1 of 2 counted votes UP)\n\
             Stale:        yes: no live verdict; the last decided state, kept for 4m2s; the pool's initial state applies in 3m0s\n\
             Admin state:  drain\n\
             Weight:       1\n\
             Decided at:   2026-12-26T21:28:41Z (1m0s ago)\n\
             Checked by:   a1, a2\n\
             AGENT  VERDICT  REASON     SINCE                           NOTE                   LAST CHECK\n\
             a1     DOWN     L7STS 503  2026-12-26T21:29:29Z (12s ago)                         L7STS 503 in 1.2ms, 2026-12-26T21:29:39Z (2s ago)\n\
             a2     UP                  2026-12-26T21:29:29Z (12s ago)  suspect (not counted)  -\n\
             \n\
             Recent state changes (oldest first):\n\
             CHANGED                          FROM  TO  VOTES UP/DOWN  BY     REASON\n\
             2026-12-26T21:28:40Z (1m1s ago)  DOWN  UP  2/0            a1,a2  L7OK 200\n"
        );
        assert_eq!(json_history(&d)["agents"][1], "a2");
        let json = serde_json::to_value(&d).expect("json");
        let votes = &json["agent_votes"];
        assert_eq!(votes[0]["state"], "down");
        assert_eq!(votes[0]["last_result"]["outcome"], "L7STS");
        assert_eq!(votes[0]["last_result"]["status"], 503);
        assert_eq!(votes[0]["last_result"]["at_ms"], NOW - 2_000);
        assert_eq!(votes[1]["suspect"], true);
        assert_eq!(votes[1]["last_result"], serde_json::Value::Null);
        assert!(
            BackendDetail::find(&health(false), "web", "nope")
                .expect("valid")
                .is_none()
        );
    }

    fn json_history(d: &BackendDetail) -> serde_json::Value {
        serde_json::to_value(d).expect("json")["history"][0].clone()
    }

    #[test]
    fn an_invalid_vote_is_an_error_naming_it() {
        let mut h = health(false);
        h.backends[0].votes[1].state = 42;
        let e = BackendDetail::find(&h, "web", "b1").expect_err("state 42");
        assert!(
            format!("{e:#}").contains("backends[0].votes[1].state: invalid health state 42"),
            "{e:#}"
        );
    }
}
