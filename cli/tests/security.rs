//! Security of the gRPC and HTTP ports on real loopback sockets, with
//! certificates generated per test: mutual TLS for every role, refused
//! handshakes (plaintext, no certificate, another CA, expired, not yet
//! valid, another trust domain, no or two identities) counted in
//! `/metrics`, the role table method by method, ids bound to certificates,
//! verdicts only about the sender's assignment, the admin bearer token
//! (on a plaintext port, and in place of a certificate on a TLS one),
//! reloading (and refusing) TLS material under open streams, a CA rollover,
//! the expiry gauge, and the accept loops' deadlines for silent peers.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use trackwire_control_plane::Config;
use trackwire_control_plane::keys::{Keys, decode_verdict};
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::convert::{pool_to_pb, target_fingerprint};
use trackwire_core::limits::{HttpLimits, ServerLimits};
use trackwire_core::{BackendSpec, CheckSpec, HealthMap, HealthState, PoolSpec};
use trackwire_proto::v1 as pb;
use trackwire_proto::v1::admin_service_client::AdminServiceClient;
use trackwire_proto::v1::health_map_service_client::HealthMapServiceClient;
use trackwire_proto::v1::probe_service_client::ProbeServiceClient;
use trackwire_testkit::http::TestHttp;
use trackwire_transport::identity::Validity;
use trackwire_transport::pki::{Leaf, LeafSpec};
use trackwire_transport::{Role, Side, Tls, TlsFiles, Token};

use support::*;

const TRUST_DOMAIN: &str = "trackwire.test";
const DAY: Duration = Duration::from_secs(86_400);
const HANDSHAKE_FAILURES: &str = "trackwire_tls_handshake_failures_total";
const DROPPED_HANDSHAKE: &str = "trackwire_grpc_connections_dropped_total{reason=\"handshake\"}";
const DROPPED_PREFACE: &str = "trackwire_grpc_connections_dropped_total{reason=\"preface\"}";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn mem() -> Arc<dyn Store> {
    Arc::new(MemStore::new())
}

fn keys() -> Keys {
    Keys::new("/trackwire/").expect("prefix")
}

/// The control plane's gRPC URL with the TLS scheme.
fn https(cp: &Cp) -> String {
    cp.url.replacen("http://", "https://", 1)
}

/// `host:port` of the control plane's gRPC port.
fn grpc_addr(cp: &Cp) -> String {
    cp.url.trim_start_matches("http://").to_string()
}

fn tls_config(tls: Tls) -> Config {
    Config {
        tls: Some(tls),
        ..Default::default()
    }
}

/// A control plane on `store` serving mutual TLS with a new CA's
/// certificate: the CA, the server's TLS material, the control plane and
/// its `https://` URL.
async fn start_mtls(store: Arc<dyn Store>) -> (Pki, Tls, Cp, String) {
    let pki = Pki::new();
    let tls = pki.server();
    let cp = start_cp(store, tls_config(tls.clone())).await;
    let url = https(&cp);
    (pki, tls, cp, url)
}

/// Fails the test when `fut` takes longer than `secs`.
async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {secs}s"))
}

/// `e` is PermissionDenied, its message naming each of `words`.
fn expect_denied_naming(e: &Status, words: &[&str]) {
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(
        words.iter().all(|w| e.message().contains(w)),
        "{}",
        e.message()
    );
}

/// Whether `store` holds `key`.
async fn stored(store: &dyn Store, key: &str) -> bool {
    store.get(key).await.expect("get").is_some()
}

/// The ids ListAgents answers with.
async fn agent_ids(admin: &AdminServiceClient<Channel>) -> Result<Vec<String>, Status> {
    let agents = admin
        .clone()
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    Ok(agents.into_iter().map(|a| a.agent_id).collect())
}

/// The agents GetHealth shows voting on `pool`'s backends whose name
/// `backend` accepts (`None` for a backend without an endpoint).
async fn voters(
    admin: &AdminServiceClient<Channel>,
    pool: &str,
    backend: impl Fn(Option<&str>) -> bool,
) -> Vec<String> {
    let health = admin
        .clone()
        .get_health(pb::GetHealthRequest { pool: pool.into() })
        .await
        .expect("get health")
        .into_inner();
    health
        .backends
        .into_iter()
        .filter(|b| backend(b.endpoint.as_ref().map(|e| e.backend.as_str())))
        .flat_map(|b| b.votes.into_iter().map(|v| v.agent_id))
        .collect()
}

async fn admin_tls(url: &str, tls: &Tls) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(
        trackwire_connect::channel(url, Some(tls))
            .await
            .expect("connect admin over mutual TLS"),
    )
}

/// One series' value on the control plane's `/metrics` (`series` is the
/// name with its labels, exactly as exported).
async fn metric(http: &str, series: &str) -> u64 {
    let (status, body) = within(5, "GET /metrics", http_get(http, "/metrics")).await;
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
}

/// Waits until `series` exceeds `before` (the server counts a refused
/// connection on its own task, possibly after the client has given up).
async fn wait_metric_above(http: &str, series: &str, before: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = metric(http, series).await;
        if now > before {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {series} stayed at {now} (was {before})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `series` reaches `at_least` (at least 1).
async fn wait_metric_reaches(http: &str, series: &str, at_least: u64, what: &str) -> u64 {
    wait_metric_above(http, series, at_least - 1, what).await
}

/// Fails unless the server closes each of the (named) `peers` without
/// sending a byte within 1.5 s of `opened`, when they connected.
async fn expect_closed_unanswered<'a>(
    peers: impl IntoIterator<Item = (String, &'a mut TcpStream)>,
    opened: Instant,
) {
    let deadline = opened + Duration::from_millis(1500);
    for (what, s) in peers {
        let mut buf = [0u8; 64];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => panic!("{what}: the server sent {n} bytes"),
            Err(_) => panic!(
                "{what}: still open {:?} after it was made",
                opened.elapsed()
            ),
        }
    }
}

/// The DER of the first PEM block of `pem`.
fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

fn validity_of_pem(pem: &str) -> Validity {
    Validity::of(&pem_der(pem)).expect("certificate parses")
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Opens a new TLS connection with `tls` (client material) and returns the
/// serial of the certificate the server presented.
async fn served_serial(addr: &str, tls: &Tls) -> String {
    use tonic::codegen::Service;
    let mut connector = trackwire_transport::client::TlsConnector::new(tls.clone());
    let uri: tonic::transport::Uri = format!("https://{addr}").parse().expect("uri");
    let io = within(5, "TLS connection", connector.call(uri))
        .await
        .unwrap_or_else(|e| panic!("TLS connection to {addr}: {e}"));
    let (_, session) = io.inner().get_ref();
    let certs = session
        .peer_certificates()
        .expect("the server presented a certificate");
    Validity::of(&certs[0])
        .expect("server certificate parses")
        .serial
}

/// A leaf with exactly the given URI SANs and validity window.
fn odd_leaf(pki: &Pki, uris: Vec<String>, not_before: SystemTime, not_after: SystemTime) -> Leaf {
    pki.ca
        .sign(&LeafSpec {
            common_name: "ops".into(),
            uris,
            sans: vec![],
            not_before,
            not_after,
            server: false,
        })
        .expect("sign")
}

fn admin_uri(trust_domain: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/trackwire/admin/{name}")
}

fn write_leaf(dir: &Path, name: &str, ca: &Path, leaf: &Leaf) -> TlsFiles {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
    std::fs::write(&key, &leaf.key_pem).expect("write key");
    TlsFiles {
        ca: ca.to_path_buf(),
        cert,
        key,
    }
}

/// A TLS channel built by hand (tonic's own rustls client, which checks
/// nothing about its own certificate): trusts `ca_pem`, presents `leaf` if
/// any. `Err` says why it did not connect.
async fn hand_channel(url: &str, ca_pem: &str, leaf: Option<&Leaf>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(l) = leaf {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &l.cert_pem,
            &l.key_pem,
        ));
    }
    Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {}", trackwire_connect::error_chain(&e)))
}

/// A ListPools on `ch`; `Err` names the refusal.
async fn list_pools_on(ch: Channel) -> Result<(), String> {
    AdminServiceClient::new(ch)
        .list_pools(pb::ListPoolsRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// A ListPools over trackwire's own TLS client with `tls`.
async fn tls_list_pools(url: &str, tls: &Tls) -> Result<(), String> {
    list_pools_on(trackwire_connect::channel(url, Some(tls)).await?).await
}

/// Connects (`connect`) and calls ListPools within 8 s; `Err` says why
/// that failed (a timeout counts as a failure).
async fn list_pools_within_8s(
    connect: impl std::future::Future<Output = Result<Channel, String>>,
) -> Result<(), String> {
    let attempt = async { list_pools_on(connect.await?).await };
    tokio::time::timeout(Duration::from_secs(8), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// A ListPools over [`hand_channel`].
async fn hand_call(url: &str, ca_pem: &str, leaf: Option<&Leaf>) -> Result<(), String> {
    list_pools_within_8s(hand_channel(url, ca_pem, leaf)).await
}

/// A plaintext ListPools (on a TLS port it must fail).
async fn plaintext_call(url: &str) -> Result<(), String> {
    list_pools_within_8s(trackwire_connect::channel(url, None)).await
}

fn hello(id: &str, verdicts: Vec<pb::Verdict>) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::AgentHello {
            agent_id: id.into(),
            zone: "z".into(),
            verdicts,
            version: "test".into(),
            instance_id: format!("{id}-instance"),
        })),
    }
}

fn verdict(pool: &str, backend: &str, fingerprint: u64, reason: &str) -> pb::Verdict {
    pb::Verdict {
        pool: pool.into(),
        backend: backend.into(),
        state: pb::HealthState::Up as i32,
        since_ms: 1,
        reason: reason.into(),
        fingerprint,
    }
}

fn subscribe_request(proxy_id: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        proxy_id: proxy_id.into(),
        ..Default::default()
    }
}

/// Subscribes with `req`; Ok once the first message arrived.
async fn first_update(
    ch: Channel,
    req: tonic::Request<pb::SubscribeRequest>,
) -> Result<(), Status> {
    let mut stream = HealthMapServiceClient::new(ch)
        .subscribe(req)
        .await?
        .into_inner();
    match stream.message().await? {
        Some(_) => Ok(()),
        None => Err(Status::unknown("stream ended before its first message")),
    }
}

/// Subscribes as `proxy_id`; Ok once the first message arrived.
async fn subscribe_first(ch: Channel, proxy_id: &str) -> Result<(), Status> {
    first_update(ch, tonic::Request::new(subscribe_request(proxy_id))).await
}

/// Opens a ProbeService session whose one message is `id`'s hello, within 5 s.
async fn hello_alone(
    ch: Channel,
    id: &str,
) -> Result<tonic::Response<tonic::Streaming<pb::ControlMessage>>, Status> {
    within(
        5,
        &format!("hello as {id}"),
        ProbeServiceClient::new(ch).connect(tokio_stream::iter(vec![hello(id, vec![])])),
    )
    .await
}

/// Runs a real probe agent in zone `a` with `tls` until `stop` is cancelled.
fn spawn_agent(url: &str, tls: Tls, stop: &CancellationToken) {
    let config = trackwire_probe_agent::Config {
        control_plane: vec![url.to_string()],
        zone: "a".into(),
        state_dir: None,
        heartbeat: Duration::from_millis(300),
        tls: Some(tls),
    };
    tokio::spawn(trackwire_probe_agent::run(config, None, stop.clone()));
}

fn checked_pool(name: &str, backends: Vec<BackendSpec>) -> PoolSpec {
    PoolSpec {
        check: Some(CheckSpec {
            rise: 1,
            fall: 1,
            ..CheckSpec::every(Duration::from_millis(100))
        }),
        replicas: 1,
        ..PoolSpec::new(name, backends)
    }
}

fn plain_pool(name: &str) -> PoolSpec {
    PoolSpec::new(
        name,
        vec![
            BackendSpec::new("b1", "127.0.0.1:9"),
            BackendSpec::new("b2", "127.0.0.1:9"),
        ],
    )
}

async fn apply(
    admin: &mut AdminServiceClient<Channel>,
    pools: &[PoolSpec],
) -> pb::ApplyPoolsResponse {
    admin
        .apply_pools(pb::ApplyPoolsRequest {
            pools: pools.iter().map(pool_to_pb).collect(),
            ..Default::default()
        })
        .await
        .expect("apply pools")
        .into_inner()
}

/// The `trackwire` binary: (exit code, stdout, stderr), within 30 s.
async fn cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_trackwire"));
    cmd.args(args).kill_on_drop(true);
    for var in [
        "TRACKWIRE_CONTROL_PLANE",
        "TRACKWIRE_TOKEN_FILE",
        "TRACKWIRE_TLS_CA",
        "TRACKWIRE_TLS_CERT",
        "TRACKWIRE_TLS_KEY",
    ] {
        cmd.env_remove(var);
    }
    let out = within(30, "trackwire CLI", cmd.output())
        .await
        .expect("run trackwire");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `files` as the CLI's `--tls-ca`, `--tls-cert` and `--tls-key` flags.
fn tls_flags(files: &TlsFiles) -> Vec<String> {
    [
        ("--tls-ca", &files.ca),
        ("--tls-cert", &files.cert),
        ("--tls-key", &files.key),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_string(), path_str(path).to_string()])
    .collect()
}

/// The CLI with `args`, then the TLS flags for `files`.
async fn cli_as(files: &TlsFiles, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(tls_flags(files));
    cli(&all).await
}

/// `trackwire get pools` against `url`, with the TLS flags for `tls` and
/// `--token-file token_file` when given.
async fn get_pools(
    url: &str,
    tls: Option<&TlsFiles>,
    token_file: Option<&Path>,
) -> (i32, String, String) {
    let mut args: Vec<String> = ["get", "pools", "--control-plane", url]
        .map(String::from)
        .to_vec();
    args.extend(tls.map(tls_flags).unwrap_or_default());
    if let Some(file) = token_file {
        args.extend(["--token-file".into(), path_str(file).into()]);
    }
    cli(&args).await
}

/// The CLI's answer (exit code, stdout, stderr) is a refusal of role proxy.
fn expect_cli_refused_as_proxy((code, out, err): &(i32, String, String)) {
    assert_ne!(*code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        err.to_lowercase().contains("permission") && err.contains("role proxy"),
        "stderr: {err}"
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// Calls the generated clients cannot make (unknown methods).

async fn raw_unary<Req, Resp>(ch: Channel, path: &'static str, req: Req) -> Result<Resp, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(req),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::<Req, Resp>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn health_check(ch: Channel) -> Result<i32, Status> {
    tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
}

// ---------------------------------------------------------------------------
// 1. Every role over mutual TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_works_over_mutual_tls() {
    logs();
    let (pki, _, cp, url) = start_mtls(mem()).await;
    let backend = TestHttp::start().await;

    // Admin: apply and list.
    let mut admin = admin_tls(&url, &pki.client(Role::Admin, "ops")).await;
    let applied = apply(
        &mut admin,
        &[checked_pool(
            "web",
            vec![BackendSpec::new("b1", backend.address())],
        )],
    )
    .await;
    assert_eq!(applied.created, ["web"]);
    // ListPools answers from the replica's map, which follows the store's
    // watch: wait for the apply to arrive there.
    let names = |admin: &AdminServiceClient<Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_pools(pb::ListPoolsRequest {})
                .await
                .expect("list pools as admin")
                .into_inner()
                .pools
                .into_iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
        }
    };
    wait_for("the applied pool listed", 10, || {
        let names = names(&admin);
        async move { !names.await.is_empty() }
    })
    .await;
    assert_eq!(names(&admin).await, ["web"]);

    // A real probe agent: its id is its certificate's name.
    let others = CancellationToken::new();
    spawn_agent(&url, pki.client(Role::Agent, "agent-1"), &others);
    wait_for("agent-1 listed by ListAgents", 10, || {
        let admin = admin.clone();
        async move { agent_ids(&admin).await.is_ok_and(|ids| !ids.is_empty()) }
    })
    .await;
    assert_eq!(
        agent_ids(&admin).await.expect("list agents"),
        ["agent-1"],
        "the agent registers under its certificate's name"
    );

    // A real proxy subscription.
    let (tx, map) = watch::channel(Arc::new(HealthMap::default()));
    tokio::spawn(trackwire_data_plane::subscribe::run(
        trackwire_data_plane::subscribe::SubscribeConfig {
            control_plane: vec![url.clone()],
            pools: vec![],
            proxy_id: "edge-1".into(),
            state_dir: None,
            tls: Some(pki.client(Role::Proxy, "edge-1")),
        },
        tx,
        Arc::new(trackwire_data_plane::metrics::Metrics::default()),
        others.clone(),
    ));
    wait_map(&map, "web/b1 UP on agent-1's live verdict", 10, |m| {
        m.pools
            .get("web")
            .and_then(|p| p.get("b1"))
            .is_some_and(|e| e.state == HealthState::Up && e.votes == 1 && !e.stale)
    })
    .await;
    let votes = voters(&admin, "web", |_| true).await;
    assert_eq!(votes, ["agent-1"], "the UP vote is agent-1's");
    let subscribers = admin
        .list_subscribers(pb::ListSubscribersRequest {})
        .await
        .expect("list subscribers")
        .into_inner();
    assert!(
        subscribers
            .subscribers
            .iter()
            .any(|s| s.proxy_id == "edge-1"),
        "{subscribers:?}"
    );
    others.cancel();
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Refused handshakes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_refused_and_counted() {
    logs();
    let (pki, _, cp, url) = start_mtls(mem()).await;
    let ca = pki.ca.cert_pem.clone();
    let now = SystemTime::now();
    let valid = (now - Duration::from_secs(300), now + DAY);

    // The hand-built client itself works: with a good certificate it gets through.
    let good = pki.ca.issue(Role::Admin, "ops", &[], 5).expect("issue");
    hand_call(&url, &ca, Some(&good))
        .await
        .expect("a good certificate through the hand-built client");
    let failures_after_good = metric(&cp.http, HANDSHAKE_FAILURES).await;
    assert_eq!(failures_after_good, 0, "a good handshake is no failure");

    // Plaintext on the TLS port.
    let before = metric(&cp.http, HANDSHAKE_FAILURES).await;
    let r = plaintext_call(&cp.url).await;
    assert!(r.is_err(), "a plaintext client got through: {r:?}");
    wait_metric_above(&cp.http, HANDSHAKE_FAILURES, before, "plaintext client").await;

    let another_ca = Pki::new();
    let another_domain = Pki::for_domain("other.test");
    // (what, certificate presented, whether trackwire's own client material
    // would refuse it before connecting)
    let cases: Vec<(&str, Option<Leaf>, bool)> = vec![
        ("no client certificate", None, false),
        (
            "a certificate from another CA",
            Some(
                another_ca
                    .ca
                    .issue(Role::Admin, "ops", &[], 5)
                    .expect("issue"),
            ),
            false,
        ),
        (
            "an expired certificate",
            Some(odd_leaf(
                &pki,
                vec![admin_uri(TRUST_DOMAIN, "ops")],
                now - 2 * DAY,
                now - DAY,
            )),
            true,
        ),
        (
            "a certificate not valid yet",
            Some(odd_leaf(
                &pki,
                vec![admin_uri(TRUST_DOMAIN, "ops")],
                now + DAY,
                now + 2 * DAY,
            )),
            true,
        ),
        (
            "a certificate of another trust domain's CA",
            Some(
                another_domain
                    .ca
                    .issue(Role::Admin, "ops", &[], 5)
                    .expect("issue"),
            ),
            false,
        ),
        (
            "our CA, but an identity in another trust domain",
            Some(odd_leaf(
                &pki,
                vec![admin_uri("other.test", "ops")],
                valid.0,
                valid.1,
            )),
            false,
        ),
        (
            "a certificate without a URI SAN",
            Some(odd_leaf(&pki, vec![], valid.0, valid.1)),
            true,
        ),
        (
            "a certificate with two trackwire identities",
            Some(odd_leaf(
                &pki,
                vec![
                    admin_uri(TRUST_DOMAIN, "ops"),
                    admin_uri(TRUST_DOMAIN, "ops2"),
                ],
                valid.0,
                valid.1,
            )),
            true,
        ),
    ];
    for (what, leaf, _) in &cases {
        let before = metric(&cp.http, HANDSHAKE_FAILURES).await;
        let r = hand_call(&url, &ca, leaf.as_ref()).await;
        assert!(r.is_err(), "{what}: the call went through");
        wait_metric_above(&cp.http, HANDSHAKE_FAILURES, before, what).await;
    }
    // The refusals were the server's: a good certificate still works.
    hand_call(&url, &ca, Some(&good))
        .await
        .expect("a good certificate after the refusals");

    // trackwire's own client material refuses the odd certificates before
    // any connection is made, naming the certificate file.
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (what, leaf, refused)) in cases.iter().enumerate() {
        let (Some(leaf), true) = (leaf, refused) else {
            continue;
        };
        let files = write_leaf(dir.path(), &format!("odd-{i}"), &pki.ca_path(), leaf);
        let e = Tls::load(files.clone(), Side::Client).expect_err(what);
        assert_eq!(e.file, files.cert, "{what}: {e}");
    }
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 3. The role table
// ---------------------------------------------------------------------------

fn expect_access(role: Role, allowed: bool, path: &str, r: Result<(), Status>) {
    if allowed {
        if let Err(e) = r {
            panic!(
                "role {role} must be allowed {path}: {:?} {}",
                e.code(),
                e.message()
            );
        }
    } else {
        let Err(e) = r else {
            panic!("role {role} must be refused {path}");
        };
        assert_eq!(
            e.code(),
            Code::PermissionDenied,
            "role {role} on {path}: {}",
            e.message()
        );
        assert!(
            e.message().contains(&format!("role {role}")) && e.message().contains(path),
            "role {role} on {path}: the refusal names neither: {}",
            e.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_table_admits_exactly_the_allowed_calls() {
    logs();
    let (pki, _, cp, url) = start_mtls(mem()).await;
    for role in Role::ALL {
        let name = match role {
            Role::Admin => "ops",
            Role::Agent => "agent-1",
            Role::Proxy => "edge-1",
            Role::ControlPlane => "cp-2",
        };
        let tls = pki.client(role, name);
        let ch = trackwire_connect::channel(&url, Some(&tls))
            .await
            .unwrap_or_else(|e| panic!("connect as {role}: {e}"));

        let r = within(
            5,
            "ListPools",
            AdminServiceClient::new(ch.clone()).list_pools(pb::ListPoolsRequest {}),
        )
        .await
        .map(|_| ());
        expect_access(
            role,
            role == Role::Admin,
            "/trackwire.v1.AdminService/ListPools",
            r,
        );

        let r = within(5, "Subscribe", subscribe_first(ch.clone(), name)).await;
        expect_access(
            role,
            role == Role::Proxy,
            "/trackwire.v1.HealthMapService/Subscribe",
            r,
        );

        // Nothing valid sent: the agent passes the role check and is told
        // its first message must be a hello; every other role is refused
        // before that matters.
        let r = within(
            5,
            "Connect",
            ProbeServiceClient::new(ch.clone())
                .connect(tokio_stream::iter(vec![pb::AgentMessage { msg: None }])),
        )
        .await
        .map(|_| ());
        if role == Role::Agent {
            let e = r.expect_err("an empty first message");
            assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
            assert!(e.message().contains("AgentHello"), "{}", e.message());
        } else {
            expect_access(role, false, "/trackwire.v1.ProbeService/Connect", r);
        }

        let status = within(5, "Health/Check", health_check(ch.clone()))
            .await
            .unwrap_or_else(|e| panic!("role {role} health check: {e:?}"));
        assert_eq!(status, 1, "role {role}: SERVING");
    }

    // Unknown methods, as admin: under the admin prefix the call passes the
    // role check and the service says it has no such method; elsewhere the
    // role table refuses it.
    let ch = trackwire_connect::channel(&url, Some(&pki.client(Role::Admin, "ops")))
        .await
        .expect("connect as admin");
    let e = within(
        5,
        "NoSuchMethod",
        raw_unary::<pb::ListPoolsRequest, pb::ListPoolsResponse>(
            ch.clone(),
            "/trackwire.v1.AdminService/NoSuchMethod",
            pb::ListPoolsRequest {},
        ),
    )
    .await
    .expect_err("no such method");
    assert_eq!(e.code(), Code::Unimplemented, "{}", e.message());
    let e = within(
        5,
        "Nope/X",
        raw_unary::<pb::ListPoolsRequest, pb::ListPoolsResponse>(
            ch,
            "/trackwire.v1.Nope/X",
            pb::ListPoolsRequest {},
        ),
    )
    .await
    .expect_err("unknown service");
    expect_denied_naming(&e, &["/trackwire.v1.Nope/X", "role admin"]);
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Ids bound to certificates
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_proxies_speak_only_for_their_certificate() {
    logs();
    let store = mem();
    let (pki, _, cp, url) = start_mtls(Arc::clone(&store)).await;
    let agent = pki.client(Role::Agent, "agent-1");
    let ch = trackwire_connect::channel(&url, Some(&agent))
        .await
        .expect("connect as agent-1");

    let e = hello_alone(ch.clone(), "agent-2")
        .await
        .expect_err("agent-1 speaking as agent-2");
    expect_denied_naming(&e, &["\"agent-2\"", "\"agent-1\""]);
    assert!(
        !stored(store.as_ref(), &keys().agent("agent-2")).await,
        "nothing registered as agent-2"
    );

    // As itself the same certificate registers.
    hello_alone(ch, "agent-1").await.expect("agent-1 as itself");
    assert!(stored(store.as_ref(), &keys().agent("agent-1")).await);

    // The same binding for proxies.
    let proxy = pki.client(Role::Proxy, "edge-1");
    let ch = trackwire_connect::channel(&url, Some(&proxy))
        .await
        .expect("connect as edge-1");
    let e = within(
        5,
        "subscribe as edge-2",
        subscribe_first(ch.clone(), "edge-2"),
    )
    .await
    .expect_err("edge-1 subscribing as edge-2");
    expect_denied_naming(&e, &["edge-2", "edge-1"]);
    within(5, "subscribe as edge-1", subscribe_first(ch, "edge-1"))
        .await
        .expect("edge-1 as itself");
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Verdicts only about the sender's assignment
// ---------------------------------------------------------------------------

async fn verdict_keys(store: &dyn Store) -> Vec<String> {
    store
        .list(&format!("{}verdicts/", keys().root()))
        .await
        .expect("list verdicts")
        .0
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_about_other_agents_backends_are_not_stored() {
    logs();
    let store = mem();
    let pools: Vec<PoolSpec> = ["p1", "p2"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            checked_pool(
                p,
                (0..4)
                    .map(|b| {
                        BackendSpec::new(format!("b{b}"), format!("127.0.0.{}:{}", i + 1, 9000 + b))
                    })
                    .collect(),
            )
        })
        .collect();
    trackwire_control_plane::writes::apply(store.as_ref(), &keys(), &pools, 0, false)
        .await
        .expect("apply");
    let cp = start_cp(
        Arc::clone(&store),
        Config {
            agent_ttl: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await;
    let fp = |pool: &str, backend: &str| {
        let p = pools.iter().find(|p| p.name == pool).expect("pool");
        let b = p
            .backends
            .iter()
            .find(|b| b.name == backend)
            .expect("backend");
        target_fingerprint(&b.address, p.check.as_ref().expect("check"))
    };

    // Which backend goes to which of the two agents (replicas = 1).
    let agents = [("agent-a", "z"), ("agent-b", "z")];
    let mut mine = None;
    let mut foreign = None;
    for p in &pools {
        for b in &p.backends {
            let chosen =
                trackwire_control_plane::assign::assign_zoned(&p.name, &b.name, &agents, 1, false);
            match chosen.as_slice() {
                ["agent-a"] if mine.is_none() => mine = Some((p.name.clone(), b.name.clone())),
                ["agent-b"] if foreign.is_none() => {
                    foreign = Some((p.name.clone(), b.name.clone()))
                }
                _ => {}
            }
        }
    }
    let (mine, foreign) = (
        mine.expect("a backend assigned to agent-a"),
        foreign.expect("a backend assigned to agent-b"),
    );

    // Agent B: a live session holding a verdict about its own backend.
    let ch = trackwire_connect::channel(&cp.url, None)
        .await
        .expect("connect");
    let (b_tx, b_rx) = tokio::sync::mpsc::channel(16);
    b_tx.send(hello(
        "agent-b",
        vec![verdict(
            &foreign.0,
            &foreign.1,
            fp(&foreign.0, &foreign.1),
            "b's own",
        )],
    ))
    .await
    .expect("queue hello");
    let _b_session = within(
        5,
        "agent-b hello",
        ProbeServiceClient::new(ch.clone()).connect(ReceiverStream::new(b_rx)),
    )
    .await
    .expect("agent-b registers");
    let b_key = keys().verdict("agent-b", &foreign.0, &foreign.1);
    assert!(
        verdict_keys(store.as_ref()).await.contains(&b_key),
        "agent-b's verdict about its own backend is stored"
    );
    let admin = admin(&cp.url).await;
    wait_for("agent-b in the control plane's view", 5, || {
        let admin = admin.clone();
        async move {
            agent_ids(&admin)
                .await
                .is_ok_and(|ids| ids.iter().any(|a| a == "agent-b"))
        }
    })
    .await;

    // Agent A's hello: its own backend, agent B's, and a pool that does not exist.
    let rejected_before = metric(&cp.http, "trackwire_verdicts_rejected_total").await;
    let (a_tx, a_rx) = tokio::sync::mpsc::channel(16);
    a_tx.send(hello(
        "agent-a",
        vec![
            verdict(&mine.0, &mine.1, fp(&mine.0, &mine.1), "hello"),
            verdict(&foreign.0, &foreign.1, fp(&foreign.0, &foreign.1), "hello"),
            verdict("ghost", "b0", 1, "hello"),
        ],
    ))
    .await
    .expect("queue hello");
    let mut a_inbound = within(
        5,
        "agent-a hello",
        ProbeServiceClient::new(ch).connect(ReceiverStream::new(a_rx)),
    )
    .await
    .expect("agent-a registers")
    .into_inner();
    let mine_key = keys().verdict("agent-a", &mine.0, &mine.1);
    let foreign_key = keys().verdict("agent-a", &foreign.0, &foreign.1);
    let ghost_key = keys().verdict("agent-a", "ghost", "b0");
    let stored = verdict_keys(store.as_ref()).await;
    assert!(stored.contains(&mine_key), "{stored:?}");
    assert!(!stored.contains(&foreign_key), "{stored:?}");
    assert!(!stored.contains(&ghost_key), "{stored:?}");
    let rejected = metric(&cp.http, "trackwire_verdicts_rejected_total").await;
    assert_eq!(rejected, rejected_before + 2, "two hello verdicts rejected");

    // The assignment agent A gets agrees: its backend, not agent B's.
    let first = within(5, "agent-a's assignment", a_inbound.message())
        .await
        .expect("assignment")
        .expect("a message");
    let Some(pb::control_message::Msg::Assignment(assignment)) = first.msg else {
        panic!("not an assignment: {first:?}");
    };
    let targets: Vec<(String, String)> = assignment
        .targets
        .iter()
        .map(|t| (t.pool.clone(), t.backend.clone()))
        .collect();
    assert!(targets.contains(&mine), "{targets:?}");
    assert!(!targets.contains(&foreign), "{targets:?}");

    // A report: the same three; only agent A's own backend is written.
    a_tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Report(pb::VerdictReport {
            verdicts: vec![
                verdict(&mine.0, &mine.1, fp(&mine.0, &mine.1), "report"),
                verdict(&foreign.0, &foreign.1, fp(&foreign.0, &foreign.1), "report"),
                verdict("ghost", "b0", 1, "report"),
            ],
        })),
    })
    .await
    .expect("queue report");
    wait_for("agent-a's reported verdict stored", 5, || {
        let store = Arc::clone(&store);
        let key = mine_key.clone();
        async move {
            store
                .get(&key)
                .await
                .ok()
                .flatten()
                .is_some_and(|kv| decode_verdict(&kv.value).is_ok_and(|v| v.reason == "report"))
        }
    })
    .await;
    let stored = verdict_keys(store.as_ref()).await;
    assert!(!stored.contains(&foreign_key), "{stored:?}");
    assert!(!stored.contains(&ghost_key), "{stored:?}");
    assert!(
        !stored.iter().any(|k| k.contains("/ghost/")),
        "no verdict about a nonexistent pool: {stored:?}"
    );
    let b_value = store
        .get(&b_key)
        .await
        .expect("get")
        .expect("agent-b's verdict");
    assert_eq!(
        decode_verdict(&b_value.value).expect("verdict").reason,
        "b's own",
        "agent-b's verdict untouched"
    );
    assert_eq!(
        metric(&cp.http, "trackwire_verdicts_rejected_total").await,
        rejected + 2,
        "two report verdicts rejected"
    );
    // The admin view agrees that nobody else voted on agent B's backend.
    let voters = voters(&admin, &foreign.0, |b| b == Some(foreign.1.as_str())).await;
    assert!(!voters.iter().any(|v| v == "agent-a"), "{voters:?}");
    drop(a_tx);
    drop(b_tx);
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 6. A proxy certificate cannot drain
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_certificate_cannot_change_backend_state() {
    logs();
    let store = mem();
    let (pki, _, cp, url) = start_mtls(Arc::clone(&store)).await;
    let mut admin = admin_tls(&url, &pki.client(Role::Admin, "ops")).await;
    apply(&mut admin, &[plain_pool("web")]).await;

    let proxy = pki.client(Role::Proxy, "edge-1");
    let e = within(
        5,
        "SetBackendState",
        admin_tls(&url, &proxy)
            .await
            .set_backend_state(pb::SetBackendStateRequest {
                pool: "web".into(),
                backend: "b1".into(),
                state: pb::AdminState::Drain as i32,
                reason: "not mine to drain".into(),
                set_by: "edge-1".into(),
            }),
    )
    .await
    .expect_err("a proxy draining a backend");
    expect_denied_naming(
        &e,
        &["role proxy", "/trackwire.v1.AdminService/SetBackendState"],
    );
    let override_key = keys().admin("web", "b1");
    assert!(!stored(store.as_ref(), &override_key).await);

    // The CLI with the proxy's certificate: refused, exit code non-zero.
    let drain = ["drain", "web/b1", "--control-plane", &url];
    let answer = cli_as(&pki.files(Role::Proxy, "edge-cli"), &drain).await;
    expect_cli_refused_as_proxy(&answer);
    assert!(!stored(store.as_ref(), &override_key).await);

    // The same command with an admin certificate drains.
    let (code, out, err) = cli_as(&pki.files(Role::Admin, "ops-cli"), &drain).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("backend/web/b1 drain"), "{out}");
    assert!(stored(store.as_ref(), &override_key).await);
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 7. The admin bearer token (plaintext port; TLS port beside certificates)
// ---------------------------------------------------------------------------

const TOKEN: &str = "s3cret-admin-token-0123456789";
const WRONG_TOKEN: &str = "wrong-token-abcdef0123456789";

fn with_bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    req
}

/// A control plane taking TOKEN for the admin role (serving `tls` if
/// given) on a store holding pool `web`.
async fn start_token_cp(tls: Option<Tls>) -> (Arc<dyn Store>, Cp) {
    let store = mem();
    trackwire_control_plane::writes::apply(store.as_ref(), &keys(), &[plain_pool("web")], 0, false)
        .await
        .expect("apply");
    let config = Config {
        tls,
        admin_token: Some(Token::new(TOKEN).expect("token")),
        ..Default::default()
    };
    (Arc::clone(&store), start_cp(store, config).await)
}

/// ListPools on `ch`: without a token refused as Unauthenticated (saying
/// `missing`), answered with TOKEN, refused with WRONG_TOKEN (echoing
/// neither token).
async fn expect_token_guards_list_pools(ch: Channel, missing: &str) {
    let mut admin = AdminServiceClient::new(ch);
    let e = admin
        .list_pools(pb::ListPoolsRequest {})
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    assert!(e.message().contains(missing), "{}", e.message());

    let pools = admin
        .list_pools(with_bearer(pb::ListPoolsRequest {}, TOKEN))
        .await
        .expect("with the token")
        .into_inner();
    assert_eq!(pools.pools.len(), 1);

    let e = admin
        .list_pools(with_bearer(pb::ListPoolsRequest {}, WRONG_TOKEN))
        .await
        .expect_err("wrong token");
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    assert!(
        !e.message().contains(WRONG_TOKEN) && !e.message().contains(TOKEN),
        "a token echoed: {}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_admin_calls_only() {
    logs();
    let (store, cp) = start_token_cp(None).await;
    let ch = trackwire_connect::channel(&cp.url, None)
        .await
        .expect("connect");
    expect_token_guards_list_pools(ch.clone(), "bearer token").await;
    let e = AdminServiceClient::new(ch.clone())
        .set_backend_state(with_bearer(
            pb::SetBackendStateRequest {
                pool: "web".into(),
                backend: "b1".into(),
                state: pb::AdminState::Drain as i32,
                reason: String::new(),
                set_by: "x".into(),
            },
            WRONG_TOKEN,
        ))
        .await
        .expect_err("wrong token drains");
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    assert!(!stored(store.as_ref(), &keys().admin("web", "b1")).await);

    // Agents and proxies need no token on a plaintext port.
    hello_alone(ch.clone(), "agent-x")
        .await
        .expect("ProbeService is open without a token");
    within(5, "subscribe", subscribe_first(ch, "edge-x"))
        .await
        .expect("HealthMapService is open without a token");

    // The CLI with --token-file; without it; with a wrong one.
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("token");
    std::fs::write(&good, format!("{TOKEN}\n")).expect("write token");
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, WRONG_TOKEN).expect("write token");
    let (code, out, err) = get_pools(&cp.url, None, Some(&good)).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("web"), "{out}");
    let (code, out, err) = get_pools(&cp.url, None, None).await;
    assert_ne!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("bearer token"), "stderr: {err}");
    let (code, out, err) = get_pools(&cp.url, None, Some(&bad)).await;
    assert_ne!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        !err.contains(WRONG_TOKEN) && !out.contains(WRONG_TOKEN),
        "the wrong token printed: {err}"
    );
    cp.stop().await;
}

/// A TLS port that takes client certificates optionally: the admin token
/// stands in for an admin certificate, and for nothing else; a certificate
/// still works, and where one is presented it, not the token, names the
/// caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_stands_in_for_a_certificate_on_a_tls_port() {
    logs();
    let pki = Pki::new();
    let server = Tls::load(
        pki.files(Role::ControlPlane, "cp"),
        Side::Server {
            client_cert_optional: true,
        },
    )
    .expect("server TLS");
    let (store, cp) = start_token_cp(Some(server)).await;
    let url = https(&cp);

    // TLS trusting the CA, no client certificate.
    let ch = hand_channel(&url, &pki.ca.cert_pem, None)
        .await
        .expect("TLS without a client certificate");
    expect_token_guards_list_pools(ch.clone(), "no client certificate and no bearer token").await;

    // The token is the admin role only: no subscription, no agent session.
    let r = within(
        5,
        "Subscribe with the token",
        first_update(ch.clone(), with_bearer(subscribe_request("edge-1"), TOKEN)),
    )
    .await;
    expect_access(
        Role::Admin,
        false,
        "/trackwire.v1.HealthMapService/Subscribe",
        r,
    );
    let r = within(
        5,
        "Connect with the token",
        ProbeServiceClient::new(ch).connect(with_bearer(
            tokio_stream::iter(vec![hello("agent-1", vec![])]),
            TOKEN,
        )),
    )
    .await
    .map(|_| ());
    expect_access(Role::Admin, false, "/trackwire.v1.ProbeService/Connect", r);
    assert!(
        !stored(store.as_ref(), &keys().agent("agent-1")).await,
        "nothing registered with the token"
    );

    // An agent certificate still connects: a real agent registers under
    // its certificate's name.
    let agent = CancellationToken::new();
    spawn_agent(&url, pki.client(Role::Agent, "agent-1"), &agent);
    wait_for("agent-1 registered", 10, || {
        let store = Arc::clone(&store);
        async move { stored(store.as_ref(), &keys().agent("agent-1")).await }
    })
    .await;
    agent.cancel();

    // The CLI with a proxy's certificate and a valid token file: the
    // certificate names the caller, so the admin call is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("token");
    std::fs::write(&good, format!("{TOKEN}\n")).expect("write token");
    let proxy = pki.files(Role::Proxy, "edge-cli");
    let answer = get_pools(&url, Some(&proxy), Some(&good)).await;
    expect_cli_refused_as_proxy(&answer);
    let (_, out, err) = answer;
    assert!(
        !err.contains(TOKEN) && !out.contains(TOKEN),
        "the token printed: {err}"
    );
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 8. Reload under an open stream
// ---------------------------------------------------------------------------

/// Reads the stream until an update names `pool` (or fails after `secs`).
async fn wait_update_for(
    stream: &mut tonic::Streaming<pb::HealthMapUpdate>,
    pool: &str,
    secs: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no update about {pool} within {secs}s"))
            .unwrap_or_else(|e| panic!("stream failed: {e:?}"))
            .expect("stream ended");
        if msg.pools.iter().any(|p| p.pool == pool) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_open_streams_and_serves_the_new_certificate() {
    logs();
    let (pki, tls, cp, url) = start_mtls(mem()).await;
    let mut admin = admin_tls(&url, &pki.client(Role::Admin, "ops")).await;
    apply(&mut admin, &[plain_pool("web")]).await;
    let proxy = pki.client(Role::Proxy, "edge-1");
    let old_serial = tls.current().leaf.serial.clone();
    assert_eq!(served_serial(&grpc_addr(&cp), &proxy).await, old_serial);

    let ch = trackwire_connect::channel(&url, Some(&proxy))
        .await
        .expect("connect as proxy");
    let mut stream = HealthMapServiceClient::new(ch)
        .subscribe(subscribe_request("edge-1"))
        .await
        .expect("subscribe")
        .into_inner();
    wait_update_for(&mut stream, "web", 5).await;

    // A new certificate for the same identity, written over the old files
    // (key first, then certificate), and a forced reload.
    let leaf = pki
        .ca
        .issue(
            Role::ControlPlane,
            "cp",
            &["127.0.0.1".into(), "localhost".into()],
            5,
        )
        .expect("issue");
    let (crt, key) = leaf
        .write(pki.dir.path(), Role::ControlPlane, "cp")
        .expect("write");
    assert_eq!((&crt, &key), (&tls.files().cert, &tls.files().key));
    let new_serial = validity_of_pem(&leaf.cert_pem).serial;
    assert_ne!(new_serial, old_serial);
    // (The control plane's own poller may have picked the files up first.)
    let reloaded = tls.reload(true).expect("reload");
    assert!(reloaded);
    assert_eq!(tls.current().leaf.serial, new_serial);

    // The stream opened before the reload carries on.
    apply(&mut admin, &[plain_pool("web"), plain_pool("api")]).await;
    wait_update_for(&mut stream, "api", 5).await;

    // A new connection sees the new certificate; the gauge names it.
    assert_eq!(served_serial(&grpc_addr(&cp), &proxy).await, new_serial);
    let fresh = admin_tls(&url, &pki.client(Role::Admin, "ops2")).await;
    within(
        5,
        "ListPools",
        fresh.clone().list_pools(pb::ListPoolsRequest {}),
    )
    .await
    .expect("a new connection after the reload");
    let (_, body) = http_get(&cp.http, "/metrics").await;
    assert!(
        body.lines().any(|l| l
            .starts_with("trackwire_tls_certificate_not_after_seconds{kind=\"leaf\"")
            && l.contains(&format!("serial=\"{new_serial}\""))),
        "{body}"
    );
    assert!(metric(&cp.http, "trackwire_tls_reloads_total{result=\"ok\"}").await >= 1);
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 9. A half-written key is refused
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_key_is_not_swapped_in() {
    logs();
    let (pki, tls, cp, url) = start_mtls(mem()).await;
    let proxy = pki.client(Role::Proxy, "edge-1");
    let old_serial = tls.current().leaf.serial.clone();
    let errors = "trackwire_tls_reloads_total{result=\"error\"}";
    let errors_before = metric(&cp.http, errors).await;

    let key = tls.files().key.clone();
    let bytes = std::fs::read(&key).expect("read key");
    std::fs::write(&key, &bytes[..bytes.len() / 2]).expect("truncate key");
    let e = tls.reload(true).expect_err("half a key");
    assert_eq!(e.file, key, "{e}");
    assert!(
        e.to_string().contains(path_str(&key)),
        "the error names the key file: {e}"
    );
    assert_eq!(tls.current().leaf.serial, old_serial);
    let errors_after = metric(&cp.http, errors).await;
    assert!(
        errors_after > errors_before,
        "{errors}: {errors_before} → {errors_after}"
    );

    // New connections still work, with the old certificate.
    assert_eq!(served_serial(&grpc_addr(&cp), &proxy).await, old_serial);
    let mut admin = admin_tls(&url, &pki.client(Role::Admin, "ops")).await;
    within(5, "ListPools", admin.list_pools(pb::ListPoolsRequest {}))
        .await
        .expect("a new connection after the refused reload");
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 10. CA rollover
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_the_old_and_the_new_ca_both_connect_during_a_rollover() {
    logs();
    let old = Pki::new();
    let new = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle = dir.path().join("ca-bundle.crt");
    std::fs::write(&bundle, format!("{}{}", old.ca.cert_pem, new.ca.cert_pem))
        .expect("write bundle");
    let with_bundle = |files: TlsFiles| TlsFiles {
        ca: bundle.clone(),
        ..files
    };
    let server = Tls::load(
        with_bundle(new.files(Role::ControlPlane, "cp")),
        Side::Server {
            client_cert_optional: false,
        },
    )
    .expect("server TLS with a CA bundle");
    assert_eq!(server.current().cas.len(), 2);
    let cp = start_cp(mem(), tls_config(server)).await;
    let url = https(&cp);

    for (pki, name) in [(&old, "ops-old"), (&new, "ops-new")] {
        let client =
            Tls::load(with_bundle(pki.files(Role::Admin, name)), Side::Client).expect("client TLS");
        let mut admin = admin_tls(&url, &client).await;
        within(5, "ListPools", admin.list_pools(pb::ListPoolsRequest {}))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    // A third CA is still a stranger.
    let stranger = Pki::new();
    let client = Tls::load(
        with_bundle(stranger.files(Role::Admin, "ops-x")),
        Side::Client,
    )
    .expect("client TLS");
    let r = within(5, "stranger", tls_list_pools(&url, &client)).await;
    assert!(r.is_err(), "a third CA's client got through");
    let (_, body) = http_get(&cp.http, "/metrics").await;
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with("trackwire_tls_certificate_not_after_seconds{kind=\"ca\""))
            .count(),
        2,
        "{body}"
    );
    cp.stop().await;

    // Without the old CA in the server's bundle, the old client is refused.
    let server = Tls::load(
        TlsFiles {
            ca: new.ca_path(),
            ..new.files(Role::ControlPlane, "cp")
        },
        Side::Server {
            client_cert_optional: false,
        },
    )
    .expect("server TLS");
    let cp = start_cp(mem(), tls_config(server)).await;
    let client = Tls::load(with_bundle(old.files(Role::Admin, "ops-old")), Side::Client)
        .expect("client TLS");
    let url = https(&cp);
    let r = within(5, "old client", tls_list_pools(&url, &client)).await;
    assert!(
        r.is_err(),
        "the old CA's client got through without the old CA"
    );
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 11. The expiry gauge
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expiry_gauge_shows_the_certificates_not_after() {
    logs();
    let (pki, tls, cp, _) = start_mtls(mem()).await;
    let (status, body) = http_get(&cp.http, "/metrics").await;
    assert_eq!(status, 200);
    let value_of = |prefix: &str| -> (String, u64) {
        let line = body
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{body}"));
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no value: {line}"));
        (line.to_string(), value)
    };
    let leaf = validity_of_pem(&std::fs::read_to_string(&tls.files().cert).expect("read cert"));
    let (line, value) = value_of("trackwire_tls_certificate_not_after_seconds{kind=\"leaf\"");
    assert_eq!(value, unix_secs(leaf.not_after), "{line}");
    assert!(
        line.contains(&format!("serial=\"{}\"", leaf.serial)),
        "{line}"
    );
    // Issued for 5 days.
    let in_five_days = unix_secs(SystemTime::now() + 5 * DAY);
    assert!(value.abs_diff(in_five_days) < 3600, "{line}");
    let ca = validity_of_pem(&pki.ca.cert_pem);
    let (line, value) = value_of("trackwire_tls_certificate_not_after_seconds{kind=\"ca\"");
    assert_eq!(value, unix_secs(ca.not_after), "{line}");
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 12. Silent connections on the TLS port
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_block_no_handshake_and_are_dropped() {
    logs();

    // Default deadlines (5 s): three silent peers hold their slots while a
    // real client connects and calls.
    let (pki, _, cp, url) = start_mtls(mem()).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(grpc_addr(&cp)).await.expect("connect"));
    }
    let accepted = "trackwire_grpc_connections_accepted_total";
    wait_metric_reaches(&cp.http, accepted, 3, "the silent connections accepted").await;
    let admin_tls_material = pki.client(Role::Admin, "ops");
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(2), async {
        let mut admin = admin_tls(&url, &admin_tls_material).await;
        admin.list_pools(pb::ListPoolsRequest {}).await
    })
    .await;
    let took = started.elapsed();
    r.unwrap_or_else(|_| panic!("the admin call did not complete within 2s beside silent peers"))
        .expect("list pools");
    assert!(took < Duration::from_secs(2), "{took:?}");
    for s in &silent {
        let mut buf = [0u8; 16];
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("a silent connection should still be open: {other:?}"),
        }
    }
    drop(silent);
    cp.stop().await;

    // A 300 ms handshake deadline: silent peers are closed and counted.
    let cp = start_cp(
        mem(),
        Config {
            tls: Some(pki.server()),
            limits: ServerLimits {
                handshake_timeout: Duration::from_millis(300),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let before = metric(&cp.http, DROPPED_HANDSHAKE).await;
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(grpc_addr(&cp)).await.expect("connect"));
    }
    let named = silent.iter_mut().enumerate();
    expect_closed_unanswered(named.map(|(i, s)| (format!("silent peer {i}"), s)), opened).await;
    wait_metric_reaches(
        &cp.http,
        DROPPED_HANDSHAKE,
        before + 3,
        "three handshake drops",
    )
    .await;
    assert!(metric(&cp.http, HANDSHAKE_FAILURES).await >= 3);
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 13. Idle peers on the HTTP port
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_peers_neither_starve_healthz_nor_stay() {
    logs();
    let cp = start_cp(
        mem(),
        Config {
            http_limits: HttpLimits {
                max_connections: 512,
                header_read_timeout: Duration::from_millis(500),
            },
            ..Default::default()
        },
    )
    .await;
    let addr = cp.http.trim_start_matches("http://").to_string();
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"GET /heal")
            .await
            .expect("partial request line");
        idle.push(s);
    }
    let (status, body) = within(
        2,
        "/healthz beside 50 idle peers",
        http_get(&cp.http, "/healthz"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let deadline = opened + Duration::from_secs(3);
    for (i, s) in idle.iter_mut().enumerate() {
        let mut rest = Vec::new();
        match tokio::time::timeout_at(deadline, s.read_to_end(&mut rest)).await {
            Ok(_) => {}
            Err(_) => panic!(
                "idle connection {i} still open {:?} after it was made",
                opened.elapsed()
            ),
        }
    }
    // And the port still answers.
    let (status, _) = within(2, "/healthz afterwards", http_get(&cp.http, "/healthz")).await;
    assert_eq!(status, 200);
    cp.stop().await;
}

// ---------------------------------------------------------------------------
// 14. No HTTP/2 preface on the plaintext gRPC port
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_peer_without_a_preface_is_dropped() {
    logs();
    let cp = start_cp(
        mem(),
        Config {
            limits: ServerLimits {
                preface_timeout: Duration::from_millis(300),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let before = metric(&cp.http, DROPPED_PREFACE).await;
    let opened = Instant::now();
    let mut silent = TcpStream::connect(grpc_addr(&cp)).await.expect("connect");
    let mut garbage = TcpStream::connect(grpc_addr(&cp)).await.expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let peers = [
        ("silent".into(), &mut silent),
        ("HTTP/1.1".into(), &mut garbage),
    ];
    expect_closed_unanswered(peers, opened).await;
    wait_metric_reaches(&cp.http, DROPPED_PREFACE, before + 2, "two preface drops").await;
    assert_eq!(metric(&cp.http, DROPPED_HANDSHAKE).await, 0);
    // A real client still gets through.
    let mut admin = admin(&cp.url).await;
    within(5, "ListPools", admin.list_pools(pb::ListPoolsRequest {}))
        .await
        .expect("a plaintext client with a preface");
    cp.stop().await;
}
