//! The store contract: one suite, run against `MemStore` and against
//! `EtcdStore` on a real etcd server started by the test harness.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use trackwire_control_plane::store::{
    Compare, EtcdOptions, EtcdStore, MemStore, Op, Store, StoreError, WatchEvent, WatchStream,
};
use trackwire_testkit::EtcdCluster;

/// Keeps the etcd server (if any) alive for the test's duration.
struct Fixture {
    store: Arc<dyn Store>,
    _etcd: Option<EtcdCluster>,
}

async fn mem() -> Fixture {
    Fixture {
        store: Arc::new(MemStore::new()),
        _etcd: None,
    }
}

async fn etcd() -> Fixture {
    let cluster = EtcdCluster::start();
    let store = EtcdStore::connect(&EtcdOptions::new(cluster.endpoints()))
        .await
        .expect("connect to the test etcd");
    Fixture {
        store: Arc::new(store),
        _etcd: Some(cluster),
    }
}

/// Receives watch events until `n` have arrived, or fails after 5 s.
async fn next_events(w: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < n {
        let batch = tokio::time::timeout_at(deadline, w.recv())
            .await
            .expect("watch events within 5s")
            .expect("watch open")
            .expect("watch batch");
        out.extend(batch.events);
    }
    out
}

async fn put_get_list(s: Arc<dyn Store>) {
    let r0 = s.revision().await.expect("revision");
    let r1 = s.put("/t/a", b"1".to_vec(), None).await.expect("put a");
    assert_eq!(r1, r0 + 1, "each write is one revision");
    let r2 = s
        .put("/t/a", b"2".to_vec(), None)
        .await
        .expect("put a again");
    s.put("/t/b", b"3".to_vec(), None).await.expect("put b");
    s.put("/u/c", b"4".to_vec(), None)
        .await
        .expect("put outside the prefix");
    let a = s.get("/t/a").await.expect("get").expect("a exists");
    assert_eq!(a.value, b"2");
    assert_eq!(a.create_revision, r1, "create revision survives updates");
    assert_eq!(a.mod_revision, r2);
    assert_eq!(s.get("/t/missing").await.expect("get"), None);
    let (kvs, rev) = s.list("/t/").await.expect("list");
    assert_eq!(
        kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["/t/a", "/t/b"]
    );
    assert_eq!(rev, r0 + 4);
}

async fn delete(s: Arc<dyn Store>) {
    s.put("/t/a", b"1".to_vec(), None).await.expect("put");
    let before = s.revision().await.expect("revision");
    assert_eq!(
        s.delete("/t/missing").await.expect("delete missing"),
        before,
        "deleting nothing is no write"
    );
    assert_eq!(s.delete("/t/a").await.expect("delete"), before + 1);
    assert_eq!(s.get("/t/a").await.expect("get"), None);
}

async fn txn_compares(s: Arc<dyn Store>) {
    let r = s.put("/t/a", b"1".to_vec(), None).await.expect("put");
    let ok = s
        .txn(
            vec![
                Compare::ModRevision("/t/a".into(), r),
                Compare::Absent("/t/b".into()),
            ],
            vec![
                Op::Put {
                    key: "/t/a".into(),
                    value: b"2".to_vec(),
                    lease: None,
                },
                Op::Put {
                    key: "/t/b".into(),
                    value: b"x".to_vec(),
                    lease: None,
                },
            ],
        )
        .await
        .expect("txn");
    assert!(ok.succeeded);
    assert_eq!(ok.revision, r + 1, "a transaction is one revision");
    let stale = s
        .txn(
            vec![Compare::ModRevision("/t/a".into(), r)],
            vec![Op::Delete("/t/b".into())],
        )
        .await
        .expect("txn");
    assert!(!stale.succeeded, "stale compare fails");
    assert_eq!(stale.revision, ok.revision, "a failed txn writes nothing");
    assert!(s.get("/t/b").await.expect("get").is_some());
    let exists = s
        .txn(
            vec![Compare::Absent("/t/a".into())],
            vec![Op::Delete("/t/a".into())],
        )
        .await
        .expect("txn");
    assert!(!exists.succeeded);
}

async fn watch_from_revision(s: Arc<dyn Store>) {
    let r1 = s.put("/t/a", b"1".to_vec(), None).await.expect("put");
    s.put("/u/x", b"-".to_vec(), None)
        .await
        .expect("put outside");
    s.put("/t/b", b"2".to_vec(), None).await.expect("put");
    // From the past: replays /t/a and /t/b, not /u/x.
    let mut w = s.watch("/t/", r1).await.expect("watch");
    let past = next_events(&mut w, 2).await;
    assert_eq!(
        past.iter().map(WatchEvent::key).collect::<Vec<_>>(),
        ["/t/a", "/t/b"]
    );
    // Then live events, in order, with their revisions.
    let r4 = s.put("/t/c", b"3".to_vec(), None).await.expect("put");
    let r5 = s.delete("/t/a").await.expect("delete");
    let live = next_events(&mut w, 2).await;
    assert!(matches!(&live[0], WatchEvent::Put(kv) if kv.key == "/t/c" && kv.mod_revision == r4));
    assert_eq!(
        live[1],
        WatchEvent::Delete {
            key: "/t/a".into(),
            mod_revision: r5
        }
    );
}

async fn leases(s: Arc<dyn Store>) {
    let lease = s.grant_lease(Duration::from_secs(5)).await.expect("grant");
    s.put("/t/a", b"1".to_vec(), Some(lease))
        .await
        .expect("put a");
    s.put("/t/b", b"2".to_vec(), Some(lease))
        .await
        .expect("put b");
    s.put("/t/keep", b"3".to_vec(), None)
        .await
        .expect("put keep");
    assert_eq!(s.get("/t/a").await.expect("get").expect("a").lease, lease);
    s.keep_alive(lease).await.expect("keep alive");
    let before = s.revision().await.expect("revision");
    let mut w = s.watch("/t/", before + 1).await.expect("watch");
    s.revoke(lease).await.expect("revoke");
    let events = next_events(&mut w, 2).await;
    assert!(
        events
            .iter()
            .all(|e| matches!(e, WatchEvent::Delete { .. }))
    );
    assert!(
        events.iter().all(|e| e.revision() == before + 1),
        "a revoke deletes all its keys in one revision"
    );
    assert_eq!(s.get("/t/a").await.expect("get"), None);
    assert!(s.get("/t/keep").await.expect("get").is_some());
    assert_eq!(
        s.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    assert!(matches!(
        s.put("/t/z", b"1".to_vec(), Some(lease)).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

async fn lease_expiry(s: Arc<dyn Store>) {
    let lease = s.grant_lease(Duration::from_secs(1)).await.expect("grant");
    s.put("/t/a", b"1".to_vec(), Some(lease))
        .await
        .expect("put");
    // Rebinding a key to another lease detaches it from the first.
    let other = s.grant_lease(Duration::from_secs(30)).await.expect("grant");
    s.put("/t/b", b"1".to_vec(), Some(lease))
        .await
        .expect("put");
    s.put("/t/b", b"2".to_vec(), Some(other))
        .await
        .expect("rebind");
    let deadline = Instant::now() + Duration::from_secs(8);
    while s.get("/t/a").await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "lease did not expire within 8s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        s.get("/t/b").await.expect("get").is_some(),
        "a key rebound to a live lease survives the old lease's expiry"
    );
}

macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod mem_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let f = super::mem().await;
                    super::$test(f.store.clone()).await;
                }
            )*
        }
        mod etcd_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let f = super::etcd().await;
                    super::$test(f.store.clone()).await;
                }
            )*
        }
    };
}

contract!(
    put_get_list,
    delete,
    txn_compares,
    watch_from_revision,
    leases,
    lease_expiry
);

/// MemStore's lease expiry runs on tokio time: with the clock paused, a lease
/// expires exactly when its TTL has passed, without waiting in real time.
#[tokio::test(start_paused = true)]
async fn mem_lease_expiry_follows_tokio_time() {
    let s = MemStore::new();
    let lease = s.grant_lease(Duration::from_secs(10)).await.expect("grant");
    s.put("/t/a", b"1".to_vec(), Some(lease))
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(s.get("/t/a").await.expect("get").is_some());
    s.keep_alive(lease).await.expect("keep alive");
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        s.get("/t/a").await.expect("get").is_some(),
        "keep-alive renewed the TTL"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(s.get("/t/a").await.expect("get").is_none());
}
