//! Seed inputs for the protobuf and binary targets, built from real
//! messages so the fuzzer starts past the decoder. `tests/seeds.rs` checks
//! that each is committed under `corpus/TARGET/seed-NAME` (and writes them
//! with `FUZZ_WRITE_SEEDS=1`). Text targets are seeded with the example
//! configurations, copied as they are.

use prost::Message;
use trackwire_core::config::Document;
use trackwire_core::convert::{pool_to_pb, pool_update_to_pb};
use trackwire_core::{Endpoint, HealthState, PoolUpdate};
use trackwire_proto::v1 as pb;

/// A seed: its target, its name, its bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub data: Vec<u8>,
}

const AGENT: &str = "9b2f7c1e-3a44-4c1b-9a51-0d6c7e8f9a10";

/// The pools of a small document with an HTTP check, a regex, a damped
/// pool and a TCP check.
fn pools() -> Vec<pb::PoolSpec> {
    let doc = Document::parse(concat!(
        "[[pool]]\nname = \"web\"\nquorum = \"any\"\ninitial_state = \"up\"\n",
        "[pool.check]\nkind = \"http\"\npath = \"/healthz\"\nexpect_status = \"200-204,301\"\n",
        "expect_body_regex = \"^ok\"\ninterval = \"2s\"\nrise = 2\nfall = 3\n",
        "[pool.check.headers]\nX-Probe = \"1\"\n",
        "[[pool.backend]]\nname = \"w1\"\naddress = \"10.0.0.1:80\"\nweight = 3\n",
        "[[pool.backend]]\nname = \"w2\"\naddress = \"[::1]:8080\"\nbackup = true\n",
        "[[pool]]\nname = \"db\"\n[pool.check]\nkind = \"tcp\"\ntcp_send = \"PING\\r\\n\"\n",
        "tcp_expect = \"PONG\"\n[pool.damping]\nhalf_life = \"30s\"\n",
        "[[pool.backend]]\nname = \"d1\"\naddress = \"db-1.example.com:5432\"\nadmin_state = \"drain\"\n",
    ));
    match doc {
        Ok(d) => d.pools.iter().map(pool_to_pb).collect(),
        Err(e) => panic!("the seed document is invalid: {e}"),
    }
}

fn verdict(pool: &str, backend: &str, up: bool) -> pb::Verdict {
    pb::Verdict {
        pool: pool.into(),
        backend: backend.into(),
        state: if up {
            pb::HealthState::Up
        } else {
            pb::HealthState::Down
        } as i32,
        reason: if up {
            String::new()
        } else {
            "L7STS 503".into()
        },
        ..Default::default()
    }
}

fn agent(msg: pb::agent_message::Msg) -> Vec<u8> {
    pb::AgentMessage { msg: Some(msg) }.encode_to_vec()
}

fn update(snapshot: bool, more: bool, revision: u64, pools: &[PoolUpdate]) -> Vec<u8> {
    pb::HealthMapUpdate {
        revision,
        snapshot,
        pools: pools.iter().map(pool_update_to_pb).collect(),
        epoch: 1,
        more,
    }
    .encode_length_delimited_to_vec()
}

fn ep(name: &str, port: u16, up: bool) -> Endpoint {
    Endpoint {
        state: if up {
            HealthState::Up
        } else {
            HealthState::Down
        },
        ..Endpoint::up(name, format!("127.0.0.1:{port}"))
    }
}

fn pool_update(pool: &str, upserts: Vec<Endpoint>, removals: &[&str], removed: bool) -> PoolUpdate {
    PoolUpdate {
        pool: pool.into(),
        upserts,
        removals: removals.iter().map(|r| r.to_string()).collect(),
        removed,
    }
}

fn admin(which: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![which];
    out.extend(body);
    out
}

fn http(flags: u8, status: u16, text: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend(status.to_be_bytes());
    out.extend_from_slice(text);
    out
}

/// Every generated seed.
pub fn all() -> Vec<Seed> {
    let seed = |target, name, data| Seed { target, name, data };
    let snapshot = update(
        true,
        false,
        10,
        &[
            pool_update(
                "web",
                vec![ep("w1", 1, true), ep("w2", 2, false)],
                &[],
                false,
            ),
            pool_update("api", vec![ep("a1", 3, true)], &[], false),
        ],
    );
    let delta = update(
        false,
        false,
        11,
        &[
            pool_update("web", vec![ep("w2", 2, true)], &["w1"], false),
            pool_update("api", vec![], &[], true),
        ],
    );
    let chunked = [
        update(
            true,
            true,
            20,
            &[pool_update("web", vec![ep("w1", 1, true)], &[], false)],
        ),
        update(
            true,
            false,
            20,
            &[pool_update("a", vec![ep("b", 9, true)], &[], false)],
        ),
    ]
    .concat();
    vec![
        seed(
            "agent_message",
            "hello",
            agent(pb::agent_message::Msg::Hello(pb::AgentHello {
                agent_id: AGENT.into(),
                zone: "zone-a".into(),
                verdicts: vec![verdict("web", "w1", true), verdict("db", "d1", false)],
                version: "0.1.0".into(),
                instance_id: "4f1d".into(),
            })),
        ),
        seed(
            "agent_message",
            "report",
            agent(pb::agent_message::Msg::Report(pb::VerdictReport {
                verdicts: vec![verdict("web", "w2", false)],
            })),
        ),
        seed(
            "agent_message",
            "heartbeat",
            agent(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                sent_ms: 1_700_000_000_000,
                results: vec![pb::ResultSummary {
                    pool: "web".into(),
                    backend: "w1".into(),
                    outcome: "L7OK".into(),
                    status: 200,
                    latency_us: 900,
                    at_ms: 1_700_000_000_000,
                    reason: String::new(),
                }],
            })),
        ),
        seed(
            "subscribe_request",
            "pools",
            pb::SubscribeRequest {
                pools: vec!["web".into(), "db".into()],
                proxy_id: "proxy-1".into(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                resume_revision: 41,
                resume_epoch: 7,
            }
            .encode_to_vec(),
        ),
        seed(
            "subscribe_request",
            "all",
            pb::SubscribeRequest {
                proxy_id: "p".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        seed(
            "admin_request",
            "apply",
            admin(
                0,
                pb::ApplyPoolsRequest {
                    pools: pools(),
                    expected_revision: 3,
                    dry_run: true,
                }
                .encode_to_vec(),
            ),
        ),
        seed(
            "admin_request",
            "drain",
            admin(
                1,
                pb::SetBackendStateRequest {
                    pool: "web".into(),
                    backend: "w1".into(),
                    state: pb::AdminState::Drain as i32,
                    reason: "kernel upgrade".into(),
                    set_by: "ops".into(),
                }
                .encode_to_vec(),
            ),
        ),
        seed(
            "admin_request",
            "delete",
            admin(
                2,
                pb::DeletePoolRequest { name: "web".into() }.encode_to_vec(),
            ),
        ),
        seed(
            "admin_request",
            "events",
            admin(
                3,
                pb::WatchEventsRequest {
                    pools: vec!["web".into()],
                    from_revision: 9,
                }
                .encode_to_vec(),
            ),
        ),
        seed(
            "map_delta",
            "snapshot-delta",
            [vec![0], snapshot.clone(), delta.clone()].concat(),
        ),
        seed(
            "map_delta",
            "filtered",
            [vec![2], snapshot.clone(), delta].concat(),
        ),
        seed(
            "map_delta",
            "new-epoch-stale",
            [vec![4 | 3], chunked].concat(),
        ),
        seed("http_match", "status", http(0, 200, b"200-299\n\nhello")),
        seed("http_match", "negated-status", http(1, 503, b"500-599\n\n")),
        seed(
            "http_match",
            "substring",
            http(2, 200, b"200\nready\nstatus: \xffrea\xffdy\n"),
        ),
        seed(
            "http_match",
            "regex",
            http(
                4,
                200,
                b"200,204\n^\\{\"status\":\"(ok|up)\"\n{\"status\":\"ok\"}",
            ),
        ),
        seed(
            "http_match",
            "negated-regex",
            http(5, 200, b"200\n(?i)error\nall fine\xffreally"),
        ),
    ]
}
