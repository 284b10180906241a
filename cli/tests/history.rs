//! Each backend's recent state changes: recorded once per transition (with
//! votes, reason and agents), served by `GetHealth` and `describe`, and kept
//! across a control-plane restart on etcd.

mod support;

use std::time::Duration;

use trackwire_core::HealthState;
use trackwire_proto::v1 as pb;
use trackwire_testkit::EtcdCluster;
use trackwire_testkit::http::TestHttp;

use support::*;

async fn history(url: &str) -> Vec<pb::Transition> {
    admin(url)
        .await
        .get_health(pb::GetHealthRequest { pool: "web".into() })
        .await
        .expect("get health")
        .into_inner()
        .backends
        .into_iter()
        .find(|b| b.endpoint.as_ref().is_some_and(|e| e.backend == "b1"))
        .expect("b1")
        .history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_are_recorded_with_their_votes_and_survive_a_restart() {
    logs();
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let cp = start_cp(store.clone(), Default::default()).await;
    let http = TestHttp::start().await;
    let pool = flip_pool("web", "b1", http.address(), Duration::from_millis(100));
    apply_pools(&mut admin(&cp.url).await, std::slice::from_ref(&pool)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, agent_id) = start_agent(vec![cp.url.clone()], "a", dir.path()).await;
    let (map, follower) = follow(vec![cp.url.clone()]);
    let state = |m: &trackwire_core::HealthMap| {
        m.pools
            .get("web")
            .and_then(|p| p.get("b1"))
            .map(|e| (e.state, e.decided_at_ms))
    };
    wait_map(&map, "b1 decided UP", 10, |m| {
        state(m).is_some_and(|(s, at)| s == HealthState::Up && at > 0)
    })
    .await;
    http.set_flip(503);
    wait_map(&map, "b1 DOWN", 10, |m| {
        state(m).is_some_and(|(s, _)| s == HealthState::Down)
    })
    .await;
    http.set_flip(200);
    wait_map(&map, "b1 UP again", 10, |m| {
        state(m).is_some_and(|(s, _)| s == HealthState::Up)
    })
    .await;
    // Recorded by the recorder after it derives: wait for both entries.
    // The pool starts DOWN (its initial state), so three changes: the first
    // decision UP, DOWN, UP again.
    assert_eq!(pool.initial_state, HealthState::Down);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while history(&cp.url).await.len() != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "three transitions not recorded: {:?}",
            history(&cp.url).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = history(&cp.url).await;
    let (first, down, up) = (&h[0], &h[1], &h[2]);
    assert_eq!(
        (first.from, first.to),
        (pb::HealthState::Down as i32, pb::HealthState::Up as i32)
    );
    assert_eq!(
        (down.from, down.to),
        (pb::HealthState::Up as i32, pb::HealthState::Down as i32),
        "{h:?}"
    );
    assert_eq!(
        (down.votes_up, down.votes_down, down.votes_ignored),
        (0, 1, 0)
    );
    assert!(down.reason.contains("503"), "{down:?}");
    assert_eq!(down.agents, vec![agent_id.clone()]);
    assert_eq!(
        (up.from, up.to, up.votes_up),
        (pb::HealthState::Down as i32, pb::HealthState::Up as i32, 1)
    );
    assert!(up.at_ms >= down.at_ms);

    // `describe` shows them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackwire"))
        .args(["describe", "backend", "web/b1", "--control-plane", &cp.url])
        .output()
        .expect("describe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Recent state changes"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("UP    DOWN") && l.contains("503")),
        "{text}"
    );

    // The JSON view has the same, filterable by pool and state.
    let (status, body) = http_get(&cp.http, "/api/v1/health?pool=web&state=up").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let b1 = &json["pools"][0]["backends"][0];
    assert_eq!(
        (b1["name"].as_str(), b1["state"].as_str()),
        (Some("b1"), Some("up"))
    );
    assert_eq!(b1["history"].as_array().map(Vec::len), Some(3));
    assert_eq!(b1["history"][1]["to"], "down");
    assert_eq!(b1["agents"][0]["agent"].as_str(), Some(agent_id.as_str()));
    assert_eq!(b1["agents"][0]["counted"], true);
    assert_eq!(json["proxies"][0]["proxy_id"], "test");
    let (_, body) = http_get(&cp.http, "/api/v1/health?state=down").await;
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        json["pools"][0]["backends"].as_array().map(Vec::len),
        Some(0)
    );
    let (status, body) = http_get(&cp.http, "/api/v1/health?state=sideways").await;
    assert_eq!(status, 400);
    assert!(body.contains("sideways"), "{body}");

    // The follower's lag is one series per proxy id, with no peer address.
    let (_, metrics) = http_get(&cp.http, "/metrics").await;
    assert!(
        metrics.contains("trackwire_subscriber_lag_revisions{proxy_id=\"test\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("peer="), "{metrics}");

    // A new control plane on the same etcd serves the same history.
    agent.cancel();
    follower.cancel();
    cp.stop().await;
    let again = start_cp(store, Default::default()).await;
    wait_for("history after a restart", 10, || async {
        history(&again.url).await == h
    })
    .await;
    again.stop().await;
}
