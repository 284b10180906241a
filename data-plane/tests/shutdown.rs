//! The whole data plane (`trackwire_data_plane::run`) on real sockets, with
//! its map loaded from the state dir and no control plane reachable:
//! listeners share their address with a second process (SO_REUSEPORT), and
//! on shutdown it stops accepting, lets open sessions finish, and cuts the
//! ones still open when the drain grace period ends.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trackwire_core::Endpoint;
use trackwire_core::config::ListenerSpec;
use trackwire_data_plane::{Config, Error, MAX_WORKERS, bind, cache, run};

use support::{backend, eventually, map_of};

/// A state dir holding a map with `backend` UP in pool "web".
fn state_dir(backend: SocketAddr) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let map = map_of(&[Endpoint::up("a", backend.to_string())]);
    cache::save(dir.path(), &map, &Default::default()).expect("save map");
    dir
}

struct Proxy {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
    _dir: tempfile::TempDir,
}

/// Starts the data plane on a free port with the given drain grace.
async fn start(grace: Duration) -> Proxy {
    start_with(grace, 0, |_| {}, None).await
}

/// [`start`] with `workers` threads, a listener `tweak` and an HTTP port.
async fn start_with(
    grace: Duration,
    workers: usize,
    tweak: impl FnOnce(&mut ListenerSpec),
    http: Option<TcpListener>,
) -> Proxy {
    let dir = state_dir(backend("hello").await);
    // Nothing listens here: the proxy routes on its cached map (fail static).
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead = format!("http://{}", dead.local_addr().expect("addr"));
    let mut spec = ListenerSpec::new("web", "127.0.0.1:0".parse().expect("addr"), "web");
    tweak(&mut spec);
    let listeners = bind(&[spec]).await.expect("bind listener");
    let addr = listeners[0].local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(
        Config {
            control_plane: vec![dead],
            listeners: listeners.iter().map(|l| l.spec.clone()).collect(),
            state_dir: Some(dir.path().to_path_buf()),
            proxy_id: "shutdown-test".into(),
            drain_grace: grace,
            tls: None,
            workers,
        },
        listeners,
        http,
        shutdown.clone(),
    ));
    Proxy {
        addr,
        shutdown,
        task,
        _dir: dir,
    }
}

/// An open session through the proxy (the greeting already read).
async fn session(addr: SocketAddr) -> BufReader<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = TcpStream::connect(addr).await {
            let mut r = BufReader::new(s);
            let mut line = String::new();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await
                && n > 0
            {
                assert_eq!(line, "hello\n");
                return r;
            }
        }
        assert!(Instant::now() < deadline, "no session through the proxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn echoes(s: &mut BufReader<TcpStream>, msg: &str) -> bool {
    if s.get_mut().write_all(msg.as_bytes()).await.is_err() {
        return false;
    }
    let mut line = String::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_line(&mut line)).await,
        Ok(Ok(_))
    ) && line == msg
}

/// Waits until connecting to `addr` is refused (the listener is closed).
async fn wait_refused(addr: SocketAddr) {
    eventually("the listener is closed", async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn two_processes_can_bind_one_listener_address() {
    let spec = ListenerSpec::new("web", "127.0.0.1:0".parse().expect("addr"), "web");
    let first = bind(std::slice::from_ref(&spec)).await.expect("first bind");
    let addr = first[0].local_addr().expect("addr");
    let again = ListenerSpec::new("web", addr, "web");
    let second = bind(&[again])
        .await
        .expect("second bind of the same address");
    assert_eq!(second[0].local_addr().expect("addr"), addr);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_waits_for_open_sessions() {
    // A grace far longer than the test: run() must return because the
    // session ended, not because the grace ran out.
    let p = start(Duration::from_secs(60)).await;
    let mut held = session(p.addr).await;
    p.shutdown.cancel();
    wait_refused(p.addr).await;
    assert!(
        echoes(&mut held, "draining\n").await,
        "open session cut early"
    );
    assert!(!p.task.is_finished(), "run() returned with a session open");
    drop(held);
    let done = tokio::time::timeout(Duration::from_secs(10), p.task)
        .await
        .expect("run() returns once the last session closed");
    done.expect("join").expect("clean exit");
}

#[tokio::test]
async fn sessions_still_open_after_the_grace_are_cut() {
    let p = start(Duration::from_millis(500)).await;
    let mut held = session(p.addr).await;
    p.shutdown.cancel();
    let done = tokio::time::timeout(Duration::from_secs(10), p.task)
        .await
        .expect("run() returns after the grace period");
    done.expect("join").expect("clean exit");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), held.read_to_end(&mut rest))
        .await
        .expect("the cut session is closed, not left hanging");
    assert!(
        read.is_err() || rest.is_empty(),
        "cut session: {read:?} {rest:?}"
    );
}

/// The value of an unlabelled series on the proxy's `/metrics`.
async fn metric(http: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(http).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Worker threads each accept on their own socket of the listener, yet
/// share its `max_connections` and count it as one listener; routing on
/// the cached map with no control plane shows as fail static.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_listener_limit_and_count_it_once() {
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_addr = http.local_addr().expect("addr");
    let p = start_with(
        Duration::from_secs(1),
        4,
        |s| s.max_connections = 1,
        Some(http),
    )
    .await;
    let first = session(p.addr).await;
    // Spread over the workers' sockets by the kernel: with a limit per
    // worker some of these would be served now; with a worker holding the
    // freed slot while waiting on its own empty socket, the ones queued on
    // the others would never be.
    let waiting: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { drop(session(p.addr).await) }))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiting.iter().all(|t| !t.is_finished()),
        "served beyond max_connections"
    );
    drop(first);
    for t in waiting {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("served one after another once the slot frees")
            .expect("join");
    }
    assert_eq!(
        metric(http_addr, "trackwire_proxy_listeners_listening").await,
        Some(1.0),
        "one listener, whatever the workers"
    );
    assert_eq!(
        metric(http_addr, "trackwire_proxy_fail_static").await,
        Some(1.0)
    );
    assert!(
        metric(http_addr, "trackwire_proxy_map_age_seconds")
            .await
            .is_some_and(|age| age >= 0.0),
        "the cached map's age"
    );
    assert_eq!(
        metric(http_addr, "trackwire_proxy_connections_total").await,
        Some(9.0)
    );
    p.shutdown.cancel();
    p.task.await.expect("join").expect("clean stop");
}

#[test]
fn too_many_workers_is_a_config_error_naming_the_flag() {
    let config = Config {
        control_plane: vec!["http://127.0.0.1:1".into()],
        listeners: vec![ListenerSpec::new(
            "web",
            "127.0.0.1:0".parse().expect("addr"),
            "web",
        )],
        state_dir: None,
        proxy_id: "t".into(),
        drain_grace: Duration::from_secs(1),
        tls: None,
        workers: MAX_WORKERS + 1,
    };
    let e = config.validate().expect_err("too many").to_string();
    assert!(e.contains("--workers"), "{e}");
    assert!(
        Config {
            workers: 0,
            ..config
        }
        .worker_threads()
            >= 1
    );
}
