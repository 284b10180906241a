//! The proxy on real sockets, fed a health map directly through its watch
//! channel: weights, backups, drain vs maint, redispatch on refused
//! connects, leastconn, panic mode, the connection limit and idle timeout,
//! and listening only once the map has the listener's pool.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trackwire_core::config::{Balance, ListenerSpec, NoBackend};
use trackwire_core::{AdminState, Endpoint, HealthMap, HealthState};
use trackwire_data_plane::listener::{self, Listener};
use trackwire_data_plane::metrics::Metrics;
use trackwire_data_plane::relay::relay_copy;

use support::{backend, eventually, map_of};

fn ep(name: &str, addr: SocketAddr, weight: u32) -> Endpoint {
    Endpoint {
        weight,
        ..Endpoint::up(name, addr.to_string())
    }
}

/// An address nothing listens on: connects are refused.
async fn refusing() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

struct Proxy {
    addr: SocketAddr,
    map: watch::Sender<Arc<HealthMap>>,
    metrics: Arc<Metrics>,
    token: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn proxy(eps: &[Endpoint], f: impl FnOnce(&mut ListenerSpec)) -> Proxy {
    let mut spec = ListenerSpec {
        connect_timeout: Duration::from_secs(1),
        max_connections: 100,
        idle_timeout: Duration::from_secs(60),
        ..ListenerSpec::new("web", "127.0.0.1:0".parse().expect("addr"), "web")
    };
    f(&mut spec);
    let listener = Listener::bind(spec).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(map_of(eps));
    let metrics = Arc::new(Metrics::default());
    let token = CancellationToken::new();
    serve(listener, rx, &metrics, &token);
    // The listener listens once its task has seen the map.
    wait_listening(&metrics, 1).await;
    Proxy {
        addr,
        map: tx,
        metrics,
        token,
    }
}

/// Serves `listener` on the maps `map` receives until `stop` is cancelled.
fn serve(
    listener: Listener,
    map: watch::Receiver<Arc<HealthMap>>,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) {
    let (tracker, cut) = (TaskTracker::new(), CancellationToken::new());
    let serving = listener::serve(
        listener,
        map,
        Arc::clone(metrics),
        tracker,
        stop.clone(),
        cut,
    );
    tokio::spawn(serving);
}

/// Waits until `n` listeners have started listening.
async fn wait_listening(metrics: &Metrics, n: u64) {
    eventually("listening", async || metrics.listeners_listening.get() >= n).await;
}

/// A session through the proxy: the backend's name, and the open stream.
async fn session(addr: SocketAddr) -> Option<(String, BufReader<TcpStream>)> {
    let s = TcpStream::connect(addr).await.ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Some((line.trim().to_string(), r)),
        _ => None,
    }
}

/// Asserts that the proxy closes `s` (EOF, nothing more sent) within 5 s.
async fn assert_closed(s: &mut BufReader<TcpStream>, what: &str) {
    let mut rest = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_line(&mut rest))
        .await
        .expect("closed within 5 s")
        .expect("read");
    assert_eq!(n, 0, "{what}");
}

async fn spread(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let (b, _) = session(addr).await.expect("a backend answers");
        *out.entry(b).or_insert(0) += 1;
    }
    out
}

#[tokio::test]
async fn weights_are_honoured() {
    let (a, b) = (backend("a").await, backend("b").await);
    let p = proxy(&[ep("a", a, 3), ep("b", b, 1)], |_| {}).await;
    let counts = spread(p.addr, 400).await;
    assert_eq!((counts["a"], counts["b"]), (300, 100));
}

#[tokio::test]
async fn backups_serve_only_when_no_primary_is_up() {
    let (a, bk) = (backend("a").await, backend("backup").await);
    let mut backup = ep("backup", bk, 1);
    backup.backup = true;
    let primary = ep("a", a, 1);
    let p = proxy(&[primary.clone(), backup.clone()], |_| {}).await;
    assert_eq!(spread(p.addr, 10).await.keys().collect::<Vec<_>>(), ["a"]);
    let mut down = primary.clone();
    down.state = HealthState::Down;
    p.map.send_replace(map_of(&[down, backup.clone()]));
    assert_eq!(
        spread(p.addr, 10).await.keys().collect::<Vec<_>>(),
        ["backup"]
    );
    p.map.send_replace(map_of(&[primary, backup]));
    assert_eq!(spread(p.addr, 10).await.keys().collect::<Vec<_>>(), ["a"]);
}

#[tokio::test]
async fn drain_keeps_sessions_and_maint_takes_no_new_ones() {
    let (a, b) = (backend("a").await, backend("b").await);
    let p = proxy(&[ep("a", a, 1), ep("b", b, 1)], |_| {}).await;
    let (name, mut held) = session(p.addr).await.expect("session");
    assert_eq!(name, "a");
    let mut drained = ep("a", a, 1);
    drained.admin_state = AdminState::Drain;
    p.map.send_replace(map_of(&[drained, ep("b", b, 1)]));
    assert_eq!(
        spread(p.addr, 6).await.keys().collect::<Vec<_>>(),
        ["b"],
        "no new sessions on a"
    );
    // The existing session to a still carries data.
    held.get_mut()
        .write_all(b"still here\n")
        .await
        .expect("write");
    let mut echo = String::new();
    held.read_line(&mut echo).await.expect("echo");
    assert_eq!(echo, "still here\n");
    let mut maint = ep("b", b, 1);
    maint.admin_state = AdminState::Maint;
    p.map.send_replace(map_of(&[ep("a", a, 1), maint]));
    assert_eq!(spread(p.addr, 6).await.keys().collect::<Vec<_>>(), ["a"]);
}

#[tokio::test]
async fn refused_connects_are_redispatched() {
    let a = backend("a").await;
    let dead = refusing().await;
    // The health map still says `dead` is UP (checks lag); clients never
    // notice. (Passive health off here, so every attempt is redispatched.)
    let p = proxy(&[ep("a", a, 1), ep("dead", dead, 1)], |s| {
        s.passive_failures = 0
    })
    .await;
    let counts = spread(p.addr, 20).await;
    assert_eq!(counts.get("a"), Some(&20));
    assert!(p.metrics.total(|l| &l.connect_failures) >= 10);
}

#[tokio::test]
async fn leastconn_sends_new_sessions_to_the_idle_backend() {
    let (a, b) = (backend("a").await, backend("b").await);
    let p = proxy(&[ep("a", a, 1), ep("b", b, 1)], |s| {
        s.balance = Balance::LeastConn
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(session(p.addr).await.expect("session"));
    }
    // Two open on each; close both of a's: the next two go to a.
    held.retain(|(name, _)| name == "b");
    eventually("a's sessions closed", async || {
        p.metrics.total(|l| &l.active) == 2
    })
    .await;
    let (n1, _s1) = session(p.addr).await.expect("session");
    let (n2, _s2) = session(p.addr).await.expect("session");
    assert_eq!((n1.as_str(), n2.as_str()), ("a", "a"));
}

#[tokio::test]
async fn no_backend_refuses_or_panics() {
    let a = backend("a").await;
    let mut down = ep("a", a, 1);
    down.state = HealthState::Down;
    let refuse = proxy(&[down.clone()], |_| {}).await;
    assert!(session(refuse.addr).await.is_none(), "refused");
    assert_eq!(refuse.metrics.total(|l| &l.failed), 1);
    let panic = proxy(&[down], |s| s.on_no_backend = NoBackend::Panic).await;
    assert_eq!(
        session(panic.addr).await.map(|s| s.0),
        Some("a".to_string())
    );
}

#[tokio::test]
async fn max_connections_holds_further_clients_back() {
    let a = backend("a").await;
    let p = proxy(&[ep("a", a, 1)], |s| s.max_connections = 2).await;
    let s1 = session(p.addr).await.expect("first");
    let _s2 = session(p.addr).await.expect("second");
    // The third connects (kernel backlog) but is not served yet.
    let third = tokio::spawn(session(p.addr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "served beyond max_connections");
    drop(s1);
    let got = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot frees")
        .expect("join");
    assert_eq!(got.map(|s| s.0), Some("a".to_string()));
}

#[tokio::test]
async fn idle_sessions_are_closed() {
    let a = backend("a").await;
    let p = proxy(&[ep("a", a, 1)], |s| {
        s.idle_timeout = Duration::from_millis(300)
    })
    .await;
    let (_, mut s) = session(p.addr).await.expect("session");
    let started = tokio::time::Instant::now();
    assert_closed(&mut s, "EOF after the idle timeout").await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

/// A backend that parses the PROXY header (v1 or v2) and answers with the
/// client address it announced.
async fn proxy_protocol_backend() -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if s.read_exact(&mut first).await.is_err() {
                    return;
                }
                let answer = if first[0] == b'P' {
                    let mut line = vec![b'P'];
                    let mut b = [0u8; 1];
                    while !line.ends_with(b"\r\n") {
                        if s.read_exact(&mut b).await.is_err() {
                            return;
                        }
                        line.push(b[0]);
                    }
                    let text = String::from_utf8_lossy(&line).to_string();
                    let f: Vec<&str> = text.split_whitespace().collect();
                    format!("v1 {}:{}\n", f[2], f[4])
                } else {
                    let mut rest = [0u8; 15];
                    if s.read_exact(&mut rest).await.is_err() {
                        return;
                    }
                    let mut hdr = vec![first[0]];
                    hdr.extend_from_slice(&rest);
                    assert_eq!(
                        &hdr[..12],
                        &trackwire_data_plane::proxy_protocol::V2_SIGNATURE
                    );
                    let len = u16::from_be_bytes([hdr[14], hdr[15]]) as usize;
                    let mut body = vec![0u8; len];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let ip = std::net::Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                    let port = u16::from_be_bytes([body[8], body[9]]);
                    format!("v2 {ip}:{port}\n")
                };
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_reach_the_backend() {
    use trackwire_core::config::ProxyProtocol;
    let b = proxy_protocol_backend().await;
    for (v, tag) in [(ProxyProtocol::V1, "v1"), (ProxyProtocol::V2, "v2")] {
        let p = proxy(&[ep("pp", b, 1)], |s| s.send_proxy = Some(v)).await;
        let s = TcpStream::connect(p.addr).await.expect("connect");
        let me = s.local_addr().expect("addr");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.expect("read");
        assert_eq!(line, format!("{tag} {}:{}\n", me.ip(), me.port()));
    }
}

#[tokio::test]
async fn per_backend_limit_skips_full_backends() {
    let (a, b) = (backend("a").await, backend("b").await);
    let p = proxy(&[ep("a", a, 1), ep("b", b, 1)], |s| {
        s.max_connections_per_backend = 1
    })
    .await;
    let (n1, _s1) = session(p.addr).await.expect("first");
    let (n2, _s2) = session(p.addr).await.expect("second");
    let mut names = [n1, n2];
    names.sort();
    assert_eq!(
        names,
        ["a".to_string(), "b".to_string()],
        "one session each"
    );
    assert!(session(p.addr).await.is_none(), "both full: refused");
}

#[tokio::test]
async fn passive_health_ejects_and_returns_a_failing_backend() {
    let a = backend("a").await;
    let dead = refusing().await;
    let p = proxy(&[ep("a", a, 1), ep("dead", dead, 1)], |s| {
        s.passive_failures = 2;
        s.passive_ejection = Duration::from_millis(500);
        s.passive_max_percent = 50;
    })
    .await;
    // Round robin sends every other connect to `dead` until it is ejected.
    assert_eq!(spread(p.addr, 6).await.get("a"), Some(&6));
    assert_eq!(p.metrics.total(|l| &l.passive_ejections), 1);
    let failures = p.metrics.total(|l| &l.connect_failures);
    assert_eq!(failures, 2, "ejected after two failures in a row");
    // While ejected, nothing is tried on it.
    assert_eq!(spread(p.addr, 10).await.get("a"), Some(&10));
    assert_eq!(p.metrics.total(|l| &l.connect_failures), failures);
    // Once the ejection is over it is tried again (and fails again).
    eventually("retried after the ejection", async || {
        if p.metrics.total(|l| &l.connect_failures) != failures {
            return true;
        }
        let _ = session(p.addr).await.expect("clients are still served");
        false
    })
    .await;
}

#[tokio::test]
async fn shutdown_sessions_on_down_closes_only_when_asked() {
    let a = backend("a").await;
    for shutdown in [false, true] {
        let p = proxy(&[ep("a", a, 1)], |s| s.shutdown_sessions_on_down = shutdown).await;
        let (_, mut held) = session(p.addr).await.expect("session");
        let mut down = ep("a", a, 1);
        down.state = HealthState::Down;
        p.map.send_replace(map_of(&[down]));
        if shutdown {
            assert_closed(&mut held, "session closed when the backend went DOWN").await;
        } else {
            // HAProxy's default: marking DOWN keeps existing sessions.
            held.get_mut().write_all(b"ping\n").await.expect("write");
            let mut echo = String::new();
            held.read_line(&mut echo).await.expect("echo");
            assert_eq!(echo, "ping\n");
        }
    }
}

/// Sends `len` pseudo-random bytes through `s` (after the greeting) while
/// reading the echo back; true when the echo matches.
async fn echo_intact(s: TcpStream, len: usize) -> bool {
    let mut r = BufReader::new(s);
    let mut greeting = String::new();
    r.read_line(&mut greeting).await.expect("greeting");
    let s = r.into_inner();
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    let (mut rd, mut wr) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.expect("write");
        wr.shutdown().await.expect("shutdown");
    });
    let mut back = Vec::with_capacity(len);
    tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut back)
        .await
        .expect("read");
    writer.await.expect("writer");
    back == data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_arrive_intact_both_ways() {
    let a = backend("a").await;
    let p = proxy(&[ep("a", a, 1)], |_| {}).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            echo_intact(TcpStream::connect(addr).await.expect("connect"), 8 << 20).await
        }));
    }
    for t in tasks {
        assert!(t.await.expect("join"), "bytes changed on the way");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portable_copy_relay_is_intact_too() {
    let a = backend("a").await;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let (client, _) = l.accept().await.expect("accept");
        let server = TcpStream::connect(a).await.expect("backend");
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let moved = trackwire_data_plane::relay::Moved {
            up: &[&up],
            down: &[&down],
        };
        let _ = relay_copy(&client, &server, Duration::from_secs(10), moved).await;
    });
    assert!(echo_intact(TcpStream::connect(addr).await.expect("connect"), 4 << 20).await);
}

#[tokio::test]
async fn listens_only_once_it_holds_a_health_map() {
    let a = backend("a").await;
    let spec = ListenerSpec::new("web", "127.0.0.1:0".parse().expect("addr"), "web");
    let listener = Listener::bind(spec).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = watch::channel(Arc::new(HealthMap::default()));
    let metrics = Arc::new(Metrics::default());
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    serve(listener, rx, &metrics, &token);
    // Bound but not listening: the kernel refuses, nothing is accepted and
    // dropped for want of a map.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "accepted without a map"
    );
    assert_eq!(metrics.listeners_listening.get(), 0);
    tx.send_replace(map_of(&[ep("a", a, 1)]));
    wait_listening(&metrics, 1).await;
    let (name, _) = session(addr).await.expect("routed once the map arrived");
    assert_eq!(name, "a");
    assert_eq!(metrics.total(|l| &l.failed), 0);
}

/// A listener whose pool the map lacks (a typo, a pool not applied yet)
/// does not listen — a replacement process must not take connections it
/// can only refuse — while the proxy's other listeners serve; it listens
/// once the pool appears.
#[tokio::test]
async fn listens_only_once_the_map_has_its_pool() {
    let a = backend("a").await;
    let other = map_of(&[ep("a", a, 1)]);
    let (tx, rx) = watch::channel(Arc::new(HealthMap {
        pools: BTreeMap::from([("other".to_string(), Arc::clone(&other.pools["web"]))]),
        ..(*other).clone()
    }));
    let metrics = Arc::new(Metrics::default());
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let mut addrs = Vec::new();
    for pool in ["other", "web"] {
        let spec = ListenerSpec::new(pool, "127.0.0.1:0".parse().expect("addr"), pool);
        let listener = Listener::bind(spec).expect("bind");
        addrs.push(listener.local_addr().expect("addr"));
        serve(listener, rx.clone(), &metrics, &token);
    }
    wait_listening(&metrics, 1).await;
    let (name, _) = session(addrs[0]).await.expect("the other listener routes");
    assert_eq!(name, "a");
    assert!(
        TcpStream::connect(addrs[1]).await.is_err(),
        "listening although the map has no pool \"web\""
    );
    assert_eq!(metrics.listeners_listening.get(), 1);
    assert_eq!(metrics.total(|l| &l.failed), 0);
    tx.send_replace(map_of(&[ep("a", a, 1)]));
    wait_listening(&metrics, 2).await;
    let (name, _) = session(addrs[1])
        .await
        .expect("routed once the pool arrived");
    assert_eq!(name, "a");
}
