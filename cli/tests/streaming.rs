//! Health-map streaming: a subscriber that stops reading while 10,000
//! changes happen gets a few coalesced messages, not 10,000; resuming at a
//! kept revision yields a delta (on another replica too), an unknown one a
//! snapshot; the admin API lists subscribers with their lag; and a proxy
//! failing over under churn never sees a pool emptied.

mod support;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use trackwire_control_plane::keys::Keys;
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::{AdminState, BackendSpec, HealthMap, PoolSpec};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::admin_service_client::AdminServiceClient;
use trackwire_proto::v1::health_map_service_client::HealthMapServiceClient;

async fn start_cp(store: Arc<dyn Store>) -> (String, CancellationToken) {
    let cp = support::start_cp(store, trackwire_control_plane::Config::default()).await;
    (cp.url, cp.token)
}

async fn channel(url: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Endpoint::from_shared(url.to_string())
            .expect("url")
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "connect {url}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// An unchecked pool (always UP) whose backends all have `weight`.
fn pool(name: &str, n: usize, weight: u32) -> PoolSpec {
    PoolSpec::new(
        name,
        (0..n)
            .map(|i| BackendSpec {
                name: format!("b{i}"),
                address: format!("127.0.0.1:{}", 10_000 + i),
                weight,
                admin_state: AdminState::Ready,
                backup: false,
                zone: String::new(),
            })
            .collect(),
    )
}

async fn apply(store: &dyn Store, pools: &[PoolSpec]) -> u64 {
    let keys = Keys::new("/trackwire/").expect("prefix");
    trackwire_control_plane::writes::apply(store, &keys, pools, 0, false)
        .await
        .expect("apply")
        .revision
}

fn apply_updates(map: &mut HealthMap, msg: &pb::HealthMapUpdate) {
    let updates: Vec<trackwire_core::PoolUpdate> = msg
        .pools
        .iter()
        .map(|u| trackwire_core::PoolUpdate::try_from(u).expect("valid update"))
        .collect();
    if msg.snapshot {
        *map = HealthMap::default();
    }
    map.apply(&updates);
    map.revision = msg.revision;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_gets_coalesced_updates() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    apply(store.as_ref(), &[pool("web", 100, 1)]).await;
    let (url, token) = start_cp(Arc::clone(&store)).await;
    channel(&url).await;
    // HTTP/2 flow control is what lets the server notice a reader that
    // stopped; small windows keep what is in flight small.
    let small = Endpoint::from_shared(url.clone())
        .expect("url")
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(64 * 1024)
        .connect()
        .await
        .expect("connect");
    let mut client = HealthMapServiceClient::new(small);
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            pools: vec!["web".into()],
            proxy_id: "slow".into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let snap = stream.message().await.expect("read").expect("snapshot");
    assert!(snap.snapshot);
    let mut map = HealthMap::default();
    apply_updates(&mut map, &snap);

    // The subscriber stops reading for 30 s while 10,000 changes happen,
    // each re-weighting all 100 backends (about 3.5 KB of delta each).
    let stall = Instant::now();
    let mut last = 0;
    for i in 0..10_000u32 {
        last = apply(store.as_ref(), &[pool("web", 100, 1 + i % 200)]).await;
        if i % 100 == 99 {
            // Pace the changes over the 30 s.
            tokio::time::sleep_until(stall + Duration::from_millis(300) * (i / 100 + 1)).await;
        }
    }
    assert!(stall.elapsed() >= Duration::from_secs(30));
    let final_weight = 1 + 9_999 % 200;

    // Reading again. Queued, the changes would be 10,000 messages (~35 MB);
    // what arrives is what the transport buffered before the server's send
    // blocked, plus one coalesced diff to the final state.
    let (mut messages, mut bytes) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(20);
    while map.revision < last {
        assert!(
            Instant::now() < deadline,
            "never caught up: at {}",
            map.revision
        );
        let msg = stream.message().await.expect("read").expect("open");
        assert!(!msg.snapshot);
        bytes += prost::Message::encoded_len(&msg);
        apply_updates(&mut map, &msg);
        messages += 1;
    }
    assert!(messages < 1_000, "{messages} messages for 10,000 changes");
    assert!(bytes < 4 << 20, "{bytes} bytes in flight");
    assert!(map.pools["web"].values().all(|e| e.weight == final_weight));
    println!("stalled subscriber: {messages} messages ({bytes} bytes) for 10,000 changes");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_gets_a_delta_when_the_revision_is_kept() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let r1 = apply(store.as_ref(), &[pool("web", 3, 1)]).await;
    let (a, ta) = start_cp(Arc::clone(&store)).await;
    let (b, tb) = start_cp(Arc::clone(&store)).await;
    let epoch = store.epoch();
    // Let both replicas load revision r1.
    let mut admin = AdminServiceClient::new(channel(&a).await);
    let _ = admin
        .list_pools(pb::ListPoolsRequest {})
        .await
        .expect("ready");
    let r2 = apply(store.as_ref(), &[pool("web", 3, 2)]).await;

    let first = |url: String, revision: u64, epoch: u64| async move {
        let mut c = HealthMapServiceClient::new(channel(&url).await);
        c.subscribe(pb::SubscribeRequest {
            pools: vec!["web".into()],
            proxy_id: "p".into(),
            resume_revision: revision,
            resume_epoch: epoch,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
        .message()
        .await
        .expect("read")
        .expect("message")
    };
    // Wait until replica B has loaded r2.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = first(b.clone(), 0, 0).await;
        if m.revision == r2 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Held r1 (e.g. from replica A): B answers with the delta r1 -> r2 only.
    let m = first(b.clone(), r1, epoch).await;
    assert!(!m.snapshot, "expected a delta");
    assert_eq!(m.revision, r2);
    assert_eq!(m.pools.len(), 1);
    assert_eq!(m.pools[0].upserts.len(), 3, "three weights changed");
    // Already current: an empty delta.
    let m = first(a.clone(), r2, epoch).await;
    assert!(!m.snapshot && m.pools.is_empty());
    // Unknown revision or another store's epoch: a snapshot.
    assert!(first(a.clone(), r2 + 1000, epoch).await.snapshot);
    assert!(first(a.clone(), r1, epoch ^ 1).await.snapshot);
    ta.cancel();
    tb.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_subscribers_with_their_lag() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    apply(store.as_ref(), &[pool("web", 2, 1), pool("db", 2, 1)]).await;
    let (url, token) = start_cp(Arc::clone(&store)).await;
    let mut client = HealthMapServiceClient::new(channel(&url).await);
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            pools: vec!["web".into()],
            proxy_id: "edge-7".into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let _ = stream.message().await.expect("read");
    // A change to another pool: nothing to send, yet the subscriber is current.
    let r = apply(store.as_ref(), &[pool("db", 2, 5)]).await;
    let mut admin = AdminServiceClient::new(channel(&url).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    let info = loop {
        let list = admin
            .list_subscribers(pb::ListSubscribersRequest {})
            .await
            .expect("list")
            .into_inner();
        let info = list
            .subscribers
            .into_iter()
            .find(|s| s.proxy_id == "edge-7")
            .expect("listed");
        if info.last_revision_sent == r {
            break info;
        }
        assert!(Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(info.pools, vec!["web".to_string()]);
    assert_eq!(info.labels.get("zone").map(String::as_str), Some("a"));
    assert!(info.peer.starts_with("127.0.0.1:"), "{}", info.peer);
    assert_eq!(info.lag_revisions, 0);
    assert_eq!(info.messages_sent, 1, "the snapshot only");
    assert!(info.bytes_sent > 0);
    token.cancel();
}

/// A proxy whose replica dies while the map churns reconnects elsewhere and
/// never publishes a map with the pool emptied or shrunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_under_churn_never_empties_a_pool() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    apply(store.as_ref(), &[pool("web", 20, 1)]).await;
    let (a, ta) = start_cp(Arc::clone(&store)).await;
    let (b, tb) = start_cp(Arc::clone(&store)).await;
    let (tx, mut rx) = watch::channel(Arc::new(HealthMap::default()));
    let metrics = Arc::new(trackwire_data_plane::metrics::Metrics::default());
    let follow = CancellationToken::new();
    tokio::spawn(trackwire_data_plane::subscribe::run(
        trackwire_data_plane::subscribe::SubscribeConfig {
            control_plane: vec![a, b],
            pools: vec!["web".into()],
            proxy_id: "churn".into(),
            state_dir: None,
            tls: None,
        },
        tx,
        Arc::clone(&metrics),
        follow.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx
        .borrow_and_update()
        .pools
        .get("web")
        .is_none_or(|p| p.len() != 20)
    {
        assert!(Instant::now() < deadline, "no initial map");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Churn: re-weight continuously while replica A dies.
    let churn_store = Arc::clone(&store);
    let churn = tokio::spawn(async move {
        for i in 0..600u32 {
            apply(churn_store.as_ref(), &[pool("web", 20, 1 + i % 50)]).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    ta.cancel();
    let mut maps = 0;
    while !churn.is_finished() {
        if tokio::time::timeout(Duration::from_millis(50), rx.changed())
            .await
            .is_ok()
        {
            let m = rx.borrow_and_update().clone();
            let n = m.pools.get("web").map(|p| p.len()).unwrap_or(0);
            assert_eq!(n, 20, "pool shrank to {n} at revision {}", m.revision);
            maps += 1;
        }
    }
    assert!(maps > 10, "the proxy kept receiving maps ({maps})");
    assert_eq!(metrics.stream_connected.get(), 1);
    follow.cancel();
    tb.cancel();
}

/// A large snapshot arrives in chunks (`more` on all but the last), and a
/// proxy publishes only the complete map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_snapshots_are_chunked_and_published_whole() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let pools: Vec<PoolSpec> = (0..30).map(|i| pool(&format!("p{i}"), 100, 1)).collect();
    apply(store.as_ref(), &pools).await;
    let (url, token) = start_cp(Arc::clone(&store)).await;
    let mut client = HealthMapServiceClient::new(channel(&url).await);
    let mut stream = client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let mut chunks = Vec::new();
    loop {
        let m = stream.message().await.expect("read").expect("message");
        let more = m.more;
        chunks.push(m);
        if !more {
            break;
        }
    }
    assert!(
        chunks.len() >= 3,
        "3,000 endpoints in {} messages",
        chunks.len()
    );
    assert!(chunks[0].snapshot && chunks[1..].iter().all(|c| !c.snapshot));
    let endpoints: usize = chunks
        .iter()
        .flat_map(|c| &c.pools)
        .map(|p| p.upserts.len())
        .sum();
    assert_eq!(endpoints, 3_000);

    let (tx, mut rx) = watch::channel(Arc::new(HealthMap::default()));
    let follow = CancellationToken::new();
    tokio::spawn(trackwire_data_plane::subscribe::run(
        trackwire_data_plane::subscribe::SubscribeConfig {
            control_plane: vec![url],
            pools: (0..30).map(|i| format!("p{i}")).collect(),
            proxy_id: "big".into(),
            state_dir: None,
            tls: None,
        },
        tx,
        Arc::new(trackwire_data_plane::metrics::Metrics::default()),
        follow.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("a map within 10s")
        .expect("open");
    let m = rx.borrow_and_update().clone();
    let n: usize = m.pools.values().map(|p| p.len()).sum();
    assert_eq!(n, 3_000, "the first map published is complete");
    follow.cancel();
    token.cancel();
}
