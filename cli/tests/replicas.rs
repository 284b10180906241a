//! The control plane on real etcd, with several replicas and agents, all
//! over real gRPC: steady state writes nothing, a transition costs one write
//! per agent, replicas at the same revision serve identical maps, losing a
//! replica changes no backend's state, and losing an etcd member (the
//! leader) does not stop serving or writing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trackwire_control_plane::keys::Keys;
use trackwire_control_plane::store::Store;
use trackwire_core::{BackendSpec, CheckSpec, HealthMap, HealthState, PoolSpec, StatusSet};
use trackwire_testkit::EtcdCluster;
use trackwire_testkit::http::TestHttp;

mod support;

use support::{Cp, etcd_store, follow_with_metrics, wait_map};

const INTERVAL: Duration = Duration::from_millis(100);

async fn start_cp(endpoints: Vec<String>, ttl: Duration) -> Cp {
    support::start_cp(
        etcd_store(endpoints).await,
        trackwire_control_plane::Config {
            agent_ttl: ttl,
            ..Default::default()
        },
    )
    .await
}

/// Starts an agent with a state dir of its own; returns its stop token,
/// its id and the dir.
async fn start_agent(
    endpoints: Vec<String>,
    zone: &str,
) -> (CancellationToken, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (token, id) = support::start_agent(endpoints, zone, dir.path()).await;
    (token, id, dir)
}

fn follow(
    endpoints: Vec<String>,
) -> (
    watch::Receiver<Arc<HealthMap>>,
    Arc<trackwire_data_plane::metrics::Metrics>,
    CancellationToken,
) {
    follow_with_metrics(endpoints)
}

fn pool(name: &str, servers: &[TestHttp]) -> PoolSpec {
    PoolSpec {
        check: Some(CheckSpec {
            path: "/flip".into(),
            expect_status: StatusSet::single(200),
            rise: 2,
            fall: 2,
            ..CheckSpec::every(INTERVAL)
        }),
        ..PoolSpec::new(
            name,
            servers
                .iter()
                .enumerate()
                .map(|(i, s)| BackendSpec::new(format!("b{i}"), s.address()))
                .collect(),
        )
    }
}

async fn apply(store: &dyn Store, pools: &[PoolSpec]) {
    let keys = Keys::new("/trackwire/").expect("prefix");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match trackwire_control_plane::writes::apply(store, &keys, pools, 0, false).await {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "apply failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn all_up(m: &HealthMap, pool: &str, n: usize, votes: u32) -> bool {
    m.pools.get(pool).is_some_and(|p| {
        p.len() == n
            && p.values()
                .all(|e| e.state == HealthState::Up && e.votes == votes)
    })
}

async fn servers(n: usize) -> Vec<TestHttp> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(TestHttp::start().await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_state_writes_nothing_and_a_transition_costs_one_write_per_agent() {
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let cp = start_cp(etcd.endpoints(), Duration::from_secs(10)).await;
    let backends = servers(5).await;
    apply(store.as_ref(), &[pool("web", &backends)]).await;
    let mut agents = Vec::new();
    for z in ["a", "b", "c"] {
        agents.push(start_agent(vec![cp.url.clone()], z).await);
    }
    let (map, _, _follow) = follow(vec![cp.url.clone()]);
    wait_map(&map, "5 backends UP by 3 votes", 15, |m| {
        all_up(m, "web", 5, 3)
    })
    .await;

    // 30 check intervals (a minute's worth at the default 2 s) with every
    // check passing: not one new revision.
    let r0 = store.revision().await.expect("revision");
    tokio::time::sleep(INTERVAL * 30).await;
    let r1 = store.revision().await.expect("revision");
    assert_eq!(r0, r1, "a steady cluster wrote {} revisions", r1 - r0);

    // One backend fails: each of its 3 agents writes its one transition.
    backends[2].set_flip(503);
    wait_map(&map, "b2 DOWN by all three agents", 10, |m| {
        m.pools["web"]["b2"].state == HealthState::Down && m.pools["web"]["b2"].votes_up == 0
    })
    .await;
    // ... and the control plane records the new decision once.
    let keys = Keys::new("/trackwire/").expect("prefix");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rec = store
            .get(&keys.decision("web", "b2"))
            .await
            .expect("get")
            .and_then(|kv| trackwire_control_plane::keys::decode_decision(&kv.value).ok());
        if rec.is_some_and(|d| d.state == trackwire_core::convert::health_to_pb(HealthState::Down))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "decision record of b2 not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r2 = store.revision().await.expect("revision");
    assert_eq!(
        r2 - r1,
        4,
        "one backend transition seen by 3 agents, plus its decision record"
    );
    println!(
        "etcd writes for one backend transition with 3 agents: {}",
        r2 - r1
    );
    cp.token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_at_one_revision_serve_identical_maps() {
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let cps = [
        start_cp(etcd.endpoints(), Duration::from_secs(10)).await,
        start_cp(etcd.endpoints(), Duration::from_secs(10)).await,
        start_cp(etcd.endpoints(), Duration::from_secs(10)).await,
    ];
    let backends = servers(4).await;
    apply(store.as_ref(), &[pool("web", &backends)]).await;
    let mut agents = Vec::new();
    for (i, z) in ["a", "b", "c"].iter().enumerate() {
        // Each agent on its own replica.
        agents.push(start_agent(vec![cps[i].url.clone()], z).await);
    }
    let (on_a, _, _fa) = follow(vec![cps[0].url.clone()]);
    let (on_b, _, _fb) = follow(vec![cps[1].url.clone()]);
    wait_map(&on_a, "all UP on A", 15, |m| all_up(m, "web", 4, 3)).await;
    backends[1].set_flip(500);
    backends[3].set_flip(500);
    let settled =
        |m: &HealthMap| m.pools["web"]["b1"].votes_up == 0 && m.pools["web"]["b3"].votes_up == 0;
    wait_map(&on_a, "b1 and b3 DOWN on A", 10, settled).await;
    let target = store.revision().await.expect("revision");
    let a = wait_map(&on_a, "A at the store revision", 10, |m| {
        m.revision == target
    })
    .await;
    let b = wait_map(&on_b, "B at the store revision", 10, |m| {
        m.revision == target
    })
    .await;
    assert_eq!(a, b, "replicas A and B differ at revision {target}");
    for c in &cps {
        c.token.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_a_replica_changes_no_backend_state() {
    let ttl = Duration::from_secs(2);
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let cps = [
        start_cp(etcd.endpoints(), ttl).await,
        start_cp(etcd.endpoints(), ttl).await,
        start_cp(etcd.endpoints(), ttl).await,
    ];
    let urls: Vec<String> = cps.iter().map(|c| c.url.clone()).collect();
    let backends = servers(4).await;
    apply(store.as_ref(), &[pool("web", &backends)]).await;
    // Agent 0 starts on replica A (the one that will die).
    let mut agents = Vec::new();
    for i in 0..3 {
        let mut eps = urls.clone();
        eps.rotate_left(i);
        agents.push(start_agent(eps, &format!("z{i}")).await);
    }
    let (on_b, _, _fb) = follow(vec![urls[1].clone()]);
    let (proxy, proxy_metrics, _fp) = follow(urls.clone());
    wait_map(&on_b, "all UP on B", 15, |m| all_up(m, "web", 4, 3)).await;
    wait_map(&proxy, "all UP at the proxy", 15, |m| {
        all_up(m, "web", 4, 3)
    })
    .await;

    let keys = Keys::new("/trackwire/").expect("prefix");
    let agent0 = agents[0].1.clone();
    let vkey = keys.verdict(&agent0, "web", "b0");
    let lease_before = store.get(&vkey).await.expect("get").map(|kv| kv.lease);

    // Kill replica A. Watch B's map for twice the agent TTL: every backend
    // stays UP throughout (the old lease expires with nothing left on it).
    cps[0].token.cancel();
    let mut watch_b = on_b.clone();
    let until = Instant::now() + ttl * 2 + Duration::from_millis(500);
    while Instant::now() < until {
        let changed = tokio::time::timeout_at(until, watch_b.changed()).await;
        let m = watch_b.borrow_and_update().clone();
        assert!(
            m.pools["web"].values().all(|e| e.state == HealthState::Up),
            "a backend changed state during the failover: {m:?}"
        );
        if changed.is_err() {
            break;
        }
    }
    // Agent 0's verdicts came back under a new lease, and its agent key too.
    let lease_after = store.get(&vkey).await.expect("get").map(|kv| kv.lease);
    assert!(
        lease_after.is_some() && lease_after != lease_before,
        "{lease_before:?} -> {lease_after:?}"
    );
    let m = wait_map(&on_b, "3 votes per backend again", 5, |m| {
        all_up(m, "web", 4, 3)
    })
    .await;
    assert!(m.pools["web"].values().all(|e| e.votes == 3));
    // The proxy that followed A reconnected to another replica.
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy_metrics.stream_connected.get() != 1 {
        assert!(Instant::now() < deadline, "proxy did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(all_up(&proxy.borrow(), "web", 4, 3));
    for c in &cps[1..] {
        c.token.cancel();
    }
}

/// Which member leads the cluster (etcd's own status API).
async fn leader_index(cluster: &EtcdCluster) -> usize {
    for (i, m) in cluster.members.iter().enumerate() {
        let mut c = etcd_client::Client::connect([m.client_url.as_str()], None)
            .await
            .expect("connect member");
        let s = c.status().await.expect("status");
        let me = s.header().map(|h| h.member_id()).unwrap_or(0);
        if me == s.leader() {
            return i;
        }
    }
    panic!("no leader found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_etcd_leader_keeps_serving_and_writing() {
    let mut etcd = EtcdCluster::start_n(3);
    let endpoints = etcd.endpoints();
    let store = etcd_store(endpoints.clone()).await;
    let cp = start_cp(endpoints.clone(), Duration::from_secs(10)).await;
    let backends = servers(2).await;
    apply(store.as_ref(), &[pool("web", &backends)]).await;
    let _agent = start_agent(vec![cp.url.clone()], "a").await;
    let (map, _, _f) = follow(vec![cp.url.clone()]);
    wait_map(&map, "both UP", 15, |m| all_up(m, "web", 2, 1)).await;

    let leader = leader_index(&etcd).await;
    etcd.kill(leader);
    // A verdict transition is still written and streamed...
    backends[0].set_flip(503);
    wait_map(&map, "b0 DOWN after the leader died", 15, |m| {
        m.pools["web"]["b0"].state == HealthState::Down
    })
    .await;
    // ...and the admin path still writes.
    let survivors: Vec<String> = etcd.endpoints();
    let store2 = etcd_store(survivors).await;
    apply(
        store2.as_ref(),
        &[pool("web", &backends), pool("extra", &backends[..1])],
    )
    .await;
    wait_map(&map, "the new pool streamed", 15, |m| {
        m.pools.contains_key("extra")
    })
    .await;
    cp.token.cancel();
}
