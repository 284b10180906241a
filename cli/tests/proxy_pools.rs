//! A proxy's pools against real control planes on MemStore (two MemStores
//! are two store epochs): a listener naming a pool the map lacks keeps the
//! proxy unready and does not listen; a new epoch without a served pool
//! keeps that pool, flagged stale, until the new store has it; a deletion
//! within one epoch still removes it.

mod support;
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::hit;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trackwire_cli::demo::DemoBackend;
use trackwire_control_plane::keys::Keys;
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::config::ListenerSpec;
use trackwire_core::{BackendSpec, PoolSpec};
use trackwire_proto::v1 as pb;

async fn local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback")
}

/// A control plane on `store`: its URL, and the token that stops it.
async fn control_plane(
    store: Arc<dyn Store>,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), trackwire_control_plane::Error>>,
) {
    let grpc = local().await;
    let url = format!("http://{}", grpc.local_addr().expect("addr"));
    let token = CancellationToken::new();
    let task = tokio::spawn(trackwire_control_plane::run(
        trackwire_control_plane::Config::default(),
        store,
        trackwire_control_plane::Listeners {
            grpc,
            http: None,
            agent_check: None,
        },
        token.clone(),
    ));
    (url, token, task)
}

/// An unchecked pool (always UP) over `backends`.
fn pool(name: &str, backends: &[&DemoBackend]) -> PoolSpec {
    PoolSpec::new(
        name,
        backends
            .iter()
            .map(|b| BackendSpec::new(&b.name, b.addr.to_string()))
            .collect(),
    )
}

async fn apply(store: &dyn Store, pools: &[PoolSpec]) {
    let keys = Keys::new("/trackwire/").expect("prefix");
    trackwire_control_plane::writes::apply(store, &keys, pools, 0, false)
        .await
        .expect("apply");
}

async fn backends(n: usize, token: &CancellationToken) -> Vec<DemoBackend> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(DemoBackend::spawn(&format!("b{i}"), local().await, token.clone()).expect("demo"));
    }
    out
}

struct Proxy {
    /// Listener addresses, in the order given.
    addrs: Vec<SocketAddr>,
    http: SocketAddr,
    token: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The whole data plane, with an HTTP port; `listeners` are (name, pool).
async fn proxy(
    endpoints: Vec<String>,
    listeners: &[(&str, &str)],
    state_dir: Option<std::path::PathBuf>,
) -> Proxy {
    let specs: Vec<ListenerSpec> = listeners
        .iter()
        .map(|(name, pool)| ListenerSpec {
            connect_timeout: Duration::from_secs(1),
            ..ListenerSpec::new(name, "127.0.0.1:0".parse().expect("addr"), pool)
        })
        .collect();
    let bound = trackwire_data_plane::bind(&specs).await.expect("bind");
    let addrs = bound
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect();
    let http = local().await;
    let http_addr = http.local_addr().expect("addr");
    let token = CancellationToken::new();
    tokio::spawn(trackwire_data_plane::run(
        trackwire_data_plane::Config {
            control_plane: endpoints,
            listeners: specs,
            state_dir,
            proxy_id: "pools-test".into(),
            drain_grace: Duration::from_secs(1),
            workers: 0,
            tls: None,
        },
        bound,
        Some(http),
        token.clone(),
    ));
    Proxy {
        addrs,
        http: http_addr,
        token,
    }
}

/// GET `path` on the proxy's HTTP port: (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
        .unwrap_or((0, String::new()))
}

/// The value of a gauge on the proxy's `/metrics`.
async fn gauge(addr: SocketAddr, name: &str) -> Option<u64> {
    let (_, body) = get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `check` until it returns `Some`, failing after `secs` seconds.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {secs}s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The backends `n` connections reach; every one must succeed.
async fn reached(addr: SocketAddr, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for i in 0..n {
        seen.insert(
            hit(addr)
                .await
                .unwrap_or_else(|e| panic!("connection {i} failed: {e}")),
        );
    }
    seen
}

/// Like [`reached`], but `None` when a connection fails (not routing yet).
async fn try_reached(addr: SocketAddr, n: usize) -> Option<HashSet<String>> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        seen.insert(hit(addr).await.ok()?);
    }
    Some(seen)
}

fn set(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_for_a_missing_pool_is_unready_and_does_not_listen() {
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let b = backends(2, &stop).await;
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    apply(store.as_ref(), &[pool("web", &[&b[0]])]).await;
    let (url, cp, _) = control_plane(Arc::clone(&store)).await;
    let _cp = cp.drop_guard();
    let p = proxy(vec![url], &[("web", "web"), ("typo", "wbe")], None).await;

    // The listener whose pool exists serves.
    eventually(10, "the web listener routes", || async {
        hit(p.addrs[0]).await.ok()
    })
    .await;
    // The proxy holds a map without "wbe": not ready, saying which pool and
    // listener, and the typo listener takes no connection it would reset.
    let (code, body) = get(p.http, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        body,
        "pool \"wbe\" (listener \"typo\") is not in the health map\n"
    );
    assert!(
        TcpStream::connect(p.addrs[1]).await.is_err(),
        "the typo listener listens"
    );
    eventually(5, "pools_missing is 1", || async {
        (gauge(p.http, "trackwire_proxy_pools_missing").await == Some(1)).then_some(())
    })
    .await;
    assert_eq!(
        gauge(p.http, "trackwire_proxy_listeners_listening").await,
        Some(1)
    );

    // Once the pool is applied, the listener listens and the proxy is ready.
    apply(store.as_ref(), &[pool("wbe", &[&b[1]])]).await;
    let name = eventually(10, "the typo listener routes", || async {
        hit(p.addrs[1]).await.ok()
    })
    .await;
    assert_eq!(name, "b2");
    let (code, body) = get(p.http, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    assert_eq!(
        gauge(p.http, "trackwire_proxy_pools_missing").await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_without_a_served_pool_keeps_it_stale() {
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let b = backends(3, &stop).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Epoch A has pool "web"; epoch B (a rebuilt, empty store) has nothing.
    let store_a: Arc<dyn Store> = Arc::new(MemStore::new());
    apply(store_a.as_ref(), &[pool("web", &[&b[0], &b[1]])]).await;
    let store_b: Arc<dyn Store> = Arc::new(MemStore::new());
    assert_ne!(store_a.epoch(), store_b.epoch());
    let (url_a, cp_a, task_a) = control_plane(Arc::clone(&store_a)).await;
    let (url_b, cp_b, _) = control_plane(Arc::clone(&store_b)).await;
    let _cp_b = cp_b.drop_guard();
    let p = proxy(
        vec![url_a, url_b.clone()],
        &[("web", "web")],
        Some(dir.path().to_path_buf()),
    )
    .await;
    eventually(10, "both backends routed", || async {
        (try_reached(p.addrs[0], 6).await? == set(&["b1", "b2"])).then_some(())
    })
    .await;

    // The proxy fails over to the control plane of the new epoch.
    cp_a.cancel();
    tokio::time::timeout(Duration::from_secs(10), task_a)
        .await
        .expect("control plane A stops")
        .expect("join")
        .expect("clean exit");
    eventually(15, "pools_stale is 1", || async {
        (gauge(p.http, "trackwire_proxy_pools_stale").await == Some(1)).then_some(())
    })
    .await;
    // It still routes to both backends, is ready, and says the pool is stale.
    assert_eq!(reached(p.addrs[0], 6).await, set(&["b1", "b2"]));
    let (code, body) = get(p.http, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("pool \"web\" is stale"), "{body}");
    // The cache says so too, so a restart keeps the pool stale.
    let cached = trackwire_data_plane::cache::load(dir.path())
        .expect("readable")
        .expect("cached");
    assert_eq!(cached.map.epoch, store_b.epoch());
    assert_eq!(cached.stale, BTreeSet::from(["web".to_string()]));
    assert_eq!(cached.map.pools["web"].len(), 2);

    // The new epoch gets the pool (different backends): it replaces the
    // stale copy entirely, and the flag is cleared.
    apply(store_b.as_ref(), &[pool("web", &[&b[2]])]).await;
    eventually(10, "only b3 routed", || async {
        (reached(p.addrs[0], 6).await == set(&["b3"])).then_some(())
    })
    .await;
    assert_eq!(gauge(p.http, "trackwire_proxy_pools_stale").await, Some(0));
    let (code, body) = get(p.http, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    // Deleted by an operator within the epoch: it goes, as before.
    let mut admin = trackwire_cli::admin::connect_urls(&[url_b])
        .await
        .expect("admin");
    admin
        .delete_pool(pb::DeletePoolRequest { name: "web".into() })
        .await
        .expect("delete pool");
    let (code, body) = eventually(10, "unready without web", || async {
        let (code, body) = get(p.http, "/readyz").await;
        (code == 503).then_some((code, body))
    })
    .await;
    assert_eq!(
        (code, body.as_str()),
        (
            503,
            "pool \"web\" (listener \"web\") is not in the health map\n"
        )
    );
    assert_eq!(gauge(p.http, "trackwire_proxy_pools_stale").await, Some(0));
    assert!(hit(p.addrs[0]).await.is_err(), "routed without a pool");
}
