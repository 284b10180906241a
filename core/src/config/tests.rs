//! The document's parsing, validation and rendering.

use std::time::Duration;

use super::*;
use crate::model::{BackendSpec, CheckSpec};

const SEED: &str = r#"
[[pool]]
name = "myApp"

[pool.check]
kind = "http"
method = "GET"
path = "/readyz"
expect_status = "200"

[[pool.backend]]
name = "server-1"
address = "backend-1.example.com:6443"

[[pool.backend]]
name = "server-2"
address = "backend-2.example.com:6443"

[[pool.backend]]
name = "server-3"
address = "backend-3.example.com:6443"

[[listener]]
name = "myApp"
bind = "*:6443"
pool = "myApp"
"#;

#[test]
fn seed_configuration_is_expressible() {
    let doc = Document::parse(SEED).expect("seed parses");
    let pool = &doc.pools[0];
    assert_eq!(pool.name, "myApp");
    assert_eq!(pool.backends.len(), 3);
    let check = pool.check.as_ref().expect("check");
    assert_eq!(check.path, "/readyz");
    assert!(check.expect_status.contains(200) && !check.expect_status.contains(204));
    assert_eq!(check.interval, Duration::from_secs(2));
    assert_eq!((check.rise, check.fall), (2, 3));
    assert_eq!(doc.listeners[0].bind, "0.0.0.0:6443".parse().expect("addr"));
}

#[test]
fn listener_defaults_match_the_constructor() {
    let doc =
        Document::parse("[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:80\"\npool = \"p\"\n")
            .expect("valid");
    let expected = ListenerSpec::new("l", "127.0.0.1:80".parse().expect("addr"), "p");
    assert_eq!(doc.listeners[0], expected);
}

#[test]
fn to_toml_round_trips() {
    let doc = Document::parse(SEED).expect("seed parses");
    let again = Document::parse(&doc.to_toml().expect("renders")).expect("rendered parses");
    assert_eq!(doc, again);
}

fn err(text: &str) -> String {
    Document::parse(text).expect_err("invalid").to_string()
}

#[test]
fn errors_name_the_field() {
    assert!(
        err("[[pool]]\nname = \"a\"\n[pool.check]\nexpect_status = \"700\"\n")
            .starts_with("pool[0].check.expect_status:")
    );
    assert!(
        err("[[pool]]\nname = \"a\"\n[[pool.backend]]\nname = \"b\"\naddress = \"nohost\"\n")
            .starts_with("pool[0].backend[0].address:")
    );
    assert!(err("[[pool]]\nname = \"a\"\n[[pool]]\nname = \"a\"\n").starts_with("pool[1].name:"));
    assert!(
        err("[[listener]]\nname = \"l\"\nbind = \"nope\"\npool = \"p\"\n")
            .starts_with("listener[0].bind:")
    );
    assert!(err("[[pool]]\nname = \"a\"\nbogus = 1\n").contains("bogus"));
    assert!(
        err("[[pool]]\nname = \"a\"\n[pool.check]\nhost = \"a\\r\\nb\"\n")
            .starts_with("pool[0].check.host:")
    );
    let e =
        err("[[pool]]\nname = \"a\"\n[[pool.backend]]\nname = \"b\"\naddress = \"http://x:80\"\n");
    assert!(
        e.starts_with("pool[0].backend[0].address:") && e.contains("not a URL"),
        "{e}"
    );
    assert!(
        err("[[pool]]\nname = \"a\"\n[pool.check]\ninterval = \"0s\"\n")
            .starts_with("pool[0].check.interval:")
    );
    let e = err(
        "[[pool]]\nname = \"a\"\n[[pool.backend]]\nname = \"b\"\naddress = \"h:1\"\nzone = \"eu west\"\n",
    );
    assert!(
        e.starts_with("pool[0].backend[0].zone:") && e.contains("invalid zone \"eu west\""),
        "{e}"
    );
    assert!(err("[[pool]]\nname = \"a\"\ngrpc_xds = \"yes\"\n").contains("grpc_xds"));
}

#[test]
fn durations_parse_as_documented() {
    let check = |line: &str| {
        Document::parse(&format!("[[pool]]\nname = \"p\"\n[pool.check]\n{line}\n"))
            .map(|d| d.pools[0].check.as_ref().map(|c| c.interval))
    };
    // A TOML integer is milliseconds, as a bare number in a string is.
    assert_eq!(
        check("interval = 500").expect("integer"),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        check("interval = \"500\"").expect("string"),
        Some(Duration::from_millis(500))
    );
    // What milliseconds cannot hold is refused, naming the field, never
    // stored as something else (1us was stored as 2s, 1500us as 1ms).
    for bad in ["\"1us\"", "\"1500us\"", "-5"] {
        let e = check(&format!("interval = {bad}"))
            .expect_err(bad)
            .to_string();
        assert!(e.starts_with("pool[0].check.interval:"), "{bad}: {e}");
    }
    let e = check("interval = 1.5").expect_err("float").to_string();
    assert!(e.contains("integer number of milliseconds"), "{e}");
    let listener = Document::parse(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\nconnect_timeout = 250\nidle_timeout = 60000\ntcp_keepalive = 1000\n",
    )
    .expect("integers")
    .listeners
    .remove(0);
    assert_eq!(listener.connect_timeout, Duration::from_millis(250));
    assert_eq!(listener.idle_timeout, Duration::from_secs(60));
    assert_eq!(listener.tcp_keepalive, Some(Duration::from_secs(1)));
    assert!(
        err("[[pool]]\nname = \"p\"\n[pool.damping]\nhalf_life = \"10us\"\n")
            .starts_with("pool[0].damping.half_life:")
    );
}

fn pool_of(n: usize, address_len: usize) -> PoolSpec {
    // Labels of a DNS name are at most 63 bytes.
    let host = vec!["h".repeat(49); address_len / 50].join(".");
    PoolSpec {
        check: Some(CheckSpec::http_default()),
        ..PoolSpec::new(
            "big",
            (0..n)
                .map(|i| {
                    BackendSpec::new(
                        format!("backend-{i:05}-{}", "n".repeat(40)),
                        format!("{host}:{}", 1 + i % 60_000),
                    )
                })
                .collect(),
        )
    }
}

#[test]
fn a_pool_must_fit_in_one_store_value() {
    // Every field within its own limit, the whole over 1 MiB encoded.
    let small = pool_of(1_000, 200);
    let doc = |pools: Vec<PoolSpec>| Document {
        pools,
        listeners: vec![],
    };
    assert!(doc(vec![small.clone()]).validate().is_ok());
    let mut big = pool_of(6_000, 200);
    assert!(big.validate(FieldNames::Toml).is_ok(), "each field is fine");
    big.name = "big2".into();
    let e = doc(vec![small, big]).validate().expect_err("too large");
    assert_eq!(e.path, "pool[1]", "the pool itself: {e}");
    assert!(
        e.message.starts_with("encoded pool spec is 1.")
            && e.message.contains(" MiB; at most 1 MiB (fewer backends"),
        "{e}"
    );
}

#[test]
fn a_huge_check_path_is_refused_by_parse() {
    let text = format!(
        "[[pool]]\nname = \"p\"\n[pool.check]\npath = \"/{}\"\n",
        "a".repeat(3_000_000)
    );
    let e = err(&text);
    assert!(
        e.starts_with("pool[0].check.path: 2.9 MiB long; at most 8 KiB"),
        "{}",
        &e[..e.len().min(200)]
    );
}

#[test]
fn every_entry_point_validates_listeners() {
    // A listener built in code (as the importer builds them) meets the
    // same rules as one read from a file.
    let bind = "127.0.0.1:80".parse().expect("addr");
    let doc = |l: ListenerSpec| Document {
        pools: vec![],
        listeners: vec![l],
    };
    for (listener, path) in [
        (
            ListenerSpec {
                retries: 17,
                ..ListenerSpec::new("l", bind, "p")
            },
            "listener[0].retries",
        ),
        (
            ListenerSpec {
                connect_timeout: Duration::ZERO,
                ..ListenerSpec::new("l", bind, "p")
            },
            "listener[0].connect_timeout",
        ),
        (ListenerSpec::new("a b", bind, "p"), "listener[0].name"),
        (ListenerSpec::new("l", bind, "p/q"), "listener[0].pool"),
        (
            ListenerSpec {
                idle_timeout: Duration::from_micros(1500),
                ..ListenerSpec::new("l", bind, "p")
            },
            "listener[0].idle_timeout",
        ),
    ] {
        assert_eq!(doc(listener).validate().expect_err(path).path, path);
    }
    assert!(
        err("[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\nretries = 17\n")
            .starts_with("listener[0].retries:")
    );
}

#[test]
fn names_parse_in_one_place_and_errors_name_the_field() {
    for (key, value) in [
        ("balance", "fastest"),
        ("on_no_backend", "retry"),
        ("send_proxy", "v3"),
    ] {
        let e = err(&format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n{key} = \"{value}\"\n"
        ));
        assert!(
            e.starts_with(&format!("listener[0].{key}: unknown ")),
            "{e}"
        );
    }
    assert_eq!("leastconn".parse(), Ok(Balance::LeastConn));
    assert_eq!(Balance::Source.to_string(), "source");
    assert!(
        err("[[pool]]\nname = \"p\"\nquorum = \"most\"\n")
            .starts_with("pool[0].quorum: unknown quorum policy")
    );
    assert!(
        err("[[pool]]\nname = \"p\"\n[[pool.backend]]\nname = \"b\"\naddress = \"h:1\"\nadmin_state = \"off\"\n")
            .starts_with("pool[0].backend[0].admin_state: unknown admin state")
    );
}

#[test]
fn to_toml_writes_every_listener_field() {
    // `shutdown_sessions_on_down` (among others) was never written, so an
    // imported `on-marked-down shutdown-sessions` vanished from the output.
    let l = ListenerSpec {
        shutdown_sessions_on_down: true,
        send_proxy: Some(ProxyProtocol::V2),
        on_no_backend: NoBackend::Panic,
        tcp_keepalive: None,
        ..ListenerSpec::new("l", "[::1]:443".parse().expect("addr"), "p")
    };
    let doc = Document {
        pools: vec![],
        listeners: vec![l],
    };
    let text = doc.to_toml().expect("renders");
    assert!(text.contains("shutdown_sessions_on_down = true"), "{text}");
    assert_eq!(Document::parse(&text).expect("parses"), doc);
}

#[test]
fn headers_toml_cannot_hold_are_refused_when_rendering() {
    let mut doc = Document::parse(SEED).expect("seed parses");
    if let Some(c) = doc.pools[0].check.as_mut() {
        c.headers = vec![("X-A".into(), "1".into()), ("X-A".into(), "2".into())];
    }
    let e = doc.to_toml().expect_err("two X-A headers");
    assert!(
        e.to_string()
            .starts_with("pool[0].check.headers[1].name: header \"X-A\" is set twice"),
        "{e}"
    );
}

mod round_trip {
    //! Any valid document, rendered and parsed, is the same document: the
    //! generators cover every field of pools, checks, damping, backends and
    //! listeners.

    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::*;
    use crate::model::{
        AdminState, BackendSpec, BodyMatch, CheckKind, CheckSpec, DampingSpec, HealthState, Quorum,
        StatusSet, TlsSpec,
    };

    fn ms(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = Duration> {
        range.prop_map(Duration::from_millis)
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9._-]{0,20}"
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9_-]{0,8}){0,3}\\.?",
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
        ]
    }

    fn address() -> impl Strategy<Value = String> {
        prop_oneof![
            (host(), 1..=u16::MAX).prop_map(|(h, p)| format!("{h}:{p}")),
            (any::<std::net::Ipv6Addr>(), 1..=u16::MAX).prop_map(|(h, p)| format!("[{h}]:{p}")),
        ]
    }

    /// Any text TOML must quote: quotes, backslashes, newlines, non-ASCII.
    fn text() -> impl Strategy<Value = String> {
        "(?s).{1,24}"
    }

    fn kind() -> impl Strategy<Value = CheckKind> {
        prop_oneof![
            Just(CheckKind::Http),
            Just(CheckKind::Https),
            Just(CheckKind::Tcp),
            Just(CheckKind::Grpc),
        ]
    }

    fn status_set() -> impl Strategy<Value = StatusSet> {
        prop::collection::vec((100u16..=599, 0u16..50), 1..4).prop_map(|ranges| {
            let text: Vec<String> = ranges
                .iter()
                .map(|&(lo, w)| match (lo + w).min(599) {
                    hi if hi == lo => lo.to_string(),
                    hi => format!("{lo}-{hi}"),
                })
                .collect();
            text.join(",").parse().expect("valid status set")
        })
    }

    fn body_match() -> impl Strategy<Value = Option<BodyMatch>> {
        prop_oneof![
            Just(None),
            text().prop_map(|s| Some(BodyMatch::Substring(s))),
            prop::sample::select(vec!["ok", "^a.*b$", "[0-9]+\\s\"x\"", "(?i)ready"])
                .prop_map(|r| Some(BodyMatch::Regex(r.to_string()))),
        ]
    }

    /// Header names are unique and sorted: a TOML table holds each name
    /// once, and is read in name order.
    fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::btree_map("X-[A-Za-z0-9-]{1,12}", "[ -~\t\u{e9}\u{4e2d}]{0,16}", 0..4)
            .prop_map(|m: BTreeMap<String, String>| m.into_iter().collect())
    }

    fn tls() -> impl Strategy<Value = TlsSpec> {
        (
            proptest::option::of(host()),
            proptest::option::of("/[a-z0-9/._ -]{1,30}"),
            any::<bool>(),
            prop::collection::vec("[a-z0-9/.]{1,10}", 0..3),
            proptest::option::of(("/[a-z./]{1,20}", "/[a-z./]{1,20}")),
        )
            .prop_map(|(server_name, ca_file, insecure, alpn, client)| TlsSpec {
                server_name,
                ca_file: ca_file.map(Into::into),
                insecure,
                alpn,
                client_cert: client.as_ref().map(|(c, _)| c.into()),
                client_key: client.map(|(_, k)| k.into()),
            })
    }

    fn check() -> impl Strategy<Value = CheckSpec> {
        (
            (
                kind(),
                "[A-Z]{1,10}",
                "/[!-~]{0,30}",
                proptest::option::of("[!-~]{1,20}"),
                headers(),
                status_set(),
                body_match(),
                any::<bool>(),
            ),
            (
                ms(1..=3_600_000),
                ms(1..=3_600_000),
                ms(1..=3_600_000),
                ms(1..=3_600_000),
                1u32..=1000,
                1u32..=1000,
                proptest::option::of(1..=u16::MAX),
                proptest::option::of(host()),
            ),
            (
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of("(?s).{0,20}"),
                0u32..=50,
                tls(),
            ),
        )
            .prop_map(
                |(
                    (kind, method, path, host, headers, expect_status, body, expect_negate),
                    (interval, fast_interval, down_interval, timeout, rise, fall, port, address),
                    (tcp_send, tcp_expect, grpc_service, jitter_percent, mut tls),
                )| {
                    let http = matches!(kind, CheckKind::Http | CheckKind::Https);
                    if kind == CheckKind::Https && tls.ca_file.is_none() {
                        tls.insecure = true;
                    }
                    CheckSpec {
                        kind,
                        method,
                        path,
                        host,
                        headers,
                        expect_status,
                        expect_body: body.filter(|_| http),
                        expect_negate,
                        interval,
                        fast_interval,
                        down_interval,
                        timeout,
                        rise,
                        fall,
                        port,
                        address,
                        tcp_send: tcp_send.filter(|_| kind == CheckKind::Tcp),
                        tcp_expect: tcp_expect.filter(|_| kind == CheckKind::Tcp),
                        grpc_service: grpc_service.filter(|_| kind == CheckKind::Grpc),
                        jitter_percent,
                        tls,
                    }
                },
            )
    }

    fn damping() -> impl Strategy<Value = DampingSpec> {
        (
            1u64..=3_600_000,
            1u32..100_000,
            2u32..100_000,
            0.0f64..1.0,
            0.0f64..1.0,
        )
            .prop_map(|(half_life, penalty, suppress, reuse, max)| {
                let max_suppress = half_life + ((86_400_000 - half_life) as f64 * max) as u64;
                DampingSpec {
                    half_life: Duration::from_millis(half_life),
                    penalty,
                    suppress,
                    reuse: 1 + ((suppress - 1) as f64 * reuse) as u32 % (suppress - 1),
                    max_suppress: Duration::from_millis(max_suppress),
                }
            })
    }

    fn backend(i: usize) -> impl Strategy<Value = BackendSpec> {
        (
            name(),
            address(),
            0u32..=256,
            prop_oneof![
                Just(AdminState::Ready),
                Just(AdminState::Drain),
                Just(AdminState::Maint)
            ],
            any::<bool>(),
            prop_oneof![Just(String::new()), name()],
        )
            .prop_map(move |(name, address, weight, admin_state, backup, zone)| {
                BackendSpec {
                    name: format!("{name}-{i}"),
                    address,
                    weight,
                    admin_state,
                    backup,
                    zone,
                }
            })
    }

    fn pool(i: usize) -> impl Strategy<Value = PoolSpec> {
        (
            name(),
            (0..4usize).prop_flat_map(|n| (0..n).map(backend).collect::<Vec<_>>()),
            proptest::option::of(check()),
            prop_oneof![Just(Quorum::Majority), Just(Quorum::Any), Just(Quorum::All)],
            prop_oneof![Just(HealthState::Up), Just(HealthState::Down)],
            1u32..=64,
            any::<bool>(),
            proptest::option::of(damping()),
            any::<bool>(),
        )
            .prop_map(
                move |(
                    name,
                    backends,
                    check,
                    quorum,
                    initial_state,
                    replicas,
                    zone_spread,
                    damping,
                    grpc_xds,
                )| {
                    PoolSpec {
                        name: format!("{name}-{i}"),
                        backends,
                        check,
                        quorum,
                        initial_state,
                        replicas,
                        zone_spread,
                        damping,
                        grpc_xds,
                    }
                },
            )
    }

    fn listener(i: usize) -> impl Strategy<Value = ListenerSpec> {
        (
            (
                name(),
                prop_oneof![
                    any::<std::net::Ipv4Addr>().prop_map(std::net::IpAddr::V4),
                    any::<std::net::Ipv6Addr>().prop_map(std::net::IpAddr::V6),
                ],
                name(),
                prop_oneof![
                    Just(Balance::RoundRobin),
                    Just(Balance::LeastConn),
                    Just(Balance::Random),
                    Just(Balance::Source)
                ],
                ms(1..=86_400_000),
                0u32..=16,
                prop_oneof![Just(NoBackend::Refuse), Just(NoBackend::Panic)],
                1u32..=1_000_000,
            ),
            (
                ms(1..=86_400_000),
                any::<u32>(),
                proptest::option::of(prop_oneof![
                    Just(ProxyProtocol::V1),
                    Just(ProxyProtocol::V2)
                ]),
                proptest::option::of(ms(1_000..=86_400_000)),
                any::<u32>(),
                ms(1..=86_400_000),
                0u32..=100,
                any::<bool>(),
            ),
        )
            .prop_map(
                move |(
                    (
                        name,
                        ip,
                        pool,
                        balance,
                        connect_timeout,
                        retries,
                        on_no_backend,
                        max_connections,
                    ),
                    (
                        idle_timeout,
                        max_connections_per_backend,
                        send_proxy,
                        tcp_keepalive,
                        passive_failures,
                        passive_ejection,
                        passive_max_percent,
                        shutdown_sessions_on_down,
                    ),
                )| ListenerSpec {
                    name: format!("{name}-{i}"),
                    // Distinct ports: two listeners may not share an address.
                    bind: SocketAddr::new(ip, 1000 + i as u16),
                    pool,
                    balance,
                    connect_timeout,
                    retries,
                    on_no_backend,
                    max_connections,
                    idle_timeout,
                    max_connections_per_backend,
                    send_proxy,
                    tcp_keepalive,
                    passive_failures,
                    passive_ejection,
                    passive_max_percent,
                    shutdown_sessions_on_down,
                },
            )
    }

    fn document() -> impl Strategy<Value = Document> {
        (
            (0..4usize).prop_flat_map(|n| (0..n).map(pool).collect::<Vec<_>>()),
            (0..4usize).prop_flat_map(|n| (0..n).map(listener).collect::<Vec<_>>()),
        )
            .prop_map(|(pools, listeners)| Document { pools, listeners })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn render_then_parse_is_the_same_document(doc in document()) {
            prop_assert_eq!(doc.validate(), Ok(()), "the generator makes valid documents");
            let text = doc.to_toml().expect("a valid document renders");
            let again = Document::parse(&text);
            prop_assert!(again.is_ok(), "{:?}\n{}", again.err(), text);
            prop_assert_eq!(again.ok(), Some(doc), "{}", text);
        }
    }
}
