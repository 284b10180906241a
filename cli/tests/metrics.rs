//! Every component's `/metrics` as Prometheus reads it, on a real fleet
//! (etcd, a control plane, a probe agent and a proxy, all over mutual TLS,
//! checking a real HTTP backend): `promtool check metrics` (Debian's
//! `prometheus` package, installed by `scripts/test`) reports nothing on
//! any of them; OpenMetrics is served when asked for; the HAProxy-style
//! series follow a backend going DOWN; labels stay bounded; and the
//! README's metrics reference lists exactly the families exported.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trackwire_core::config::ListenerSpec;
use trackwire_proto::v1::admin_service_client::AdminServiceClient;
use trackwire_testkit::EtcdCluster;
use trackwire_testkit::http::TestHttp;
use trackwire_transport::Role;

use support::*;

/// GETs `path` with an `Accept` header; (content type, body).
async fn scrape(base: &str, accept: &str) -> (String, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    s.write_all(
        format!(
            "GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    let (head, body) = buf.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .expect("content-type");
    (content_type, body.to_owned())
}

/// The value of one sample line (`series` is the name with its labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn wait_sample(base: &str, series: &str, what: &str, f: impl Fn(f64) -> bool) {
    wait_for(what, 15, || async {
        let (_, text) = scrape(base, "text/plain").await;
        sample(&text, series).is_some_and(&f)
    })
    .await;
}

/// `promtool check metrics` on `text`: its complaints (empty when clean).
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (scripts/test installs Debian's prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said
    } else {
        format!("exit {:?}: {said}", out.status.code())
    }
}

/// The metric family names in a classic-text scrape (as `# TYPE` names them).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The names in the README's metrics reference table.
fn documented() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme
        .find("### Metrics reference")
        .expect("a '### Metrics reference' section in README.md");
    readme[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_exports_metrics_promtool_accepts() {
    logs();
    let etcd = EtcdCluster::start();
    let store = etcd_store(etcd.endpoints()).await;
    let pki = Pki::new();
    let cp = start_cp(
        store,
        trackwire_control_plane::Config {
            tls: Some(pki.server()),
            ..Default::default()
        },
    )
    .await;
    let url = cp.url.replacen("http://", "https://", 1);
    let backend = TestHttp::start().await;
    let pool = flip_pool("web", "b1", backend.address(), Duration::from_millis(100));
    let admin_tls = pki.client(Role::Admin, "ops");
    let mut admin = AdminServiceClient::new(
        trackwire_connect::channel(&url, Some(&admin_tls))
            .await
            .expect("connect admin"),
    );
    apply_pools(&mut admin, std::slice::from_ref(&pool)).await;

    let stop = CancellationToken::new();
    let agent_http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let agent_base = format!("http://{}", agent_http.local_addr().expect("addr"));
    tokio::spawn(trackwire_probe_agent::run(
        trackwire_probe_agent::Config {
            control_plane: vec![url.clone()],
            zone: "a".into(),
            state_dir: None,
            heartbeat: Duration::from_millis(300),
            tls: Some(pki.client(Role::Agent, "agent-1")),
        },
        Some(agent_http),
        stop.clone(),
    ));
    let listener = trackwire_data_plane::listener::Listener::bind(ListenerSpec::new(
        "front",
        "127.0.0.1:0".parse().expect("addr"),
        "web",
    ))
    .expect("bind proxy");
    let proxy_addr = listener.local_addr().expect("addr");
    let proxy_http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_base = format!("http://{}", proxy_http.local_addr().expect("addr"));
    tokio::spawn(trackwire_data_plane::run(
        trackwire_data_plane::Config {
            control_plane: vec![url.clone()],
            listeners: vec![listener.spec.clone()],
            state_dir: None,
            proxy_id: "edge-1".into(),
            drain_grace: Duration::from_secs(1),
            workers: 0,
            tls: Some(pki.client(Role::Proxy, "edge-1")),
        },
        vec![listener],
        Some(proxy_http),
        stop.clone(),
    ));

    // b1 UP, then one connection relayed through the proxy.
    let up = r#"trackwire_server_status{pool="web",backend="b1",state="UP"}"#;
    wait_sample(&cp.http, up, "b1 UP on the control plane", |v| v == 1.0).await;
    wait_for("the proxy to serve", 15, || async {
        http_get(&proxy_base, "/readyz").await.0 == 200
    })
    .await;
    let mut c = tokio::net::TcpStream::connect(proxy_addr)
        .await
        .expect("connect proxy");
    c.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );
    let relayed =
        r#"trackwire_proxy_backend_connections_total{listener="front",pool="web",backend="b1"}"#;
    wait_sample(
        &proxy_base,
        relayed,
        "the relayed connection counted",
        |v| v == 1.0,
    )
    .await;
    let bytes_out =
        r#"trackwire_proxy_backend_bytes_out_total{listener="front",pool="web",backend="b1"}"#;
    wait_sample(&proxy_base, bytes_out, "the answer's bytes counted", |v| {
        v >= answer.len() as f64
    })
    .await;

    // b1 goes DOWN: exactly one state series at 1, one UP→DOWN transition.
    backend.set_flip(503);
    let down = r#"trackwire_server_status{pool="web",backend="b1",state="DOWN"}"#;
    wait_sample(&cp.http, down, "b1 DOWN on the control plane", |v| v == 1.0).await;
    let (_, text) = scrape(&cp.http, "text/plain").await;
    for state in ["UP", "DRAIN", "MAINT"] {
        let series =
            format!(r#"trackwire_server_status{{pool="web",backend="b1",state="{state}"}}"#);
        assert_eq!(sample(&text, &series), Some(0.0), "{series}\n{text}");
    }
    wait_sample(
        &cp.http,
        r#"trackwire_server_check_up_down_total{pool="web",backend="b1"}"#,
        "one UP→DOWN transition recorded",
        |v| v == 1.0,
    )
    .await;
    let (_, text) = scrape(&cp.http, "text/plain").await;
    assert_eq!(
        sample(&text, r#"trackwire_backend_active_servers{pool="web"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"trackwire_server_votes_down{pool="web",backend="b1"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"trackwire_grpc_server_handled_total{grpc_service="trackwire.v1.AdminService",grpc_method="ApplyPools",grpc_code="OK"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"trackwire_store_operation_seconds_count{op="txn"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    let (_, agent_text) = scrape(&agent_base, "text/plain").await;
    assert!(
        sample(
            &agent_text,
            r#"trackwire_agent_check_results_total{pool="web",outcome="L7STS"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{agent_text}"
    );

    // promtool on each component's classic text; OpenMetrics on request.
    let mut exported = BTreeSet::new();
    for (component, base) in [
        ("control plane", &cp.http),
        ("agent", &agent_base),
        ("proxy", &proxy_base),
    ] {
        let (content_type, text) = scrape(base, "text/plain").await;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let said = promtool(&text);
        assert!(
            said.is_empty(),
            "promtool on the {component}'s /metrics:\n{said}"
        );
        assert!(
            text.contains("trackwire_tls_certificate_not_after_seconds{kind=\"leaf\""),
            "the {component} exports its certificate's expiry:\n{text}"
        );
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            for unbounded in ["peer=", "client=", "addr=", "port="] {
                assert!(
                    !l.contains(unbounded),
                    "{component}: unbounded label in {l}"
                );
            }
        }
        exported.extend(families(&text));
        let (content_type, open) = scrape(
            base,
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .await;
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(open.ends_with("# EOF\n"), "{component}: {open}");
    }

    // The README's reference lists what is exported, no more, no less.
    let documented = documented();
    let missing: Vec<_> = exported.difference(&documented).collect();
    let gone: Vec<_> = documented.difference(&exported).collect();
    assert!(
        missing.is_empty() && gone.is_empty(),
        "README metrics reference out of date:\n  exported but not documented: {missing:?}\n  documented but not exported: {gone:?}"
    );

    stop.cancel();
    cp.stop().await;
    drop(etcd);
}
