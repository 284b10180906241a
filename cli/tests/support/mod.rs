//! A fleet in one test process: control planes on a store, real probe
//! agents, a proxy's map subscription, and waits on conditions with deadlines.

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trackwire_control_plane::store::{EtcdOptions, EtcdStore, Store};
use trackwire_core::HealthMap;
use trackwire_proto::v1::admin_service_client::AdminServiceClient;
use trackwire_transport::{Role, Side, Tls, TlsFiles};

/// Logs to the test's output (shown when it fails), filtered by `RUST_LOG`
/// (default `info`).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

pub async fn etcd_store(endpoints: Vec<String>) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(&EtcdOptions::new(endpoints))
            .await
            .expect("connect etcd"),
    )
}

pub struct Cp {
    pub url: String,
    pub http: String,
    pub token: CancellationToken,
    pub done: tokio::task::JoinHandle<Result<(), trackwire_control_plane::Error>>,
}

impl Cp {
    /// Stops the control plane and waits until it has let go of everything.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.done).await;
    }
}

pub async fn start_cp(store: Arc<dyn Store>, config: trackwire_control_plane::Config) -> Cp {
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start_cp_on(store, config, grpc).await
}

/// Starts a control plane serving gRPC on `grpc` (e.g. a restarted one on
/// the address of the one it replaces).
pub async fn start_cp_on(
    store: Arc<dyn Store>,
    config: trackwire_control_plane::Config,
    grpc: TcpListener,
) -> Cp {
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", grpc.local_addr().expect("addr"));
    let http_url = format!("http://{}", http.local_addr().expect("addr"));
    let token = CancellationToken::new();
    let done = tokio::spawn(trackwire_control_plane::run(
        config,
        store,
        trackwire_control_plane::Listeners {
            grpc,
            http: Some(http),
            agent_check: None,
        },
        token.clone(),
    ));
    Cp {
        url,
        http: http_url,
        token,
        done,
    }
}

/// Starts a real probe agent whose state dir is `dir`; returns its stop
/// token and its id (read from the state dir).
pub async fn start_agent(
    endpoints: Vec<String>,
    zone: &str,
    dir: &Path,
) -> (CancellationToken, String) {
    let token = CancellationToken::new();
    tokio::spawn(trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: endpoints,
            zone: zone.into(),
            state_dir: Some(dir.to_path_buf()),
            heartbeat: Duration::from_millis(300),
            tls: None,
        },
        None,
        token.clone(),
    ));
    let path = dir.join("agent-id");
    let deadline = Instant::now() + Duration::from_secs(5);
    let id = loop {
        if let Ok(s) = std::fs::read_to_string(&path)
            && !s.trim().is_empty()
        {
            break s.trim().to_string();
        }
        assert!(Instant::now() < deadline, "agent-id not written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    (token, id)
}

/// Follows the health map as a proxy does.
pub fn follow(endpoints: Vec<String>) -> (watch::Receiver<Arc<HealthMap>>, CancellationToken) {
    let (rx, _, token) = follow_with_metrics(endpoints);
    (rx, token)
}

/// [`follow`], also returning the subscription's metrics.
pub fn follow_with_metrics(
    endpoints: Vec<String>,
) -> (
    watch::Receiver<Arc<HealthMap>>,
    Arc<trackwire_data_plane::metrics::Metrics>,
    CancellationToken,
) {
    let (tx, rx) = watch::channel(Arc::new(HealthMap::default()));
    let metrics = Arc::new(trackwire_data_plane::metrics::Metrics::default());
    let token = CancellationToken::new();
    tokio::spawn(trackwire_data_plane::subscribe::run(
        trackwire_data_plane::subscribe::SubscribeConfig {
            control_plane: endpoints,
            pools: vec![],
            proxy_id: "test".into(),
            state_dir: None,
            tls: None,
        },
        tx,
        Arc::clone(&metrics),
        token.clone(),
    ));
    (rx, metrics, token)
}

/// Polls `cond` every 20 ms until it holds; fails the test after `secs`.
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the followed map satisfies `f`; returns that map.
pub async fn wait_map(
    rx: &watch::Receiver<Arc<HealthMap>>,
    what: &str,
    secs: u64,
    f: impl Fn(&HealthMap) -> bool,
) -> Arc<HealthMap> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = rx.borrow().clone();
        if f(&m) {
            return m;
        }
        if Instant::now() >= deadline {
            let mut summary = std::collections::BTreeMap::new();
            for e in m.pools.values().flat_map(|p| p.values()) {
                *summary
                    .entry(format!("{:?} votes={} stale={}", e.state, e.votes, e.stale))
                    .or_insert(0) += 1;
            }
            panic!(
                "timed out waiting for {what} (map at revision {}: {summary:?})",
                m.revision
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn admin(url: &str) -> AdminServiceClient<tonic::transport::Channel> {
    AdminServiceClient::new(
        trackwire_connect::channel(url, None)
            .await
            .expect("connect admin"),
    )
}

/// A throwaway CA for mutual-TLS tests, writing PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: trackwire_transport::pki::Ca,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::for_domain("trackwire.test")
    }

    pub fn for_domain(trust_domain: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = trackwire_transport::pki::Ca::generate(trust_domain, 30).expect("CA");
        std::fs::write(dir.path().join("ca.crt"), &ca.cert_pem).expect("write CA");
        Pki { dir, ca }
    }

    pub fn ca_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Issues (or re-issues) `role`/`name`; control planes get the loopback names.
    pub fn files(&self, role: Role, name: &str) -> TlsFiles {
        let sans: Vec<String> = if role == Role::ControlPlane {
            vec!["127.0.0.1".into(), "localhost".into()]
        } else {
            vec![]
        };
        let leaf = self.ca.issue(role, name, &sans, 5).expect("issue");
        let (cert, key) = leaf.write(self.dir.path(), role, name).expect("write");
        TlsFiles {
            ca: self.ca_path(),
            cert,
            key,
        }
    }

    pub fn server(&self) -> Tls {
        Tls::load(
            self.files(Role::ControlPlane, "cp"),
            Side::Server {
                client_cert_optional: false,
            },
        )
        .expect("server TLS")
    }

    pub fn client(&self, role: Role, name: &str) -> Tls {
        Tls::load(self.files(role, name), Side::Client).expect("client TLS")
    }
}

/// GETs `path` from an HTTP port; (status, body).
pub async fn http_get(base: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

/// One connection through a proxy to a demo backend: the name of the
/// backend that answered.
pub async fn hit(proxy: std::net::SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(proxy)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        buf.lines()
            .find_map(|l| l.strip_prefix("hello from "))
            .map(str::to_string)
            .ok_or_else(|| format!("no backend answered: {buf:?}"))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// A pool of one backend checked with `GET /flip` every `interval`,
/// expecting 200, rise and fall 1 ([`trackwire_testkit::http::TestHttp`]
/// answers what `set_flip` says there).
pub fn flip_pool(
    pool: &str,
    backend: &str,
    address: String,
    interval: Duration,
) -> trackwire_core::PoolSpec {
    use trackwire_core::{BackendSpec, CheckSpec, PoolSpec, StatusSet};
    PoolSpec {
        check: Some(CheckSpec {
            path: "/flip".into(),
            expect_status: StatusSet::single(200),
            rise: 1,
            fall: 1,
            ..CheckSpec::every(interval)
        }),
        ..PoolSpec::new(pool, vec![BackendSpec::new(backend, address)])
    }
}

/// Applies `pools` through `admin`, failing the test on an error.
pub async fn apply_pools(
    admin: &mut AdminServiceClient<tonic::transport::Channel>,
    pools: &[trackwire_core::PoolSpec],
) {
    admin
        .apply_pools(trackwire_proto::v1::ApplyPoolsRequest {
            pools: pools
                .iter()
                .map(trackwire_core::convert::pool_to_pb)
                .collect(),
            ..Default::default()
        })
        .await
        .expect("apply");
}

/// Runs a real probe agent in zone `a` (no state dir, 300 ms heartbeat)
/// against `url` until the returned token is cancelled.
pub fn run_agent(url: &str, tls: Option<Tls>) -> CancellationToken {
    let token = CancellationToken::new();
    tokio::spawn(trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: vec![url.to_string()],
            zone: "a".into(),
            state_dir: None,
            heartbeat: Duration::from_millis(300),
            tls,
        },
        None,
        token.clone(),
    ));
    token
}

/// One HTTP/1.0 request through a proxy (HAProxy, Envoy, …) to a
/// [`trackwire_testkit::http::TestHttp`] backend: whether it answered 200.
pub async fn ok_through(proxy: std::net::SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(proxy).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
    out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200")
}

/// Requests for `path` a test backend received.
pub fn hits(http: &trackwire_testkit::http::TestHttp, path: &str) -> usize {
    http.requests().iter().filter(|(p, _)| p == path).count()
}
