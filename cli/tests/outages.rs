//! Routine events that must not take healthy backends out (issue 11), on a
//! real etcd with its default limits (128 operations per transaction,
//! 1.5 MiB per request), real agents and real sockets.

mod support;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use trackwire_control_plane::keys::Keys;
use trackwire_control_plane::store::Store;
use trackwire_core::convert::pool_to_pb;
use trackwire_core::model::{CheckKind, StatusSet};
use trackwire_core::{BackendSpec, CheckSpec, HealthMap, HealthState, PoolSpec};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::probe_service_client::ProbeServiceClient;
use trackwire_testkit::EtcdCluster;
use trackwire_testkit::http::TestHttp;

use support::*;

fn keys() -> Keys {
    Keys::new("/trackwire/").expect("prefix")
}

/// Accepts and drops TCP connections: a target for TCP checks.
async fn acceptor() -> u16 {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    // A deep backlog: 10,000 first checks arrive within seconds.
    let l = sock.listen(8192).expect("listen");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    port
}

/// `n` backends with distinct (never contacted) addresses, all checked by
/// TCP connect on 127.0.0.1:`port` (HAProxy's `addr`), one agent each.
fn tcp_pool(name: &str, n: usize, port: u16, net: usize) -> PoolSpec {
    let backends = (0..n)
        .map(|i| {
            BackendSpec::new(
                format!("b{i}"),
                format!("10.{net}.{}.{}:{port}", i / 250, i % 250),
            )
        })
        .collect();
    PoolSpec {
        check: Some(CheckSpec {
            kind: CheckKind::Tcp,
            address: Some("127.0.0.1".into()),
            interval: Duration::from_secs(60),
            fast_interval: Duration::from_secs(5),
            down_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            rise: 1,
            fall: 1,
            ..CheckSpec::http_default()
        }),
        replicas: 1,
        ..PoolSpec::new(name, backends)
    }
}

/// HTTP-checked backends (`GET /flip`, 100 ms interval), one agent each.
fn http_pool(name: &str, addresses: &[String]) -> PoolSpec {
    let interval = Duration::from_millis(100);
    let backends = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| BackendSpec::new(format!("b{i}"), a.clone()))
        .collect();
    PoolSpec {
        check: Some(CheckSpec {
            path: "/flip".into(),
            expect_status: StatusSet::single(200),
            timeout: interval * 5,
            rise: 2,
            fall: 2,
            ..CheckSpec::every(interval)
        }),
        replicas: 1,
        ..PoolSpec::new(name, backends)
    }
}

fn config(ttl_secs: u64) -> trackwire_control_plane::Config {
    trackwire_control_plane::Config {
        agent_ttl: Duration::from_secs(ttl_secs),
        ..Default::default()
    }
}

/// Backends UP on live votes (not stale) across the map.
fn up_live(m: &HealthMap) -> usize {
    m.pools
        .values()
        .flat_map(|p| p.values())
        .filter(|e| e.state == HealthState::Up && e.votes == 1 && !e.stale)
        .count()
}

async fn apply(store: &dyn Store, pools: &[PoolSpec]) -> u64 {
    trackwire_control_plane::writes::apply(store, &keys(), pools, 0, false)
        .await
        .expect("apply")
        .revision
}

async fn servers(n: usize) -> (Vec<TestHttp>, Vec<String>) {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TestHttp::start().await);
    }
    let addrs = v.iter().map(TestHttp::address).collect();
    (v, addrs)
}

/// Opens a session as an agent `id` (process `instance`) would, with
/// `n` verdicts of `state` about `web/b0…`; the control plane's answer.
async fn hello(
    url: &str,
    id: &str,
    instance: &str,
    n: usize,
    state: pb::HealthState,
) -> Result<(), tonic::Status> {
    let channel = trackwire_connect::channel(url, None)
        .await
        .expect("connect");
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::AgentHello {
            agent_id: id.to_string(),
            instance_id: instance.into(),
            zone: "z".into(),
            verdicts: (0..n)
                .map(|i| pb::Verdict {
                    pool: "web".into(),
                    backend: format!("b{i}"),
                    state: state as i32,
                    since_ms: 1,
                    reason: "test".into(),
                    fingerprint: 1,
                })
                .collect(),
            version: "test".into(),
        })),
    };
    ProbeServiceClient::new(channel)
        .connect(tokio_stream::iter(vec![hello]))
        .await
        .map(|_| ())
}

/// Finding 1: an agent's hello once wrote all its verdicts in one
/// transaction; past 128 etcd refused it, and a control-plane restart took
/// every backend DOWN when the old lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_10000_verdicts_survives_a_control_plane_restart() {
    logs();
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let port = acceptor().await;
    let pools: Vec<PoolSpec> = (0..10)
        .map(|p| tcp_pool(&format!("p{p}"), 1000, port, p))
        .collect();
    apply(store.as_ref(), &pools).await;
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let cp1 = start_cp_on(Arc::clone(&store), config(3), grpc).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, id) = start_agent(vec![cp1.url.clone()], "z", dir.path()).await;
    let (map, follow_token) = follow(vec![cp1.url.clone()]);
    wait_map(&map, "10,000 backends UP on the agent's vote", 150, |m| {
        up_live(m) == 10_000
    })
    .await;
    // Every backend's decision is recorded, so even a restart slower than
    // the agent's lease would keep them (stale) rather than take them out.
    wait_for("10,000 decision records", 60, || {
        let store = Arc::clone(&store);
        async move {
            store
                .list(&format!("{}decisions/", keys().root()))
                .await
                .is_ok_and(|(kvs, _)| kvs.len() == 10_000)
        }
    })
    .await;
    let old_lease = store
        .get(&keys().agent(&id))
        .await
        .expect("get")
        .expect("agent key")
        .lease;

    // SIGTERM the control plane and start it again on the same address.
    cp1.stop().await;
    let cp2 = start_cp_on(
        Arc::clone(&store),
        config(3),
        TcpListener::bind(addr).await.expect("rebind"),
    )
    .await;
    // The agent's hello re-binds all 10,000 verdicts to its new lease, so
    // the old lease's expiry deletes nothing.
    wait_for(
        "all 10,000 verdicts bound to the new session's lease",
        120,
        || {
            let store = Arc::clone(&store);
            let id = id.clone();
            async move {
                let Ok(Some(agent)) = store.get(&keys().agent(&id)).await else {
                    return false;
                };
                let Ok((kvs, _)) = store.list(&keys().agent_verdicts(&id)).await else {
                    return false;
                };
                agent.lease != old_lease
                    && kvs.len() == 10_000
                    && kvs.iter().all(|kv| kv.lease == agent.lease)
            }
        },
    )
    .await;
    // Well past the old lease's TTL, every backend is still UP on a live vote.
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_map(
        &map,
        "10,000 backends UP on live votes after the restart",
        10,
        |m| up_live(m) == 10_000,
    )
    .await;
    agent.cancel();
    follow_token.cancel();
    cp2.stop().await;
}

/// Finding 1, apply: 150 one-backend pools once failed on stock etcd.
/// Also the delete cascade of a pool with more records than one
/// transaction holds, and finding 9's overrides that outlived their backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_1000_pools_and_large_deletes_fit_stock_etcd() {
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let cp = start_cp(Arc::clone(&store), config(10)).await;
    let mut client = admin(&cp.url).await;
    let one = |name: String, port: u16| {
        PoolSpec::new(
            name,
            vec![BackendSpec::new("b", format!("127.0.0.1:{port}"))],
        )
    };
    let pools: Vec<pb::PoolSpec> = (0..1000)
        .map(|i| pool_to_pb(&one(format!("p{i}"), 80)))
        .collect();
    let r = client
        .apply_pools(pb::ApplyPoolsRequest {
            pools: pools.clone(),
            ..Default::default()
        })
        .await
        .expect("apply 1,000 pools")
        .into_inner();
    assert_eq!(r.created.len(), 1000);
    // Every pool changed: 1,000 updates, each guarded by its revision.
    let changed: Vec<pb::PoolSpec> = (0..1000)
        .map(|i| pool_to_pb(&one(format!("p{i}"), 81)))
        .collect();
    let r = client
        .apply_pools(pb::ApplyPoolsRequest {
            pools: changed,
            ..Default::default()
        })
        .await
        .expect("update 1,000 pools")
        .into_inner();
    assert_eq!(r.updated.len(), 1000);
    let applied = r.revision;
    wait_for("the control plane's view of the update", 10, || {
        let mut c = client.clone();
        async move {
            c.list_pools(pb::ListPoolsRequest {}).await.is_ok_and(|l| {
                let l = l.into_inner();
                l.revision >= applied
                    && l.pools.len() == 1000
                    && l.pools
                        .iter()
                        .all(|p| p.backends[0].address.ends_with(":81"))
            })
        }
    })
    .await;

    // A pool of 300 backends, 200 of them drained: deleting it removes
    // the pool and 200 overrides, more than one transaction holds.
    let mut big = one("big".into(), 80);
    big.backends = (0..300)
        .map(|i| BackendSpec::new(format!("b{i}"), format!("127.0.0.1:{}", 1000 + i)))
        .collect();
    apply(store.as_ref(), std::slice::from_ref(&big)).await;
    wait_for("the big pool in the control plane's view", 10, || {
        let mut c = client.clone();
        async move {
            c.get_pool(pb::GetPoolRequest { name: "big".into() })
                .await
                .is_ok()
        }
    })
    .await;
    for i in 0..200 {
        client
            .set_backend_state(pb::SetBackendStateRequest {
                pool: "big".into(),
                backend: format!("b{i}"),
                state: pb::AdminState::Drain as i32,
                reason: "test".into(),
                set_by: "test".into(),
            })
            .await
            .expect("drain");
    }
    client
        .delete_pool(pb::DeletePoolRequest { name: "big".into() })
        .await
        .expect("delete a pool with 200 overrides");
    let (left, _) = store.list(&keys().admin_prefix("big")).await.expect("list");
    assert!(left.is_empty(), "{} overrides left behind", left.len());

    // An override goes with its backend and does not return with a new
    // backend of the same name.
    let mut web = one("web".into(), 80);
    web.backends.push(BackendSpec {
        name: "b2".into(),
        ..web.backends[0].clone()
    });
    apply(store.as_ref(), std::slice::from_ref(&web)).await;
    wait_for("web in the control plane's view", 10, || {
        let mut c = client.clone();
        async move {
            c.get_pool(pb::GetPoolRequest { name: "web".into() })
                .await
                .is_ok_and(|p| p.into_inner().pool.is_some_and(|p| p.backends.len() == 2))
        }
    })
    .await;
    client
        .set_backend_state(pb::SetBackendStateRequest {
            pool: "web".into(),
            backend: "b2".into(),
            state: pb::AdminState::Maint as i32,
            reason: "decommission".into(),
            set_by: "test".into(),
        })
        .await
        .expect("maint");
    let without = PoolSpec {
        backends: vec![web.backends[0].clone()],
        ..web.clone()
    };
    apply(store.as_ref(), &[without]).await;
    assert!(
        store
            .get(&keys().admin("web", "b2"))
            .await
            .expect("get")
            .is_none(),
        "the override outlived its backend"
    );
    let rev = apply(store.as_ref(), std::slice::from_ref(&web)).await;
    wait_for("b2 re-added, ready", 10, || {
        let mut c = client.clone();
        async move {
            let Ok(h) = c
                .get_health(pb::GetHealthRequest { pool: "web".into() })
                .await
            else {
                return false;
            };
            let h = h.into_inner();
            h.revision >= rev
                && h.backends.iter().any(|b| {
                    b.endpoint.as_ref().is_some_and(|e| {
                        e.backend == "b2" && e.admin_state == pb::AdminState::Ready as i32
                    })
                })
        }
    })
    .await;
    cp.stop().await;
}

/// Finding 2: a second session with a live agent's id (a cloned state dir
/// or a spoofed id) is refused and changes nothing; an agent whose
/// registration is lost re-registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_for_a_live_agent_id_is_refused_and_a_lost_one_re_registers() {
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let (_servers, addrs) = servers(3).await;
    apply(store.as_ref(), &[http_pool("web", &addrs)]).await;
    let cp = start_cp(Arc::clone(&store), config(3)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, id) = start_agent(vec![cp.url.clone()], "z", dir.path()).await;
    let (map, follow_token) = follow(vec![cp.url.clone()]);
    wait_map(&map, "3 backends UP", 20, |m| up_live(m) == 3).await;
    let before = store
        .get(&keys().agent(&id))
        .await
        .expect("get")
        .expect("agent key");

    // The same id from another process, claiming every backend DOWN.
    let refused = hello(&cp.url, &id, "a-clone", 3, pb::HealthState::Down)
        .await
        .expect_err("a second live session for one agent id must be refused");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains(&id), "{}", refused.message());
    let after = store
        .get(&keys().agent(&id))
        .await
        .expect("get")
        .expect("agent key");
    assert_eq!(
        after.mod_revision, before.mod_revision,
        "the real agent's registration changed"
    );
    let (verdicts, _) = store.list(&keys().agent_verdicts(&id)).await.expect("list");
    assert_eq!(verdicts.len(), 3);
    assert!(verdicts.iter().all(|kv| kv.lease == before.lease));
    assert_eq!(up_live(&map.borrow()), 3);

    // The agent's registration vanishes (as when its lease lapses during
    // an outage): its session ends and the agent registers again.
    store.delete(&keys().agent(&id)).await.expect("delete");
    wait_for("the agent registered again with its verdicts", 20, || {
        let store = Arc::clone(&store);
        let id = id.clone();
        async move {
            let Ok(Some(agent)) = store.get(&keys().agent(&id)).await else {
                return false;
            };
            let Ok((kvs, _)) = store.list(&keys().agent_verdicts(&id)).await else {
                return false;
            };
            agent.mod_revision > before.mod_revision
                && kvs.len() == 3
                && kvs.iter().all(|kv| kv.lease == agent.lease)
        }
    })
    .await;
    wait_map(&map, "3 backends UP on live votes again", 20, |m| {
        up_live(m) == 3
    })
    .await;
    agent.cancel();
    follow_token.cancel();
    cp.stop().await;
}

/// Finding 3: after a control-plane outage longer than the agent TTL, the
/// restarted control plane serves the last decided states (stale), not
/// `initial_state`; the staleness bound then applies; live agents clear it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decided_states_outlive_an_outage_stale_and_bounded() {
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let (_servers, addrs) = servers(3).await;
    apply(store.as_ref(), &[http_pool("web", &addrs)]).await;
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let cp1 = start_cp_on(Arc::clone(&store), config(2), grpc).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, _id) = start_agent(vec![cp1.url.clone()], "z", dir.path()).await;
    let (map, follow_token) = follow(vec![cp1.url.clone()]);
    wait_map(&map, "3 backends UP", 20, |m| up_live(m) == 3).await;
    wait_for("3 decision records", 10, || {
        let store = Arc::clone(&store);
        async move {
            store
                .list(&keys().decision_prefix("web"))
                .await
                .is_ok_and(|(kvs, _)| kvs.len() == 3)
        }
    })
    .await;
    follow_token.cancel();

    // The control plane goes away for longer than the agent TTL: the
    // agent's lease lapses and its verdicts go with it.
    cp1.stop().await;
    wait_for("the agent's verdicts gone with its lease", 20, || {
        let store = Arc::clone(&store);
        async move {
            store
                .list(&format!("{}verdicts/", keys().root()))
                .await
                .is_ok_and(|(kvs, _)| kvs.is_empty())
        }
    })
    .await;

    // A control plane the agent cannot reach (another address), with a
    // short staleness bound: it serves the decided states, stale.
    let cp2 = start_cp(
        Arc::clone(&store),
        trackwire_control_plane::Config {
            stale_max: Some(Duration::from_secs(3)),
            ..config(2)
        },
    )
    .await;
    let (map2, follow2) = follow(vec![cp2.url.clone()]);
    let first = wait_map(&map2, "a map from the restarted control plane", 10, |m| {
        m.pools.contains_key("web")
    })
    .await;
    for e in first.pools["web"].values() {
        assert_eq!(
            (e.state, e.stale, e.votes),
            (HealthState::Up, true, 0),
            "{}: absence of evidence taken as failure",
            e.backend
        );
    }
    let mut client = admin(&cp2.url).await;
    let h = client
        .get_health(pb::GetHealthRequest { pool: "web".into() })
        .await
        .expect("health")
        .into_inner();
    for b in &h.backends {
        assert!(
            b.stale_since_ms > 0 && b.stale_expires_ms >= b.stale_since_ms + 3000,
            "{b:?}"
        );
    }
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackwire"))
            .args(args)
            .args(["--control-plane", &cp2.url])
            .output()
            .expect("run trackwire");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let table = cli(&["get", "backends"]);
    assert_eq!(table.matches("UP (stale ").count(), 3, "{table}");
    let json = cli(&["describe", "backend", "web/b0", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["stale"], true, "{json}");
    assert!(
        json["stale_since_ms"].as_u64().is_some_and(|s| s > 0),
        "{json}"
    );
    let http = cp2.http.clone();
    wait_for("the stale gauges", 2, || {
        let http = http.clone();
        async move {
            let (_, m) = http_get(&http, "/metrics").await;
            m.contains("trackwire_backends_stale 3") && m.contains("trackwire_stale_max_seconds 3")
        }
    })
    .await;
    // The bound: the stale states stop being trusted, initial_state applies.
    wait_map(&map2, "stale states expired to initial_state", 15, |m| {
        m.pools["web"]
            .values()
            .all(|e| e.state == HealthState::Down && !e.stale)
    })
    .await;
    follow2.cancel();
    cp2.stop().await;

    // The control plane comes back where the agent looks: live votes again.
    let cp3 = start_cp_on(
        Arc::clone(&store),
        config(2),
        TcpListener::bind(addr).await.expect("rebind"),
    )
    .await;
    let (map3, follow3) = follow(vec![cp3.url.clone()]);
    wait_map(&map3, "3 backends UP on live votes", 20, |m| {
        up_live(m) == 3
    })
    .await;
    agent.cancel();
    follow3.cancel();
    cp3.stop().await;
}

/// Finding 4: a verdict counts only for the address and check it was made
/// against; verdict keys of deleted pools are removed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_count_only_for_the_spec_they_were_made_against() {
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let (_servers, addrs) = servers(2).await;
    apply(store.as_ref(), &[http_pool("web", &addrs)]).await;
    let cp = start_cp(Arc::clone(&store), config(10)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, id) = start_agent(vec![cp.url.clone()], "z", dir.path()).await;
    let (map, follow_token) = follow(vec![cp.url.clone()]);
    wait_map(&map, "2 backends UP", 20, |m| up_live(m) == 2).await;

    // b1 moves to an address where nothing listens.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let moved = http_pool("web", &[addrs[0].clone(), dead]);
    let rev = apply(store.as_ref(), &[moved]).await;
    let m = wait_map(&map, "the map of the move", 10, |m| m.revision >= rev).await;
    let b1 = &m.pools["web"]["b1"];
    assert_eq!(
        (b1.state, b1.votes, b1.stale),
        (HealthState::Down, 0, false),
        "a verdict about the old address counted for the new one"
    );
    assert_eq!(m.pools["web"]["b0"].state, HealthState::Up);

    // The pool deleted: the agent's verdict keys about it go now, not
    // when its lease ends.
    let mut client = admin(&cp.url).await;
    client
        .delete_pool(pb::DeletePoolRequest { name: "web".into() })
        .await
        .expect("delete");
    wait_for("verdict keys of the deleted pool removed", 10, || {
        let store = Arc::clone(&store);
        let id = id.clone();
        async move {
            store
                .list(&keys().agent_verdicts(&id))
                .await
                .is_ok_and(|(kvs, _)| kvs.is_empty())
        }
    })
    .await;
    // Re-created with every address changed: nothing is UP on old verdicts.
    let (_servers2, addrs2) = servers(2).await;
    let rev = apply(store.as_ref(), &[http_pool("web", &addrs2)]).await;
    let m = wait_map(&map, "the re-created pool", 10, |m| {
        m.revision >= rev && m.pools.contains_key("web")
    })
    .await;
    assert!(
        m.pools["web"]
            .values()
            .all(|e| e.state == HealthState::Down)
    );
    wait_map(&map, "re-created backends UP on new checks", 20, |m| {
        up_live(m) == 2
    })
    .await;
    agent.cancel();
    follow_token.cancel();
    cp.stop().await;
}

/// Finding 9: `/readyz` says when the store stops answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_store_is_unreachable() {
    let mut etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let cp = start_cp(Arc::clone(&store), config(10)).await;
    let http = cp.http.clone();
    wait_for("/readyz 200", 10, || {
        let http = http.clone();
        async move { http_get(&http, "/readyz").await.0 == 200 }
    })
    .await;
    etcd.kill(0);
    wait_for("/readyz 503 with etcd gone", 20, || {
        let http = http.clone();
        async move {
            let (status, body) = http_get(&http, "/readyz").await;
            status == 503 && body.contains("store unreachable")
        }
    })
    .await;
    let (_, metrics) = http_get(&http, "/metrics").await;
    assert!(metrics.contains("trackwire_store_up 0"), "{metrics}");
    cp.stop().await;
}

/// Finding 9: a watch from a revision no longer kept is an error, not silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_revision_no_longer_kept_is_an_error() {
    let store: Arc<dyn Store> = Arc::new(trackwire_control_plane::store::MemStore::new());
    let (_servers, addrs) = servers(1).await;
    for _ in 0..3 {
        apply(store.as_ref(), &[http_pool("web", &addrs)]).await;
        apply(store.as_ref(), &[http_pool("db", &addrs)]).await;
        trackwire_control_plane::writes::delete(store.as_ref(), &keys(), "db")
            .await
            .expect("delete");
    }
    let cp = start_cp(Arc::clone(&store), config(10)).await;
    let mut client = admin(&cp.url).await;
    let err = tokio::time::timeout(Duration::from_secs(5), async {
        let mut stream = client
            .watch_events(pb::WatchEventsRequest {
                pools: vec![],
                from_revision: 1,
            })
            .await?
            .into_inner();
        stream.message().await.map(|_| ())
    })
    .await
    .expect("an answer, not silence")
    .expect_err("revision 1 is not kept by a control plane started later");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("no longer kept"),
        "{}",
        err.message()
    );
    cp.stop().await;
}

/// Finding 6: a hello beyond the documented size is refused up front,
/// naming the field, not failed later as "store unavailable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_hello_is_invalid_argument() {
    let store: Arc<dyn Store> = Arc::new(trackwire_control_plane::store::MemStore::new());
    let cp = start_cp(Arc::clone(&store), config(10)).await;
    let id = uuid::Uuid::new_v4().to_string();
    let err = hello(&cp.url, &id, "i", 20_000, pb::HealthState::Up)
        .await
        .expect_err("20,000 verdicts is beyond the limit");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("hello.verdicts"),
        "{}",
        err.message()
    );
    let (kvs, _) = store.list(keys().root()).await.expect("list");
    assert!(kvs.is_empty(), "something was written: {kvs:?}");
    cp.stop().await;
}
