//! Every check kind against real servers on loopback: HTTP statuses, ranges,
//! bodies (substring, regex, negation), timeouts, refused and reset
//! connections, a 100 MiB body, HTTPS with a test CA (valid, wrong SNI,
//! expired, untrusted with and without `tls_insecure`, mutual TLS, HTTP/2 by
//! ALPN), TCP send/expect and gRPC health.

use std::time::Duration;

use tokio::net::TcpListener;
use trackwire_core::{BodyMatch, CheckKind, CheckSpec, StatusSet, TlsSpec};
use trackwire_probe_agent::check::{CheckResult, Outcome, PreparedCheck};
use trackwire_testkit::http::{BIG_BODY, TestHttp, start_resetting};
use trackwire_testkit::pki::{TestPki, serve_h2, serve_https};

fn spec(kind: CheckKind, path: &str) -> CheckSpec {
    let t = Duration::from_secs(1);
    CheckSpec {
        kind,
        path: path.into(),
        interval: t,
        fast_interval: t,
        down_interval: t,
        timeout: t,
        ..CheckSpec::http_default()
    }
}

async fn run(address: &str, spec: CheckSpec) -> CheckResult {
    PreparedCheck::new(address, spec)
        .expect("valid check")
        .run()
        .await
}

async fn http(path: &str, f: impl FnOnce(&mut CheckSpec)) -> CheckResult {
    let server = TestHttp::start().await;
    let mut s = spec(CheckKind::Http, path);
    f(&mut s);
    run(&server.address(), s).await
}

#[tokio::test]
async fn http_status_and_ranges() {
    let r = http("/status/200", |_| {}).await;
    assert_eq!((r.outcome, r.status), (Outcome::L7Ok, Some(200)));
    let r = http("/status/503", |_| {}).await;
    assert_eq!((r.outcome, r.status), (Outcome::L7Sts, Some(503)));
    assert_eq!(r.summary(), "L7STS 503");
    // The default 200-399 accepts a redirect; a list excludes what it does not name.
    assert_eq!(http("/status/302", |_| {}).await.outcome, Outcome::L7Ok);
    let list = |s: &mut CheckSpec| s.expect_status = "200,204".parse().expect("valid");
    assert_eq!(http("/status/204", list).await.outcome, Outcome::L7Ok);
    assert_eq!(http("/status/201", list).await.outcome, Outcome::L7Sts);
    let range = |s: &mut CheckSpec| s.expect_status = "500-599".parse().expect("valid");
    assert_eq!(http("/status/503", range).await.outcome, Outcome::L7Ok);
    // `!`: anything but 503.
    let not = |s: &mut CheckSpec| {
        s.expect_status = StatusSet::single(503);
        s.expect_negate = true;
    };
    assert_eq!(http("/status/200", not).await.outcome, Outcome::L7Ok);
    assert_eq!(http("/status/503", not).await.outcome, Outcome::L7Sts);
}

#[tokio::test]
async fn http_body_match_and_mismatch() {
    let sub = |n: &str| {
        let n = n.to_string();
        move |s: &mut CheckSpec| s.expect_body = Some(BodyMatch::Substring(n))
    };
    assert_eq!(http("/body", sub("trackwire")).await.outcome, Outcome::L7Ok);
    let r = http("/body", sub("nope")).await;
    assert_eq!(r.outcome, Outcome::L7Rsp);
    assert!(r.reason.contains("does not match"), "{}", r.reason);
    let re =
        |s: &mut CheckSpec| s.expect_body = Some(BodyMatch::Regex("^hello [a-z]+ world$".into()));
    assert_eq!(http("/body", re).await.outcome, Outcome::L7Ok);
    let neg = |s: &mut CheckSpec| {
        s.expect_body = Some(BodyMatch::Substring("trackwire".into()));
        s.expect_negate = true;
    };
    assert_eq!(http("/body", neg).await.outcome, Outcome::L7Rsp);
    // A body match still requires an expected status.
    assert_eq!(
        http("/status/503", sub("status")).await.outcome,
        Outcome::L7Sts
    );
}

#[tokio::test]
async fn http_slow_response_times_out() {
    let r = http("/slow", |s| s.timeout = Duration::from_millis(300)).await;
    assert_eq!(r.outcome, Outcome::L7Tout);
    assert!(
        r.latency >= Duration::from_millis(300) && r.latency < Duration::from_secs(2),
        "{r:?}"
    );
}

#[tokio::test]
async fn connection_refused_and_reset() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed = l.local_addr().expect("addr").to_string();
    drop(l);
    let r = run(&closed, spec(CheckKind::Http, "/")).await;
    assert_eq!(r.outcome, Outcome::L4Con);
    assert_eq!(r.reason, "connection refused");
    assert_eq!(
        run(&closed, spec(CheckKind::Tcp, "/")).await.outcome,
        Outcome::L4Con
    );

    let resetting = start_resetting().await.to_string();
    let r = run(&resetting, spec(CheckKind::Http, "/")).await;
    assert_eq!(r.outcome, Outcome::L7Rsp, "{r:?}");
}

#[tokio::test]
async fn hundred_mib_body_is_read_only_up_to_64_kib() {
    let server = TestHttp::start().await;
    let mut s = spec(CheckKind::Http, "/big");
    s.expect_body = Some(BodyMatch::Substring("not in the body".into()));
    s.timeout = Duration::from_secs(5);
    let r = run(&server.address(), s).await;
    assert_eq!(r.outcome, Outcome::L7Rsp, "{r:?}");
    assert!(
        r.latency < Duration::from_secs(2),
        "stopped reading early: {r:?}"
    );
    // The server could write only what fits in socket buffers before the
    // check hung up: far less than the body.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut last = server.big_bytes_sent();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = server.big_bytes_sent();
        if now == last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server kept sending"
        );
        last = now;
    }
    assert!(
        last < BIG_BODY / 4,
        "the check consumed {last} of {BIG_BODY} bytes"
    );
}

#[tokio::test]
async fn tcp_connect_and_send_expect() {
    let server = TestHttp::start().await;
    assert_eq!(
        run(&server.address(), spec(CheckKind::Tcp, "/"))
            .await
            .outcome,
        Outcome::L4Ok
    );
    let mut s = spec(CheckKind::Tcp, "/");
    s.tcp_send = Some("GET /body HTTP/1.0\r\n\r\n".into());
    s.tcp_expect = Some("trackwire".into());
    assert_eq!(
        run(&server.address(), s.clone()).await.outcome,
        Outcome::L7Ok
    );
    s.tcp_expect = Some("absent".into());
    assert_eq!(run(&server.address(), s).await.outcome, Outcome::L7Rsp);
}

#[tokio::test]
async fn port_and_address_overrides() {
    let server = TestHttp::start().await;
    let port = server.addr.expect("addr").port();
    // Traffic would go to a dead port on another host name; the check goes
    // to the overridden address and port.
    let mut s = spec(CheckKind::Http, "/status/200");
    s.port = Some(port);
    s.address = Some("127.0.0.1".into());
    assert_eq!(run("backend.invalid:1", s).await.outcome, Outcome::L7Ok);
}

fn https(pki: &TestPki, server_name: Option<&str>) -> CheckSpec {
    let mut s = spec(CheckKind::Https, "/status/200");
    s.tls = TlsSpec {
        server_name: server_name.map(str::to_string),
        ca_file: Some(pki.ca_file()),
        ..TlsSpec::default()
    };
    s
}

#[tokio::test]
async fn https_with_a_test_ca() {
    let pki = TestPki::new();
    let http = TestHttp::start().await;
    let good = serve_https(
        http.clone(),
        &pki.ca.issue(&["api.test"], false, false),
        None,
    )
    .await;
    let addr = good.to_string();

    // Valid: SNI set independently of the address.
    let r = run(&addr, https(&pki, Some("api.test"))).await;
    assert_eq!(r.outcome, Outcome::L7Ok, "{r:?}");
    // Wrong SNI: the certificate does not name it.
    let r = run(&addr, https(&pki, Some("other.test"))).await;
    assert_eq!(r.outcome, Outcome::L6Rsp, "{r:?}");
    assert!(r.reason.contains("certificate"), "{}", r.reason);
    // Untrusted CA: fails verified, passes with tls_insecure.
    let mut untrusted = https(&pki, Some("api.test"));
    untrusted.tls.ca_file = Some(pki.other_ca_file());
    assert_eq!(run(&addr, untrusted.clone()).await.outcome, Outcome::L6Rsp);
    untrusted.tls.ca_file = None;
    untrusted.tls.insecure = true;
    assert_eq!(run(&addr, untrusted).await.outcome, Outcome::L7Ok);

    // Expired certificate.
    let expired = serve_https(
        http.clone(),
        &pki.ca.issue(&["api.test"], true, false),
        None,
    )
    .await;
    let r = run(&expired.to_string(), https(&pki, Some("api.test"))).await;
    assert_eq!(r.outcome, Outcome::L6Rsp);
    assert!(r.reason.to_lowercase().contains("expired"), "{}", r.reason);

    // A missing CA file is a clear per-check failure, not a crash.
    let mut missing = https(&pki, Some("api.test"));
    missing.tls.ca_file = Some("/nonexistent/ca.pem".into());
    let r = run(&addr, missing).await;
    assert_eq!(r.outcome, Outcome::L6Rsp);
    assert!(r.reason.contains("/nonexistent/ca.pem"), "{}", r.reason);
}

#[tokio::test]
async fn https_client_certificate_and_http2() {
    let pki = TestPki::new();
    let http = TestHttp::start().await;
    let mtls = serve_https(
        http,
        &pki.ca.issue(&["api.test"], false, false),
        Some(&pki.ca),
    )
    .await;
    let mut s = https(&pki, Some("api.test"));
    assert_eq!(
        run(&mtls.to_string(), s.clone()).await.outcome,
        Outcome::L6Rsp,
        "no client cert"
    );
    let client = pki.ca.issue(&["agent.test"], false, true);
    s.tls.client_cert = Some(pki.write("client.pem", &client.cert_pem));
    s.tls.client_key = Some(pki.write("client.key", &client.key_pem));
    let r = run(&mtls.to_string(), s).await;
    assert_eq!(r.outcome, Outcome::L7Ok, "{r:?}");

    let h2 = serve_h2(&pki.ca.issue(&["api.test"], false, false)).await;
    let mut s = https(&pki, Some("api.test"));
    s.path = "/".into();
    s.tls.alpn = vec!["h2".into()];
    s.expect_body = Some(BodyMatch::Substring("h2 ok".into()));
    let r = run(&h2.to_string(), s).await;
    assert_eq!(r.outcome, Outcome::L7Ok, "{r:?}");
}

#[tokio::test]
async fn grpc_health_serving_and_not_serving() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("api", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("db", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let grpc = |svc: &str| {
        let mut s = spec(CheckKind::Grpc, "/");
        s.grpc_service = Some(svc.to_string());
        s
    };
    let r = run(&addr, grpc("api")).await;
    assert_eq!(r.outcome, Outcome::L7Ok, "{r:?}");
    let r = run(&addr, grpc("db")).await;
    assert_eq!(
        (r.outcome, r.reason.as_str()),
        (Outcome::L7Sts, "NOT_SERVING")
    );
    let r = run(&addr, grpc("unknown")).await;
    assert_eq!(r.outcome, Outcome::L7Rsp, "{r:?}");
    // The whole server (service "") is SERVING by default.
    let mut whole = spec(CheckKind::Grpc, "/");
    whole.grpc_service = None;
    assert_eq!(run(&addr, whole).await.outcome, Outcome::L7Ok);
}
