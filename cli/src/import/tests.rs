//! Translations of whole HAProxy configurations.

use super::*;
use trackwire_core::StatusSet;

#[test]
fn seed_translates_one_to_one() {
    let seed = include_str!("../../../deploy/examples/haproxy/seed.cfg");
    let i = haproxy(seed).expect("translates");
    let doc = &i.document;
    assert_eq!(doc.pools.len(), 1, "the monitoring backend is folded in");
    let p = &doc.pools[0];
    assert_eq!(p.name, "myApp");
    assert_eq!(p.backends.len(), 3);
    assert_eq!(p.backends[0].address, "backend-1.example.com:6443");
    let c = p.check.as_ref().expect("tracked check");
    assert_eq!(
        (c.kind, c.method.as_str(), c.path.as_str()),
        (CheckKind::Http, "GET", "/readyz")
    );
    assert_eq!(c.expect_status, StatusSet::single(200));
    assert_eq!(
        p.initial_state,
        HealthState::Up,
        "HAProxy starts servers UP"
    );
    assert_eq!(doc.listeners[0].bind.port(), 6443);
    assert_eq!(doc.listeners[0].pool, "myApp");
    // The output is a valid trackwire document, unchanged by a round trip.
    let again = Document::parse(&doc.to_toml().expect("renders")).expect("valid");
    assert_eq!(&again, doc);
}

#[test]
fn kube_apiserver_with_check_ssl_verify_none() {
    let cfg = include_str!("../../../deploy/examples/haproxy/kube-apiserver.cfg");
    let i = haproxy(cfg).expect("translates");
    let p = &i.document.pools[0];
    let c = p.check.as_ref().expect("check");
    assert_eq!((c.kind, c.path.as_str()), (CheckKind::Https, "/readyz"));
    assert!(c.tls.insecure, "verify none");
    assert_eq!(
        (c.interval, c.rise, c.fall),
        (Duration::from_secs(3), 2, 3),
        "from default-server"
    );
    assert_eq!(c.timeout, Duration::from_secs(2), "timeout check");
    assert!(
        i.warnings.iter().any(|w| w.contains("timeout client")),
        "{:?}",
        i.warnings
    );
    assert_eq!(
        i.document.listeners[0].connect_timeout,
        Duration::from_secs(5)
    );
}

#[test]
fn patroni_with_the_new_http_check_syntax() {
    let cfg = include_str!("../../../deploy/examples/haproxy/patroni.cfg");
    let i = haproxy(cfg).expect("translates");
    let p = &i.document.pools[0];
    assert_eq!(p.name, "postgres-primary");
    let c = p.check.as_ref().expect("check");
    assert_eq!(
        (c.method.as_str(), c.path.as_str(), c.port),
        ("GET", "/primary", Some(8008))
    );
    assert_eq!((c.interval, c.rise, c.fall), (Duration::from_secs(1), 1, 2));
    let l = &i.document.listeners[0];
    assert_eq!((l.bind.port(), l.pool.as_str()), (5432, "postgres-primary"));
    assert!(
        l.shutdown_sessions_on_down,
        "on-marked-down shutdown-sessions"
    );
}

/// Every example's translation, rendered and parsed again, is itself.
#[test]
fn examples_round_trip_through_their_output() {
    for cfg in [
        include_str!("../../../deploy/examples/haproxy/seed.cfg"),
        include_str!("../../../deploy/examples/haproxy/kube-apiserver.cfg"),
        include_str!("../../../deploy/examples/haproxy/patroni.cfg"),
    ] {
        let doc = haproxy(cfg).expect("translates").document;
        let text = doc.to_toml().expect("renders");
        assert_eq!(Document::parse(&text).expect("valid"), doc, "{text}");
    }
}

/// `trackwire import` prints `to_toml`: what was translated must be in it.
/// `on-marked-down shutdown-sessions` was translated, then never written.
#[test]
fn patroni_output_keeps_shutdown_sessions() {
    let cfg = include_str!("../../../deploy/examples/haproxy/patroni.cfg");
    let i = haproxy(cfg).expect("translates");
    let text = i.document.to_toml().expect("renders");
    assert!(
        text.lines()
            .any(|l| l == "shutdown_sessions_on_down = true"),
        "{text}"
    );
    let again = Document::parse(&text).expect("valid");
    assert_eq!(again, i.document, "{text}");
}

#[test]
fn untranslatable_configs_fail_with_a_line() {
    let e = haproxy(
        "frontend f
  bind :80
  use_backend b if is_api
backend b
  server s 127.0.0.1:1
",
    )
    .err()
    .expect("conditional routing");
    assert!(e.starts_with("line 3:"), "{e}");
    let e = haproxy(
        "frontend f
  bind :80
  default_backend b
backend b
  server s1 127.0.0.1:1 check
  server s2 127.0.0.1:2
",
    )
    .err()
    .expect("mixed checks");
    assert!(e.starts_with("line 6:"), "{e}");
    let e = haproxy(
        "frontend f
  bind :80
  default_backend b
backend b
  option httpchk GET /
  server s1 127.0.0.1:1 check check-ssl
",
    )
    .err()
    .expect("verified ssl without a CA");
    assert!(e.contains("verify none"), "{e}");
}

#[test]
fn unknown_keywords_are_warnings_with_lines() {
    let i = haproxy(
        "global
  maxconn 100
frontend f
  bind :80
  option forwardfor
  default_backend b
backend b
  server s 127.0.0.1:1 maxconn 10
",
    )
    .expect("translates");
    assert!(
        i.warnings.iter().any(|w| w.starts_with("line 2:")),
        "{:?}",
        i.warnings
    );
    assert!(
        i.warnings.iter().any(|w| w.starts_with("line 5:")),
        "{:?}",
        i.warnings
    );
    assert!(
        i.warnings
            .iter()
            .any(|w| w.starts_with("line 8:") && w.contains("maxconn")),
        "{:?}",
        i.warnings
    );
    assert!(i.document.pools[0].check.is_none(), "no check: always UP");
}

#[test]
fn duplicate_backends_are_refused_naming_both_lines() {
    let e = haproxy(
        "frontend f
  bind :80
  default_backend a
backend a
  server s1 127.0.0.1:1
backend a
  server s2 127.0.0.1:2
",
    )
    .err()
    .expect("duplicate backend");
    assert!(
        e.starts_with("line 6: backend a") && e.contains("at line 4"),
        "{e}"
    );
    // A frontend and a backend may share a name (HAProxy allows it); a listen may not.
    assert!(
        haproxy("frontend a\n  bind :80\n  default_backend a\nbackend a\n  server s 127.0.0.1:1\n")
            .is_ok()
    );
    let e = haproxy("listen a\n  bind :80\n  server s 127.0.0.1:1\nfrontend a\n  bind :81\n")
        .err()
        .expect("listen and frontend of one name");
    assert!(e.starts_with("line 4:") && e.contains("line 1"), "{e}");
}

#[test]
fn old_style_httpchk_headers_are_kept() {
    let i = haproxy(
        r"frontend f
  bind :80
  default_backend b
backend b
  option httpchk GET /healthz HTTP/1.1\r\nHost:\ api\r\nX-Check:\ 1
  server s1 127.0.0.1:1 check
",
    )
    .expect("translates");
    let c = i.document.pools[0].check.as_ref().expect("check");
    assert_eq!((c.method.as_str(), c.path.as_str()), ("GET", "/healthz"));
    assert_eq!(c.host.as_deref(), Some("api"));
    assert_eq!(c.headers, [("X-Check".to_string(), "1".to_string())]);
    assert!(i.warnings.is_empty(), "{:?}", i.warnings);
    let again = Document::parse(&i.document.to_toml().expect("renders")).expect("valid");
    assert_eq!(again, i.document);
}

#[test]
fn http_check_send_headers_are_mapped_or_reported() {
    let i = haproxy(
        "listen web
  bind :80
  option httpchk
  http-check send meth GET uri /ready ver HTTP/1.1 hdr Host x.example hdr X-A b hdr X-B %[req.hdr(host)] body ping
  server s1 127.0.0.1:1 check
",
    )
    .expect("translates");
    let c = i.document.pools[0].check.as_ref().expect("check");
    assert_eq!((c.method.as_str(), c.path.as_str()), ("GET", "/ready"));
    assert_eq!(c.host.as_deref(), Some("x.example"));
    assert_eq!(c.headers, [("X-A".to_string(), "b".to_string())]);
    for what in ["X-B", "\"body\""] {
        assert!(
            i.warnings
                .iter()
                .any(|w| w.starts_with("line 4:") && w.contains(what)),
            "{what}: {:?}",
            i.warnings
        );
    }
}

#[test]
fn bind_lists_become_one_listener_per_address() {
    let i = haproxy(
        "frontend web
  bind 127.0.0.1:80,127.0.0.2:80
  bind :8000-8001
  default_backend b
backend b
  server s1 127.0.0.1:1
",
    )
    .expect("translates");
    let binds: Vec<(String, String)> = i
        .document
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.bind.to_string()))
        .collect();
    assert_eq!(
        binds,
        [
            ("web-1".to_string(), "127.0.0.1:80".to_string()),
            ("web-2".into(), "127.0.0.2:80".into()),
            ("web-3".into(), "0.0.0.0:8000".into()),
            ("web-4".into(), "0.0.0.0:8001".into()),
        ]
    );
    let i = haproxy(
        "frontend web\n  bind :80,:::443\n  default_backend b\nbackend b\n  server s 127.0.0.1:1\n",
    )
    .expect("translates");
    let names: Vec<&str> = i
        .document
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(names, ["web-80", "web-443"]);
    assert_eq!(i.document.listeners[1].bind.to_string(), "[::]:443");
}

#[test]
fn a_byte_order_mark_is_skipped() {
    let i = haproxy(
        "\u{feff}frontend f\n  bind :80\n  default_backend b\nbackend b\n  server s 127.0.0.1:1\n",
    )
    .expect("translates");
    assert_eq!(i.document.listeners[0].name, "f");
    assert!(i.warnings.is_empty(), "{:?}", i.warnings);
}

#[test]
fn only_unrouted_backends_is_an_error_naming_them() {
    let e = haproxy("backend a\n  server s 127.0.0.1:1\n\nbackend b\n  server s 127.0.0.1:2\n")
        .err()
        .expect("nothing routed");
    assert!(
        e.contains("no frontend routes to backend a (line 1), b (line 4)"),
        "{e}"
    );
    assert!(haproxy("global\n  maxconn 1\n").is_err(), "empty document");
}

#[test]
fn nothing_vanishes_silently() {
    let i = haproxy(
        "defaults
  mode http
  balance leastconn
frontend f
  bind :80
  default_backend b
  server stray 127.0.0.1:9
resolvers dns
  nameserver ns1 10.0.0.1:53
backend b
  bind :81
  option redispatch
  server s 127.0.0.1:1
",
    )
    .expect("translates");
    assert_eq!(i.document.listeners.len(), 1);
    assert_eq!(
        i.document.listeners[0].balance,
        Balance::LeastConn,
        "balance from defaults"
    );
    for (line, what) in [
        (4, "mode http"),
        (7, "server in a frontend section"),
        (8, "section resolvers"),
        (11, "bind in a backend section"),
        (12, "option redispatch"),
    ] {
        assert!(
            i.warnings
                .iter()
                .any(|w| w.starts_with(&format!("line {line}:")) && w.contains(what)),
            "line {line} {what}: {:?}",
            i.warnings
        );
    }
}
