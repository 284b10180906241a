//! An existing HAProxy fleet following the health map through HAProxy's
//! agent-check protocol: Debian's real HAProxy 2.6 (installed by
//! `scripts/test`), servers with `check` + `agent-check` pointing at the
//! control plane's agent-check port. A backend's `/readyz` going 503 takes
//! it DOWN in HAProxy and out of its routing; `drain` shows as DRAIN; with
//! the control plane gone HAProxy keeps the last states and keeps routing.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use trackwire_core::HealthState;
use trackwire_core::convert::admin_to_pb;
use trackwire_proto::v1 as pb;
use trackwire_testkit::EtcdCluster;
use trackwire_testkit::http::TestHttp;

use support::*;

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `show stat` over the admin socket: (server, status, last agent result).
fn servers(sock: &Path) -> Vec<(String, String, String)> {
    let Ok(mut s) = UnixStream::connect(sock) else {
        return Vec::new();
    };
    let _ = s.write_all(b"show stat\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let mut lines = out.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let col = |n: &str| names.iter().position(|h| *h == n);
    let (Some(sv), Some(st), Some(agt)) = (col("svname"), col("status"), col("last_agt")) else {
        return Vec::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|v| v.len() > agt && v[sv] != "BACKEND" && v[sv] != "FRONTEND")
        .map(|v| (v[sv].to_owned(), v[st].to_owned(), v[agt].to_owned()))
        .collect()
}

fn status(sock: &Path, server: &str) -> String {
    servers(sock)
        .into_iter()
        .find(|(s, _, _)| s == server)
        .map(|(_, st, _)| st)
        .unwrap_or_default()
}

async fn wait_status(sock: &Path, server: &str, want: &str, secs: u64) -> Duration {
    let start = Instant::now();
    wait_for(
        &format!("HAProxy to show {server} {want}"),
        secs,
        || async { status(sock, server) == want },
    )
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_follows_the_map_through_agent_check() {
    logs();
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent_port = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent_addr = agent_port.local_addr().expect("addr");
    let url = format!("http://{}", grpc.local_addr().expect("addr"));
    let token = tokio_util::sync::CancellationToken::new();
    let cp = tokio::spawn(trackwire_control_plane::run(
        Default::default(),
        Arc::clone(&store),
        trackwire_control_plane::Listeners {
            grpc,
            http: None,
            agent_check: Some(agent_port),
        },
        token.clone(),
    ));
    let (b1, b2) = (TestHttp::start().await, TestHttp::start().await);
    let mut pool = flip_pool("web", "b1", b1.address(), Duration::from_millis(100));
    pool.backends
        .push(trackwire_core::BackendSpec::new("b2", b2.address()));
    let mut admin = admin(&url).await;
    apply_pools(&mut admin, std::slice::from_ref(&pool)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, _) = start_agent(vec![url.clone()], "a", dir.path()).await;

    let frontend = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fe = frontend.local_addr().expect("addr");
    drop(frontend);
    let sock = dir.path().join("admin.sock");
    let server = |name: &str, addr: &str| {
        format!(
            "  server {name} {addr} weight 100 check inter 1s agent-check agent-addr {} agent-port {} agent-inter 200ms agent-send \"web/{name}\\n\"\n",
            agent_addr.ip(),
            agent_addr.port()
        )
    };
    let cfg = format!(
        "global\n  stats socket {} mode 600 level admin\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\nbackend web\n{}{}frontend fe\n  bind {fe}\n  default_backend web\n",
        sock.display(),
        server("b1", &b1.address()),
        server("b2", &b2.address()),
    );
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).expect("write haproxy.cfg");
    let _haproxy = Haproxy(
        Command::new("haproxy")
            .arg("-f")
            .arg(&cfg_path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run haproxy (scripts/test installs Debian's haproxy)"),
    );
    wait_status(&sock, "b1", "UP", 15).await;
    wait_status(&sock, "b2", "UP", 15).await;

    // b1's /readyz fails: the fleet decides DOWN, HAProxy follows.
    let (map, follower) = follow(vec![url.clone()]);
    b1.set_flip(503);
    let flipped = Instant::now();
    wait_map(&map, "b1 DOWN in the map", 10, |m| {
        m.pools
            .get("web")
            .and_then(|p| p.get("b1"))
            .is_some_and(|e| e.state == HealthState::Down)
    })
    .await;
    let decided = flipped.elapsed();
    wait_status(&sock, "b1", "DOWN (agent)", 10).await;
    let converged = flipped.elapsed();
    let (_, _, last) = servers(&sock)
        .into_iter()
        .find(|(s, _, _)| s == "b1")
        .expect("b1");
    assert!(last.contains("L7STS"), "the reason reaches HAProxy: {last}");
    for _ in 0..10 {
        assert!(ok_through(fe, "/after-down").await, "HAProxy routes to b2");
    }
    assert_eq!(hits(&b1, "/after-down"), 0, "no new connection to b1");
    assert_eq!(hits(&b2, "/after-down"), 10);
    println!("convergence: /readyz flip -> map DOWN {decided:?}, -> HAProxy DOWN {converged:?}");

    // Drain b2 through the admin API: HAProxy shows DRAIN; ready again.
    let set = |state: trackwire_core::AdminState| pb::SetBackendStateRequest {
        pool: "web".into(),
        backend: "b2".into(),
        state: admin_to_pb(state),
        reason: "test".into(),
        ..Default::default()
    };
    admin
        .set_backend_state(set(trackwire_core::AdminState::Drain))
        .await
        .expect("drain");
    wait_status(&sock, "b2", "DRAIN (agent)", 10).await;
    admin
        .set_backend_state(set(trackwire_core::AdminState::Ready))
        .await
        .expect("ready");
    wait_status(&sock, "b2", "UP", 10).await;

    // The control plane goes away: HAProxy's agent checks fail, and it
    // keeps the last states and keeps routing.
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), cp).await;
    wait_for("HAProxy's agent checks to fail", 10, || async {
        servers(&sock)
            .iter()
            .any(|(s, _, last)| s == "b2" && !last.contains("via agent"))
    })
    .await;
    assert_eq!(status(&sock, "b1"), "DOWN (agent)");
    assert_eq!(status(&sock, "b2"), "UP");
    for _ in 0..5 {
        assert!(ok_through(fe, "/after-cp").await, "still routing");
    }
    assert_eq!(hits(&b2, "/after-cp"), 5);
    agent.cancel();
    follower.cancel();
}

/// `trackwire export haproxy` prints backends HAProxy accepts (`haproxy -c`)
/// with one agent-checked server per backend; a bad address exits 2
/// naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_backends_are_valid_haproxy_configuration() {
    let store: Arc<dyn trackwire_control_plane::store::Store> =
        Arc::new(trackwire_control_plane::store::MemStore::new());
    let cp = start_cp(store, Default::default()).await;
    let mut pool = flip_pool(
        "kube-api",
        "master-1",
        "127.0.0.1:6443".into(),
        Duration::from_secs(1),
    );
    let mut backup = trackwire_core::BackendSpec::new("master-2", "127.0.0.1:6444");
    backup.backup = true;
    pool.backends.push(backup);
    apply_pools(&mut admin(&cp.url).await, std::slice::from_ref(&pool)).await;
    let bin = env!("CARGO_BIN_EXE_trackwire");
    let out = tokio::process::Command::new(bin)
        .args(["export", "haproxy", "--agent-check-addr", "127.0.0.1:7404"])
        .args(["--control-plane", &cp.url])
        .output()
        .await
        .expect("run trackwire export");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.matches("agent-check agent-addr 127.0.0.1 agent-port 7404")
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("agent-send \"kube-api/master-2\\n\" backup"),
        "{text}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  mode tcp\n  bind 127.0.0.1:7405\n  default_backend kube-api\n{text}"
        ),
    )
    .expect("write");
    let checked = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("run haproxy -c (scripts/test installs Debian's haproxy)");
    assert!(
        checked.status.success(),
        "haproxy -c refused the export:\n{text}\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let bad = tokio::process::Command::new(bin)
        .args(["export", "haproxy", "--agent-check-addr", "cp-1"])
        .args(["--control-plane", &cp.url])
        .output()
        .await
        .expect("run trackwire export");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--agent-check-addr"));
    cp.stop().await;
}
