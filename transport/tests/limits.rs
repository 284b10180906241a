//! The ports' limits on real sockets: a flood of idle or silent
//! connections cannot keep a new client out.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use trackwire_core::limits::{HttpLimits, ServerLimits};
use trackwire_transport::ListenerStats;

/// Reads until EOF or error; true when the peer closed within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn get_healthz(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

#[tokio::test]
async fn a_full_http_port_makes_room_for_a_probe_and_slowloris_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let limits = HttpLimits {
        max_connections: 8,
        header_read_timeout: Duration::from_millis(800),
    };
    tokio::spawn(trackwire_transport::http::serve(
        listener,
        router,
        limits,
        shutdown.clone(),
    ));
    // Fill the port: half a request line each, then nothing.
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /hea").await.expect("write");
        idle.push(s);
    }
    // A probe still gets its answer at once.
    let t0 = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(2), get_healthz(addr))
        .await
        .expect("the probe was kept waiting");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // The oldest idle connection made room for it.
    assert!(closed_within(&mut idle[0], Duration::from_millis(300)).await);
    // And the rest are closed by the header deadline.
    for s in idle.iter_mut().skip(1) {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "slowloris held on"
        );
    }
    shutdown.cancel();
}

#[tokio::test]
async fn silent_grpc_connections_time_out_and_make_room() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let stats = std::sync::Arc::new(ListenerStats::default());
    let limits = ServerLimits {
        max_pending_handshakes: 4,
        preface_timeout: Duration::from_millis(600),
        ..ServerLimits::default()
    };
    let mut incoming = trackwire_transport::server::incoming(
        listener,
        None,
        limits,
        std::sync::Arc::clone(&stats),
        shutdown.clone(),
    );
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // A fifth arrives while all pending slots are taken: the oldest goes,
    // and the newcomer, which speaks HTTP/2, is established at once.
    let mut good = TcpStream::connect(addr).await.expect("connect");
    good.write_all(trackwire_transport::server::H2_PREFACE)
        .await
        .expect("preface");
    let conn = tokio::time::timeout(Duration::from_millis(300), incoming.next())
        .await
        .expect("established without waiting")
        .expect("a connection")
        .expect("ok");
    assert_eq!(
        conn.peer().addr,
        good.local_addr().expect("addr"),
        "the HTTP/2 client is the one established"
    );
    assert!(closed_within(&mut silent[0], Duration::from_millis(300)).await);
    for s in silent.iter_mut().skip(1) {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "no preface deadline"
        );
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.evicted.load(Relaxed), 1);
    assert_eq!(stats.preface_timeouts.load(Relaxed), 3);
    shutdown.cancel();
}
