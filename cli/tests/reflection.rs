//! Server reflection with a client that is not ours: Python grpcio and
//! grpcio-reflection (from PyPI; `scripts/test` installs them) discover the
//! services and call AdminService and grpc.health.v1 with no .proto files.

mod support;
use std::sync::Arc;
use std::time::Duration;

use trackwire_control_plane::keys::Keys;
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::{BackendSpec, PoolSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_discovers_and_calls_the_control_plane() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let pool = PoolSpec::new("web", vec![BackendSpec::new("b1", "127.0.0.1:9")]);
    let keys = Keys::new("/trackwire/").expect("prefix");
    trackwire_control_plane::writes::apply(store.as_ref(), &keys, &[pool], 0, false)
        .await
        .expect("apply");
    let cp = support::start_cp(store, trackwire_control_plane::Config::default()).await;
    let addr = cp.url.trim_start_matches("http://").to_string();
    // Wait until serving (health reports SERVING once facts are loaded).
    trackwire_cli::admin::connect_urls(&[format!("http://{addr}")])
        .await
        .expect("connect")
        .list_pools(trackwire_proto::v1::ListPoolsRequest {})
        .await
        .expect("ready");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reflection_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(&addr)
            .output(),
    )
    .await
    .expect("python finished within 60s")
    .expect("run python3 (scripts/test installs grpcio and grpcio-reflection)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for svc in [
        "trackwire.v1.AdminService",
        "trackwire.v1.HealthMapService",
        "trackwire.v1.ProbeService",
        "grpc.health.v1.Health",
    ] {
        assert!(stdout.contains(svc), "{svc} not discovered: {stdout}");
    }
    assert!(stdout.contains("pools: web"), "{stdout}");
    assert!(stdout.contains("health: 1"), "SERVING: {stdout}");
    cp.token.cancel();
}
