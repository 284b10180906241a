//! What `get` and `describe` print, as tables and as JSON, from a running
//! control plane with a real agent checking a demo backend: both forms
//! show the same values, states are the domain's names, times are unix ms
//! in JSON and readable in tables, and `describe` shows each vote's last
//! check.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trackwire_cli::demo::DemoBackend;
use trackwire_control_plane::store::{MemStore, Store};
use trackwire_core::convert::pool_to_pb;
use trackwire_core::{AdminState, BackendSpec, CheckSpec, HealthState, PoolSpec, Quorum};
use trackwire_proto::v1 as pb;

const INTERVAL: Duration = Duration::from_millis(200);

/// A control plane on MemStore, one agent and one demo backend in pool `web`.
struct Stack {
    url: String,
    token: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback")
}

async fn start() -> Stack {
    let token = CancellationToken::new();
    let backend = DemoBackend::spawn("backend-1", local().await, token.clone()).expect("backend");
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let grpc = local().await;
    let url = format!("http://{}", grpc.local_addr().expect("addr"));
    tokio::spawn(trackwire_control_plane::run(
        trackwire_control_plane::Config::default(),
        store,
        trackwire_control_plane::Listeners {
            grpc,
            http: None,
            agent_check: None,
        },
        token.clone(),
    ));
    let mut admin = trackwire_cli::admin::connect_urls(std::slice::from_ref(&url))
        .await
        .expect("connect");
    let pool = PoolSpec {
        name: "web".into(),
        backends: vec![BackendSpec {
            name: backend.name.clone(),
            address: backend.addr.to_string(),
            weight: 3,
            admin_state: AdminState::Ready,
            backup: false,
            zone: String::new(),
        }],
        check: Some(CheckSpec {
            path: "/readyz".into(),
            interval: INTERVAL,
            fast_interval: INTERVAL,
            down_interval: INTERVAL,
            timeout: INTERVAL,
            rise: 1,
            ..CheckSpec::http_default()
        }),
        quorum: Quorum::Majority,
        initial_state: HealthState::Down,
        replicas: 3,
        zone_spread: false,
        damping: None,
        grpc_xds: false,
    };
    admin
        .apply_pools(pb::ApplyPoolsRequest {
            pools: vec![pool_to_pb(&pool)],
            expected_revision: 0,
            dry_run: false,
        })
        .await
        .expect("apply");
    tokio::spawn(trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: vec![url.clone()],
            zone: "zone-a".into(),
            state_dir: None,
            heartbeat: Duration::from_millis(100),
            tls: None,
        },
        None,
        token.clone(),
    ));
    // Wait for an UP vote that carries the agent's last check.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = admin
            .get_health(pb::GetHealthRequest { pool: "web".into() })
            .await
            .expect("health")
            .into_inner();
        let voted = h.backends.iter().any(|b| {
            b.endpoint
                .as_ref()
                .is_some_and(|e| e.state == pb::HealthState::Up as i32)
                && b.votes.iter().any(|v| v.last_result.is_some())
        });
        if voted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no vote with a last check: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Stack { url, token }
}

/// Runs the `trackwire` binary against the stack: (exit code, stdout, stderr).
async fn cli(stack: &Stack, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trackwire"))
        .args(args)
        .args(["--control-plane", &stack.url])
        .output()
        .await
        .expect("run trackwire");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(stack: &Stack, args: &[&str]) -> String {
    let (code, out, err) = cli(stack, args).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

async fn json(stack: &Stack, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = ok(stack, &all).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// A table as header → cell maps, cells cut at the headers' offsets (so an
/// empty cell stays empty instead of shifting the ones after it).
fn parse_table(text: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    // Headers are separated by two spaces or more; one is inside a header.
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header[..i].ends_with("  ")))
        .map(|(i, _)| i)
        .collect();
    let cut = |line: &str, k: usize| -> String {
        let chars: Vec<char> = line.chars().collect();
        let end = starts.get(k + 1).copied().unwrap_or(chars.len());
        chars
            .get(starts[k]..end.min(chars.len()))
            .map(|c| c.iter().collect::<String>())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    lines
        .map(|line| {
            (0..starts.len())
                .map(|k| (cut(header, k), cut(line, k)))
                .collect()
        })
        .collect()
}

fn cell<'a>(row: &'a [(String, String)], header: &str) -> &'a str {
    row.iter()
        .find(|(h, _)| h == header)
        .map(|(_, c)| c.as_str())
        .unwrap_or_else(|| panic!("no column {header} in {row:?}"))
}

/// `2026-11-26T21:29:41Z (12s ago)`.
fn is_human_time(s: &str) -> bool {
    let Some((utc, ago)) = s.split_once(' ') else {
        return false;
    };
    utc.len() == 20 && utc.ends_with('Z') && &utc[10..11] == "T" && ago.ends_with(" ago)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_views_show_the_same_rows_as_table_and_json() {
    let stack = start().await;

    let table = parse_table(&ok(&stack, &["get", "backends"]).await);
    let rows = json(&stack, &["get", "backends"]).await;
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(table.len(), 1, "{table:?}");
    let (t, j) = (&table[0], &rows[0]);
    assert_eq!(j["pool"], "web");
    assert_eq!(j["backend"], "backend-1");
    assert_eq!(j["state"], "up", "the domain's name for the state");
    assert_eq!(j["admin_state"], "ready");
    assert_eq!(j["stale"], false);
    assert_eq!(
        (j["votes_up"].as_u64(), j["votes"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(cell(t, "POOL"), "web");
    assert_eq!(cell(t, "BACKEND"), "backend-1");
    assert_eq!(cell(t, "ADDRESS"), j["address"]);
    assert_eq!(cell(t, "STATE"), "UP");
    assert_eq!(cell(t, "ADMIN"), "ready");
    assert_eq!(cell(t, "VOTES(UP/ALL)"), "1/1");
    assert_eq!(cell(t, "REASON"), j["reason"]);
    assert!(
        j["reason"].as_str().is_some_and(|r| r.starts_with("L7OK")),
        "{j}"
    );

    let table = parse_table(&ok(&stack, &["get", "agents"]).await);
    let rows = json(&stack, &["get", "agents"]).await;
    assert_eq!((table.len(), rows.as_array().map(Vec::len)), (1, Some(1)));
    let (t, j) = (&table[0], &rows[0]);
    assert_eq!(cell(t, "AGENT"), j["agent"]);
    assert_eq!(
        (cell(t, "ZONE"), &j["zone"]),
        ("zone-a", &Value::from("zone-a"))
    );
    assert_eq!(cell(t, "ADDRESS"), j["address"]);
    assert_eq!((cell(t, "CHECKS"), j["checks"].as_u64()), ("1", Some(1)));
    assert_eq!(
        (cell(t, "SUSPECT"), &j["suspect"]),
        ("no", &Value::Bool(false))
    );

    let table = parse_table(&ok(&stack, &["get", "pools"]).await);
    let rows = json(&stack, &["get", "pools"]).await;
    assert_eq!((table.len(), rows.as_array().map(Vec::len)), (1, Some(1)));
    let (t, j) = (&table[0], &rows[0]);
    assert_eq!((cell(t, "NAME"), &j["name"]), ("web", &Value::from("web")));
    assert_eq!(
        (cell(t, "BACKENDS"), j["backends"].as_u64()),
        ("1", Some(1))
    );
    assert_eq!(cell(t, "CHECK"), "http GET /readyz expect 200-399");
    assert_eq!(cell(t, "CHECK"), j["check"]);
    assert_eq!(
        (cell(t, "QUORUM"), &j["quorum"]),
        ("majority", &Value::from("majority"))
    );
    assert_eq!(
        (cell(t, "INITIAL"), &j["initial_state"]),
        ("down", &Value::from("down"))
    );
}

/// `describe -o json` panicked (`index out of bounds: the len is 5 but the
/// index is 5`) for any backend with votes, and the table's `LAST CHECK`
/// column had no cells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_votes_and_their_last_check() {
    let stack = start().await;
    let args = ["describe", "backend", "web/backend-1"];

    let (code, out, err) = cli(
        &stack,
        &["describe", "backend", "web/backend-1", "-o", "json"],
    )
    .await;
    assert_eq!(code, 0, "describe -o json failed: {err}");
    let j: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(j["pool"], "web");
    assert_eq!(j["backend"], "backend-1");
    assert_eq!(j["state"], "up");
    assert_eq!(j["admin_state"], "ready");
    assert_eq!(j["weight"], 3);
    assert!(j["decided_at_ms"].as_u64().is_some_and(|t| t > 0), "{j}");
    let votes = j["agent_votes"].as_array().expect("agent_votes");
    assert_eq!(votes.len(), 1, "{j}");
    let v = &votes[0];
    assert_eq!(v["state"], "up");
    assert_eq!(v["suspect"], false);
    assert!(v["since_ms"].as_u64().is_some_and(|t| t > 0), "{v}");
    let last = &v["last_result"];
    assert_eq!(last["outcome"], "L7OK", "{v}");
    assert_eq!(last["status"], 200, "{v}");
    assert!(last["at_ms"].as_u64().is_some_and(|t| t > 0), "{v}");
    assert!(last["latency_us"].is_u64(), "{v}");

    let out = ok(&stack, &args).await;
    assert!(
        out.contains("State:        UP (1 of 1 counted votes UP)"),
        "{out}"
    );
    assert!(out.contains("Admin state:  ready"), "{out}");
    assert!(out.contains("Weight:       3\n"), "{out}");
    let decided = out
        .lines()
        .find_map(|l| l.strip_prefix("Decided at:   "))
        .expect("Decided at line");
    assert!(is_human_time(decided), "{decided}");
    let agent = v["agent"].as_str().expect("agent");
    assert!(out.contains(&format!("Checked by:   {agent}\n")), "{out}");
    let table_start = out.find("AGENT").expect("votes table");
    let votes_end = out.find("\nRecent state changes").expect("history section");
    let rows = parse_table(&out[table_start..votes_end]);
    assert_eq!(rows.len(), 1, "{out}");
    let r = &rows[0];
    assert_eq!(cell(r, "AGENT"), agent);
    assert_eq!(cell(r, "VERDICT"), "UP");
    assert_eq!(cell(r, "REASON"), v["reason"]);
    assert!(is_human_time(cell(r, "SINCE")), "{out}");
    assert_eq!(cell(r, "NOTE"), "");
    // `L7OK 200 in 1.2ms, 2026-11-26T21:29:41Z (0s ago)`.
    let last_check = cell(r, "LAST CHECK");
    let (what, when) = last_check.split_once(", ").expect("LAST CHECK cell");
    assert!(what.starts_with("L7OK 200 in "), "{out}");
    assert!(is_human_time(when), "{out}");
    // The pool starts DOWN, so its first decision is a recorded change.
    let history = parse_table(&out[out.find("CHANGED").expect("history table")..]);
    assert_eq!(history.len(), 1, "{out}");
    let h = &history[0];
    assert_eq!((cell(h, "FROM"), cell(h, "TO")), ("DOWN", "UP"), "{out}");
    assert_eq!(cell(h, "VOTES UP/DOWN"), "1/0");
    assert_eq!(cell(h, "BY"), agent);
    assert!(is_human_time(cell(h, "CHANGED")), "{out}");
    assert_eq!(j["history"][0]["to"], "up", "{j}");
}
