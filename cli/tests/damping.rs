//! Flap damping end to end: a backend that flaps is held DOWN after the
//! suppress threshold, even while it answers 200, until its penalty decays.

mod support;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trackwire_control_plane::keys::{self, Keys};
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::DampingSpec;
use trackwire_core::{HealthMap, HealthState, PoolSpec};
use trackwire_testkit::http::TestHttp;

async fn wait_state(rx: &watch::Receiver<Arc<HealthMap>>, want: HealthState, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = rx
            .borrow()
            .pools
            .get("web")
            .and_then(|p| p.get("b0"))
            .map(|e| e.state);
        if up == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flapping_backend_is_held_down_until_its_penalty_decays() {
    let server = TestHttp::start().await;
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let token = CancellationToken::new();
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", grpc.local_addr().expect("addr"));
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
    let interval = Duration::from_millis(50);
    let pool = PoolSpec {
        replicas: 1,
        damping: Some(DampingSpec {
            half_life: Duration::from_secs(1),
            penalty: 1000,
            suppress: 2000,
            reuse: 750,
            max_suppress: Duration::from_secs(30),
        }),
        ..support::flip_pool("web", "b0", server.address(), interval)
    };
    let k = Keys::new("/trackwire/").expect("prefix");
    trackwire_control_plane::writes::apply(store.as_ref(), &k, &[pool], 0, false)
        .await
        .expect("apply");
    tokio::spawn(trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: vec![url.clone()],
            zone: "a".into(),
            state_dir: None,
            heartbeat: Duration::from_millis(300),
            tls: None,
        },
        None,
        token.clone(),
    ));
    let (tx, map) = watch::channel(Arc::new(HealthMap::default()));
    tokio::spawn(trackwire_data_plane::subscribe::run(
        trackwire_data_plane::subscribe::SubscribeConfig {
            control_plane: vec![url],
            pools: vec![],
            proxy_id: "t".into(),
            state_dir: None,
            tls: None,
        },
        tx,
        Arc::new(trackwire_data_plane::metrics::Metrics::default()),
        token.clone(),
    ));

    wait_state(&map, HealthState::Up, "first UP").await;
    // Two flaps: under the suppress threshold, the map follows the backend.
    server.set_flip(503);
    wait_state(&map, HealthState::Down, "DOWN (flap 1)").await;
    server.set_flip(200);
    wait_state(&map, HealthState::Up, "UP (flap 2)").await;
    // The third flap pushes the penalty over 2000: suppressed.
    server.set_flip(503);
    wait_state(&map, HealthState::Down, "DOWN (flap 3)").await;
    server.set_flip(200);
    let healthy_again = Instant::now();
    // The agent sees it UP again and the damping record says so, but the
    // map holds it DOWN.
    let deadline = Instant::now() + Duration::from_secs(5);
    let record = loop {
        let kv = store.get(&k.damping("web", "b0")).await.expect("get");
        if let Some(kv) = kv {
            let d = keys::decode_damping(&kv.value).expect("decode");
            if d.last_state == HealthState::Up {
                break d;
            }
        }
        assert!(Instant::now() < deadline, "damping record never saw UP");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(record.suppressed, "{record:?}");
    assert_eq!(
        map.borrow().pools["web"]["b0"].state,
        HealthState::Down,
        "held DOWN while suppressed"
    );
    // Released once the penalty has decayed to 750 (about 2 half-lives here).
    wait_state(&map, HealthState::Up, "release after decay").await;
    let held = healthy_again.elapsed();
    assert!(
        held >= Duration::from_millis(1000),
        "released after only {held:?}"
    );
    let kv = store
        .get(&k.damping("web", "b0"))
        .await
        .expect("get")
        .expect("record");
    let d = keys::decode_damping(&kv.value).expect("decode");
    assert!(!d.suppressed && d.penalty <= 760.0, "{d:?}");
    token.cancel();
}
