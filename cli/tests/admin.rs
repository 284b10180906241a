//! AdminService beyond apply/list: admin-state overrides that survive
//! `apply`, deleting pools with everything kept about them, listing agents.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use trackwire_control_plane::keys::Keys;
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::{AdminState, BackendSpec, HealthState, PoolSpec, Quorum};
use trackwire_proto::v1 as pb;

fn pool(name: &str) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        backends: ["b1", "b2"]
            .iter()
            .map(|b| BackendSpec {
                name: (*b).into(),
                address: "127.0.0.1:9".into(),
                weight: 1,
                admin_state: AdminState::Ready,
                backup: false,
                zone: String::new(),
            })
            .collect(),
        check: None,
        quorum: Quorum::Majority,
        initial_state: HealthState::Down,
        replicas: 3,
        zone_spread: false,
        damping: None,
        grpc_xds: false,
    }
}

async fn start() -> (
    trackwire_cli::admin::Client,
    Arc<dyn Store>,
    CancellationToken,
    String,
) {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let keys = Keys::new("/trackwire/").expect("prefix");
    trackwire_control_plane::writes::apply(
        store.as_ref(),
        &keys,
        &[pool("web"), pool("db")],
        0,
        false,
    )
    .await
    .expect("apply");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", grpc.local_addr().expect("addr"));
    let token = CancellationToken::new();
    tokio::spawn(trackwire_control_plane::run(
        trackwire_control_plane::Config::default(),
        Arc::clone(&store),
        trackwire_control_plane::Listeners {
            grpc,
            http: None,
            agent_check: None,
        },
        token.clone(),
    ));
    let client = trackwire_cli::admin::connect_urls(std::slice::from_ref(&url))
        .await
        .expect("connect");
    (client, store, token, url)
}

async fn admin_of(client: &mut trackwire_cli::admin::Client, pool: &str, backend: &str) -> i32 {
    let resp = client
        .get_health(pb::GetHealthRequest { pool: pool.into() })
        .await
        .expect("health")
        .into_inner();
    resp.backends
        .iter()
        .find_map(|b| b.endpoint.as_ref().filter(|e| e.backend == backend))
        .map(|e| e.admin_state)
        .expect("backend listed")
}

async fn wait_admin(
    client: &mut trackwire_cli::admin::Client,
    backend: &str,
    want: pb::AdminState,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_of(client, "web", backend).await != want as i32 {
        assert!(Instant::now() < deadline, "{backend} never became {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_overrides_survive_apply_and_can_be_cleared() {
    let (mut client, store, token, _) = start().await;
    let set = |state: pb::AdminState| pb::SetBackendStateRequest {
        pool: "web".into(),
        backend: "b1".into(),
        state: state as i32,
        reason: "kernel upgrade".into(),
        set_by: "ops".into(),
    };
    client
        .set_backend_state(set(pb::AdminState::Drain))
        .await
        .expect("drain");
    wait_admin(&mut client, "b1", pb::AdminState::Drain).await;
    // A declarative apply of the same pool does not undo the operator's drain.
    let keys = Keys::new("/trackwire/").expect("prefix");
    let mut changed = pool("web");
    changed.backends[1].weight = 5;
    let applied =
        trackwire_control_plane::writes::apply(store.as_ref(), &keys, &[changed], 0, false)
            .await
            .expect("apply")
            .revision;
    let deadline = Instant::now() + Duration::from_secs(5);
    while client
        .list_pools(pb::ListPoolsRequest {})
        .await
        .expect("list")
        .into_inner()
        .revision
        < applied
    {
        assert!(Instant::now() < deadline, "apply never seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        admin_of(&mut client, "web", "b1").await,
        pb::AdminState::Drain as i32
    );
    client
        .set_backend_state(set(pb::AdminState::Maint))
        .await
        .expect("maint");
    wait_admin(&mut client, "b1", pb::AdminState::Maint).await;
    client
        .set_backend_state(set(pb::AdminState::Unspecified))
        .await
        .expect("clear");
    wait_admin(&mut client, "b1", pb::AdminState::Ready).await;

    let err = client
        .set_backend_state(pb::SetBackendStateRequest {
            backend: "nope".into(),
            ..set(pb::AdminState::Drain)
        })
        .await
        .expect_err("unknown backend");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .set_backend_state(pb::SetBackendStateRequest {
            state: 42,
            ..set(pb::AdminState::Drain)
        })
        .await
        .expect_err("bad state");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("state:"), "{}", err.message());
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pool_removes_it_and_its_overrides() {
    let (mut client, store, token, _) = start().await;
    client
        .set_backend_state(pb::SetBackendStateRequest {
            pool: "db".into(),
            backend: "b2".into(),
            state: pb::AdminState::Drain as i32,
            reason: String::new(),
            set_by: "ops".into(),
        })
        .await
        .expect("drain");
    client
        .delete_pool(pb::DeletePoolRequest { name: "db".into() })
        .await
        .expect("delete");
    let keys = Keys::new("/trackwire/").expect("prefix");
    assert!(store.get(&keys.pool("db")).await.expect("get").is_none());
    assert!(
        store
            .list(&keys.admin_prefix("db"))
            .await
            .expect("list")
            .0
            .is_empty()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pools = client
            .list_pools(pb::ListPoolsRequest {})
            .await
            .expect("list")
            .into_inner();
        if pools.pools.iter().all(|p| p.name != "db") {
            break;
        }
        assert!(Instant::now() < deadline, "db still listed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = client
        .delete_pool(pb::DeletePoolRequest { name: "db".into() })
        .await
        .expect_err("already gone");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .delete_pool(pb::DeletePoolRequest { name: "a/b".into() })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), Code::InvalidArgument);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_agents_shows_zone_and_assignment() {
    let (mut client, store, token, url) = start().await;
    let keys = Keys::new("/trackwire/").expect("prefix");
    let mut checked = pool("chk");
    checked.check = Some(trackwire_core::CheckSpec::http_default());
    trackwire_control_plane::writes::apply(store.as_ref(), &keys, &[checked], 0, false)
        .await
        .expect("apply");
    tokio::spawn(trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: vec![url],
            zone: "z9".into(),
            state_dir: None,
            heartbeat: Duration::from_millis(300),
            tls: None,
        },
        None,
        token.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let agent = loop {
        let resp = client
            .list_agents(pb::ListAgentsRequest {})
            .await
            .expect("list")
            .into_inner();
        if let Some(a) = resp.agents.into_iter().next() {
            break a;
        }
        assert!(Instant::now() < deadline, "the agent never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(agent.zone, "z9");
    assert_eq!(agent.assigned, 2, "both checked backends");
    assert!(!agent.suspect);
    assert!(uuid::Uuid::parse_str(&agent.agent_id).is_ok());
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pool_and_dry_run_apply() {
    let (mut client, store, token, _) = start().await;
    let got = client
        .get_pool(pb::GetPoolRequest { name: "web".into() })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.pool.map(|p| p.name), Some("web".to_string()));
    let err = client
        .get_pool(pb::GetPoolRequest {
            name: "nope".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    // A dry run reports what would change and writes nothing.
    let before = store.revision().await.expect("revision");
    let mut changed = pool("web");
    changed.backends[0].weight = 9;
    let r = client
        .apply_pools(pb::ApplyPoolsRequest {
            pools: vec![
                trackwire_core::convert::pool_to_pb(&changed),
                trackwire_core::convert::pool_to_pb(&pool("new")),
            ],
            expected_revision: 0,
            dry_run: true,
        })
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(
        (r.updated, r.created),
        (vec!["web".to_string()], vec!["new".to_string()])
    );
    assert_eq!(
        store.revision().await.expect("revision"),
        before,
        "nothing written"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_streams_admin_changes_and_resumes() {
    let (mut client, _store, token, url) = start().await;
    let start_rev = client
        .list_pools(pb::ListPoolsRequest {})
        .await
        .expect("list")
        .into_inner()
        .revision;
    let mut events = client
        .watch_events(pb::WatchEventsRequest {
            pools: vec!["web".into()],
            from_revision: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut admin = trackwire_cli::admin::connect_urls(std::slice::from_ref(&url))
        .await
        .expect("connect");
    for (pool, backend) in [("db", "b1"), ("web", "b2")] {
        admin
            .set_backend_state(pb::SetBackendStateRequest {
                pool: pool.into(),
                backend: backend.into(),
                state: pb::AdminState::Maint as i32,
                reason: "disk swap".into(),
                set_by: "ops".into(),
            })
            .await
            .expect("maint");
    }
    // Only the watched pool's change arrives.
    let e = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("an event within 5s")
        .expect("stream")
        .expect("event");
    assert_eq!(
        (e.pool.as_str(), e.backend.as_str(), e.kind.as_str()),
        ("web", "b2", "admin")
    );
    assert_eq!((e.from.as_str(), e.to.as_str()), ("ready", "maint"));
    assert!(
        e.reason.contains("disk swap") && e.reason.contains("ops"),
        "{}",
        e.reason
    );
    // A new watcher resuming from before the change gets it replayed.
    let mut replay = client
        .watch_events(pb::WatchEventsRequest {
            pools: vec![],
            from_revision: start_rev,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(5), replay.message())
            .await
            .expect("replayed within 5s")
            .expect("stream")
            .expect("event");
        if e.kind == "admin" {
            seen.push(format!("{}/{} {}", e.pool, e.backend, e.to));
        }
    }
    seen.sort();
    assert_eq!(seen, ["db/b1 maint", "web/b2 maint"]);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_health_shows_each_agents_last_result() {
    let (mut client, store, token, url) = start().await;
    let server = trackwire_testkit::http::TestHttp::start().await;
    let keys = Keys::new("/trackwire/").expect("prefix");
    let interval = Duration::from_millis(100);
    let mut p = pool("svc");
    p.backends.truncate(1);
    p.backends[0].address = server.address();
    p.check = Some(trackwire_core::CheckSpec {
        path: "/status/503".into(),
        interval,
        fast_interval: interval,
        down_interval: interval,
        timeout: interval,
        fall: 1,
        ..trackwire_core::CheckSpec::http_default()
    });
    trackwire_control_plane::writes::apply(store.as_ref(), &keys, &[p], 0, false)
        .await
        .expect("apply");
    tokio::spawn(trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: vec![url],
            zone: "z".into(),
            state_dir: None,
            heartbeat: Duration::from_millis(200),
            tls: None,
        },
        None,
        token.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let resp = client
            .get_health(pb::GetHealthRequest { pool: "svc".into() })
            .await
            .expect("health")
            .into_inner();
        if let Some(r) = resp
            .backends
            .first()
            .and_then(|b| b.votes.first())
            .and_then(|v| v.last_result.clone())
        {
            break r;
        }
        assert!(Instant::now() < deadline, "no result summary arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((last.outcome.as_str(), last.status), ("L7STS", 503));
    assert!(last.latency_us > 0 && last.at_ms > 0, "{last:?}");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_validated_whole_and_optimistic() {
    let (mut client, store, token, _) = start().await;
    let before = store.revision().await.expect("revision");
    let mut bad = trackwire_core::convert::pool_to_pb(&pool("bad"));
    bad.backends[1].address = "no-port".into();
    let err = client
        .apply_pools(pb::ApplyPoolsRequest {
            pools: vec![trackwire_core::convert::pool_to_pb(&pool("good")), bad],
            expected_revision: 0,
            dry_run: false,
        })
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("pools[1].backends[1].address:"),
        "{}",
        err.message()
    );
    assert_eq!(
        store.revision().await.expect("revision"),
        before,
        "nothing written, not even `good`"
    );
    // Optimistic concurrency: someone else changes db; a write expecting
    // the revision before that is refused, one at the current revision passes.
    let mut db = pool("db");
    db.backends[0].weight = 2;
    let keys = Keys::new("/trackwire/").expect("prefix");
    let now = trackwire_control_plane::writes::apply(store.as_ref(), &keys, &[db], 0, false)
        .await
        .expect("concurrent change")
        .revision;
    let mut changed = pool("web");
    changed.backends[0].weight = 3;
    let err = client
        .apply_pools(pb::ApplyPoolsRequest {
            pools: vec![trackwire_core::convert::pool_to_pb(&changed)],
            expected_revision: before,
            dry_run: false,
        })
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let ok = client
        .apply_pools(pb::ApplyPoolsRequest {
            pools: vec![trackwire_core::convert::pool_to_pb(&changed)],
            expected_revision: now,
            dry_run: false,
        })
        .await
        .expect("current revision")
        .into_inner();
    assert_eq!(ok.updated, vec!["web".to_string()]);
    token.cancel();
}
