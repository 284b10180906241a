//! End to end, on real sockets: demo HTTP backends, the control plane (on
//! MemStore and on a real etcd), a probe agent and a data-plane proxy, all
//! talking gRPC over loopback. Each scenario asserts the four behaviours of
//! the vertical slice: spread over UP backends, mark-down within
//! `fall × interval + 1 s` with no failed connection, return after `rise`
//! successes, and routing that survives the control plane going away.

mod support;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::hit;

use support::Pki;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trackwire_cli::demo::DemoBackend;
use trackwire_control_plane::store::EtcdTls;
use trackwire_control_plane::store::{EtcdOptions, EtcdStore, MemStore, Store};
use trackwire_core::config::ListenerSpec;
use trackwire_core::convert::pool_to_pb;
use trackwire_core::{BackendSpec, CheckSpec, PoolSpec, StatusSet};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::admin_service_client::AdminServiceClient;
use trackwire_testkit::EtcdCluster;
use trackwire_testkit::etcd::EtcdTlsFiles;
use trackwire_transport::Role;

const INTERVAL: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 3;

struct Stack {
    backends: Vec<DemoBackend>,
    proxy: SocketAddr,
    cp_token: CancellationToken,
    cp: Option<JoinHandle<Result<(), trackwire_control_plane::Error>>>,
    /// The agent and the proxy.
    others: CancellationToken,
    backend_token: CancellationToken,
}

impl Stack {
    /// Stops the control plane and waits until it has exited cleanly.
    async fn stop_control_plane(&mut self) {
        self.cp_token.cancel();
        if let Some(cp) = self.cp.take() {
            tokio::time::timeout(Duration::from_secs(10), cp)
                .await
                .expect("control plane stops within 10s")
                .expect("join")
                .expect("control plane exits cleanly");
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cp_token.cancel();
        self.others.cancel();
        self.backend_token.cancel();
    }
}

async fn local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback")
}

fn pool(backends: &[DemoBackend]) -> PoolSpec {
    PoolSpec {
        check: Some(CheckSpec {
            path: "/readyz".into(),
            expect_status: StatusSet::single(200),
            rise: RISE,
            fall: FALL,
            ..CheckSpec::every(INTERVAL)
        }),
        ..PoolSpec::new(
            "web",
            backends
                .iter()
                .map(|b| BackendSpec::new(&b.name, b.addr.to_string()))
                .collect(),
        )
    }
}

/// Starts the fleet; with `pki`, every gRPC link is mutual TLS.
async fn start(
    store: Arc<dyn Store>,
    state_dir: Option<std::path::PathBuf>,
    pki: Option<&Pki>,
) -> Stack {
    let backend_token = CancellationToken::new();
    let mut backends = Vec::new();
    for i in 1..=3 {
        backends.push(
            DemoBackend::spawn(
                &format!("backend-{i}"),
                local().await,
                backend_token.clone(),
            )
            .expect("demo backend"),
        );
    }
    let grpc = local().await;
    let scheme = if pki.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", grpc.local_addr().expect("addr"));
    let cp_token = CancellationToken::new();
    let cp = tokio::spawn(trackwire_control_plane::run(
        trackwire_control_plane::Config {
            tls: pki.map(Pki::server),
            ..Default::default()
        },
        store,
        trackwire_control_plane::Listeners {
            grpc,
            http: None,
            agent_check: None,
        },
        cp_token.clone(),
    ));

    // Apply the pool through the public AdminService, as `trackwire apply` does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin_tls = pki.map(|p| p.client(Role::Admin, "ops"));
    let mut admin = loop {
        match trackwire_connect::channel(&url, admin_tls.as_ref()).await {
            Ok(c) => break AdminServiceClient::new(c),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "control plane did not answer: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    admin
        .apply_pools(pb::ApplyPoolsRequest {
            pools: vec![pool_to_pb(&pool(&backends))],
            expected_revision: 0,
            dry_run: false,
        })
        .await
        .expect("apply pools");

    let others = CancellationToken::new();
    tokio::spawn(trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: vec![url.clone()],
            zone: "a".into(),
            state_dir: None,
            heartbeat: Duration::from_millis(500),
            tls: pki.map(|p| p.client(Role::Agent, "agent-1")),
        },
        None,
        others.clone(),
    ));
    let listeners = trackwire_data_plane::bind(&[web_listener()])
        .await
        .expect("bind proxy");
    let proxy = listeners[0].local_addr().expect("proxy addr");
    tokio::spawn(trackwire_data_plane::run(
        trackwire_data_plane::Config {
            control_plane: vec![url],
            listeners: listeners.iter().map(|l| l.spec.clone()).collect(),
            state_dir,
            proxy_id: "e2e".into(),
            drain_grace: Duration::from_secs(1),
            workers: 0,
            tls: pki.map(|p| p.client(Role::Proxy, "e2e")),
        },
        listeners,
        None,
        others.clone(),
    ));
    Stack {
        backends,
        proxy,
        cp_token,
        cp: Some(cp),
        others,
        backend_token,
    }
}

/// The proxy listener of these tests: defaults, on a free loopback port.
fn web_listener() -> ListenerSpec {
    ListenerSpec {
        connect_timeout: Duration::from_secs(1),
        ..ListenerSpec::new("web", "127.0.0.1:0".parse().expect("addr"), "web")
    }
}

async fn spread(proxy: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let b = hit(proxy)
            .await
            .unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        *counts.entry(b).or_insert(0) += 1;
    }
    counts
}

async fn scenario(store: Arc<dyn Store>, pki: Option<&Pki>) {
    let mut stack = start(store, None, pki).await;
    let proxy = stack.proxy;

    // 1. All three UP: 300 connections reach all three.
    wait_all_up(proxy).await;
    let counts = spread(proxy, 300).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (b, n) in &counts {
        assert!(
            *n >= 90,
            "round robin should spread evenly: {b} got {n} of 300"
        );
    }

    // 2. backend-2's /readyz answers 503: within fall × interval + 1 s no new
    // connection reaches it, and no connection fails meanwhile.
    stack.backends[1].set_ready(false);
    let t0 = Instant::now();
    let bound = INTERVAL * FALL + Duration::from_secs(1);
    let mut last_b2 = None;
    while t0.elapsed() < bound {
        let b = hit(proxy)
            .await
            .expect("no connection fails while backend-2 goes down");
        if b == "backend-2" {
            last_b2 = Some(t0.elapsed());
        }
    }
    let after = spread(proxy, 60).await;
    assert!(
        !after.contains_key("backend-2"),
        "backend-2 still gets connections {bound:?} after failing (last at {last_b2:?}): {after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");

    // 3. backend-2 answers 200 again: it gets connections after `rise` successes.
    stack.backends[1].set_ready(true);
    let t1 = Instant::now();
    loop {
        if hit(proxy).await.expect("connection") == "backend-2" {
            break;
        }
        assert!(
            t1.elapsed() < INTERVAL * (RISE + 1) + Duration::from_secs(2),
            "backend-2 did not come back"
        );
    }

    // 4. The control plane stops: the proxy keeps routing on its last map,
    // to all three backends (all UP when it went away).
    stack.stop_control_plane().await;
    let counts = spread(proxy, 90).await;
    assert_eq!(counts.len(), 3, "all UP backends still used: {counts:?}");
}

async fn wait_all_up(proxy: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut seen = HashMap::new();
        for _ in 0..12 {
            if let Ok(b) = hit(proxy).await {
                *seen.entry(b).or_insert(0) += 1;
            }
        }
        if seen.len() == 3 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backends not all UP within 10s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn etcd_store(cluster: &EtcdCluster) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(&EtcdOptions::new(cluster.endpoints()))
            .await
            .expect("connect etcd"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vertical_slice_on_memstore() {
    scenario(Arc::new(MemStore::new()), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vertical_slice_on_etcd() {
    let etcd = EtcdCluster::start();
    scenario(etcd_store(&etcd).await, None).await;
}

/// The same slice with mutual TLS on every gRPC link (agent, proxy and
/// admin certificates) and on the link to etcd, which requires a client
/// certificate (`--client-cert-auth`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vertical_slice_with_mtls_everywhere_on_etcd_over_mtls() {
    let pki = Pki::new();
    let server = pki.files(Role::ControlPlane, "etcd");
    let client = pki.files(Role::ControlPlane, "etcd-client");
    let etcd = EtcdCluster::start_tls(&EtcdTlsFiles {
        ca: pki.ca_path(),
        server_cert: server.cert,
        server_key: server.key,
        client_cert: client.cert.clone(),
        client_key: client.key.clone(),
    });
    assert!(etcd.endpoints()[0].starts_with("https://"));
    let read = |p: &std::path::Path| std::fs::read(p).expect("read PEM");
    let tls = EtcdTls {
        ca_pem: read(&pki.ca_path()),
        identity: Some((read(&client.cert), read(&client.key))),
    };
    // Without a client certificate etcd refuses the connection.
    let refused = EtcdStore::connect(&EtcdOptions {
        tls: Some(EtcdTls {
            identity: None,
            ..tls.clone()
        }),
        ..EtcdOptions::new(etcd.endpoints())
    })
    .await;
    assert!(
        refused.is_err(),
        "etcd accepted a client without a certificate"
    );
    let store = EtcdStore::connect(&EtcdOptions {
        tls: Some(tls),
        ..EtcdOptions::new(etcd.endpoints())
    })
    .await
    .expect("connect etcd over mTLS");
    scenario(Arc::new(store), Some(&pki)).await;
}

/// The restart-from-cache scenario with mutual TLS on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_restart_with_mtls_uses_cached_map() {
    let pki = Pki::new();
    restart_from_cache(Some(&pki)).await;
}

/// A proxy restarted while no control plane answers routes on the map it
/// persisted before (fail static across restarts).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_restart_without_control_plane_uses_cached_map() {
    restart_from_cache(None).await;
}

async fn restart_from_cache(pki: Option<&Pki>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stack = start(
        Arc::new(MemStore::new()),
        Some(dir.path().to_path_buf()),
        pki,
    )
    .await;
    wait_all_up(stack.proxy).await;
    // Wait until the cache on disk has all three backends UP.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cached = trackwire_data_plane::cache::load(dir.path()).expect("readable cache");
        let up = cached
            .and_then(|c| {
                c.map
                    .pools
                    .get("web")
                    .map(|p| p.values().filter(|e| e.routable()).count())
            })
            .unwrap_or(0);
        if up == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "cache never held 3 UP backends");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stop the control plane, the agent and the old proxy; keep the backends.
    stack.stop_control_plane().await;
    stack.others.cancel();

    // A new proxy pointed at a control plane that does not exist.
    let dead = local().await;
    let scheme = if pki.is_some() { "https" } else { "http" };
    let dead_url = format!("{scheme}://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let listeners = trackwire_data_plane::bind(&[web_listener()])
        .await
        .expect("bind");
    let proxy = listeners[0].local_addr().expect("addr");
    let token = CancellationToken::new();
    let specs = listeners.iter().map(|l| l.spec.clone()).collect();
    tokio::spawn(trackwire_data_plane::run(
        trackwire_data_plane::Config {
            control_plane: vec![dead_url],
            listeners: specs,
            state_dir: Some(dir.path().to_path_buf()),
            proxy_id: "restarted".into(),
            drain_grace: Duration::from_secs(1),
            workers: 0,
            tls: pki.map(|p| p.client(Role::Proxy, "restarted")),
        },
        listeners,
        None,
        token.clone(),
    ));
    // It listens once it has loaded the cached map.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(proxy).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the restarted proxy never listened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counts = spread(proxy, 30).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    token.cancel();
}
