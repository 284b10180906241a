//! The runner and the control-plane session against real servers: first
//! checks spread over an interval, assignment changes applied live without
//! restarting unchanged checks, and verdicts re-sent after a failover.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::{CheckSpec, StatusSet};
use trackwire_probe_agent::runner::{Runner, Shared, TargetKey, TargetSpec};
use trackwire_testkit::http::TestHttp;

fn check(path: &str, interval: Duration, rise: u32) -> CheckSpec {
    CheckSpec {
        path: path.into(),
        expect_status: StatusSet::single(200),
        interval,
        fast_interval: interval,
        down_interval: interval,
        timeout: interval,
        rise,
        fall: 1,
        ..CheckSpec::http_default()
    }
}

fn key(b: &str) -> TargetKey {
    ("p".to_string(), b.to_string())
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_checks_spread_over_one_interval() {
    let server = TestHttp::start().await;
    let shared = Arc::new(Shared::default());
    let mut runner = Runner::new(Arc::clone(&shared));
    let n = 200;
    let targets: HashMap<TargetKey, TargetSpec> = (0..n)
        .map(|i| {
            (
                key(&format!("b{i}")),
                TargetSpec {
                    address: server.address(),
                    check: check(&format!("/status/200?t={i}"), Duration::from_secs(1), 2),
                    fingerprint: 1,
                },
            )
        })
        .collect();
    let t0 = Instant::now();
    runner.apply(targets);
    wait_for("a first check of every target", 5, || {
        server
            .requests()
            .iter()
            .map(|(p, _)| p.clone())
            .collect::<HashSet<_>>()
            .len()
            == n
    })
    .await;
    let mut first: HashMap<String, Duration> = HashMap::new();
    for (path, at) in server.requests() {
        first.entry(path).or_insert(at - t0);
    }
    let mut offsets: Vec<Duration> = first.into_values().collect();
    offsets.sort();
    let spread = offsets[n - 1] - offsets[0];
    assert!(
        spread > Duration::from_millis(700),
        "first checks within {spread:?}"
    );
    // No 100 ms window holds more than a fifth of the targets (uniform: a tenth).
    for w in offsets.windows(n / 5) {
        assert!(
            w[w.len() - 1] - w[0] > Duration::from_millis(100),
            "burst: {:?}",
            &w[..3]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_changes_apply_live() {
    let server = TestHttp::start().await;
    let shared = Arc::new(Shared::default());
    let mut runner = Runner::new(Arc::clone(&shared));
    let t = |path: &str| TargetSpec {
        address: server.address(),
        check: check(path, Duration::from_millis(50), 1),
        fingerprint: 1,
    };
    runner.apply(HashMap::from([
        (key("a"), t("/status/200?a")),
        (key("b"), t("/status/200?b")),
        (key("c"), t("/status/200?c")),
    ]));
    wait_for("three verdicts", 5, || {
        ["a", "b", "c"]
            .iter()
            .all(|b| shared.verdict(&key(b)).is_some())
    })
    .await;
    let a_before = shared.verdict(&key("a")).expect("a");
    assert_eq!(a_before.state, 1, "a is UP");
    // b's check changes, c goes away, d arrives; a is untouched.
    runner.apply(HashMap::from([
        (key("a"), t("/status/200?a")),
        (key("b"), t("/status/503?b")),
        (key("d"), t("/status/200?d")),
    ]));
    assert_eq!(
        shared.verdict(&key("a")),
        Some(a_before.clone()),
        "unchanged check keeps its state"
    );
    assert!(
        shared.verdict(&key("c")).is_none(),
        "removed check is forgotten"
    );
    wait_for("b DOWN and d UP", 5, || {
        shared.verdict(&key("b")).is_some_and(|v| v.state == 2)
            && shared.verdict(&key("d")).is_some_and(|v| v.state == 1)
    })
    .await;
    let requests = server.requests();
    let c_before = requests.iter().filter(|(p, _)| p.ends_with("?c")).count();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c_after = server
        .requests()
        .iter()
        .filter(|(p, _)| p.ends_with("?c"))
        .count();
    assert_eq!(c_before, c_after, "the removed check stopped running");
    // a kept its verdict throughout: its since_ms never changed.
    assert_eq!(
        shared.verdict(&key("a")).map(|v| v.since_ms),
        Some(a_before.since_ms)
    );
}

/// An agent whose control plane goes away fails over to the next endpoint
/// and re-sends every verdict it holds, bound to its new session's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_are_resent_after_failover() {
    let server = TestHttp::start().await;
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let start_cp = |token: CancellationToken| {
        let store = Arc::clone(&store);
        async move {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", l.local_addr().expect("addr"));
            tokio::spawn(trackwire_control_plane::run(
                trackwire_control_plane::Config::default(),
                store,
                trackwire_control_plane::Listeners {
                    grpc: l,
                    http: None,
                    agent_check: None,
                },
                token,
            ));
            url
        }
    };
    let (a_token, b_token) = (CancellationToken::new(), CancellationToken::new());
    let a = start_cp(a_token.clone()).await;
    let b = start_cp(b_token.clone()).await;
    let keys = trackwire_control_plane::keys::Keys::new("/trackwire/").expect("prefix");
    let pool = trackwire_core::PoolSpec {
        name: "p".into(),
        backends: vec![trackwire_core::BackendSpec {
            name: "web".into(),
            address: server.address(),
            weight: 1,
            admin_state: trackwire_core::AdminState::Ready,
            backup: false,
            zone: String::new(),
        }],
        check: Some(check("/status/200", Duration::from_millis(100), 1)),
        quorum: trackwire_core::Quorum::Majority,
        initial_state: trackwire_core::HealthState::Down,
        replicas: 3,
        zone_spread: false,
        damping: None,
        grpc_xds: false,
    };
    trackwire_control_plane::writes::apply(store.as_ref(), &keys, &[pool], 0, false)
        .await
        .expect("apply");

    let dir = tempfile::tempdir().expect("tempdir");
    let agent_token = CancellationToken::new();
    tokio::spawn(trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: vec![a, b],
            zone: "z".into(),
            state_dir: Some(dir.path().to_path_buf()),
            heartbeat: Duration::from_millis(300),
            tls: None,
        },
        None,
        agent_token.clone(),
    ));
    let id = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(s) = std::fs::read_to_string(dir.path().join("agent-id")) {
                break s.trim().to_string();
            }
            assert!(Instant::now() < deadline, "agent-id not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let vkey = keys.verdict(&id, "p", "web");
    let lease_of = |store: Arc<dyn Store>, k: String| async move {
        store.get(&k).await.expect("get").map(|kv| kv.lease)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let first_lease = loop {
        if let Some(l) = lease_of(Arc::clone(&store), vkey.clone()).await {
            break l;
        }
        assert!(Instant::now() < deadline, "verdict never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    a_token.cancel();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lease_of(Arc::clone(&store), vkey.clone()).await {
            Some(l) if l != first_lease => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "verdict not re-sent to the second control plane"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The agent key moved to the new lease too, so the old lease's expiry
    // deletes nothing the new session wrote.
    let agent_lease = lease_of(Arc::clone(&store), keys.agent(&id)).await;
    assert_ne!(agent_lease, Some(first_lease));
    agent_token.cancel();
    b_token.cancel();
}
