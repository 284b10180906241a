//! A scriptable HTTP/1.1 test server on raw sockets, so tests control exactly
//! what goes on the wire. Paths:
//!
//! - `/status/NNN`: status NNN, body `status NNN`
//! - `/flip`: the status set by [`TestHttp::set_flip`] (200 at start)
//! - `/body`: 200, body `hello trackwire world`
//! - `/slow`: answers after 5 s
//! - `/big`: 200 with a 100 MiB body; [`TestHttp::big_bytes_sent`] counts what
//!   the server managed to write before the client went away
//! - anything else: 200, body `ok`
//!
//! A query string is ignored for routing. Every request's path (with its
//! query) and arrival time is recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

pub const BIG_BODY: u64 = 100 * 1024 * 1024;

#[derive(Clone, Default)]
pub struct TestHttp {
    pub addr: Option<SocketAddr>,
    big_sent: Arc<AtomicU64>,
    /// Status answered on `/flip` (0 means 200).
    flip: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl TestHttp {
    /// Serves plain HTTP on a new loopback port.
    pub async fn start() -> TestHttp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let s = TestHttp {
            addr: Some(listener.local_addr().expect("addr")),
            ..TestHttp::default()
        };
        let server = s.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.serve_plain(sock).await });
            }
        });
        s
    }

    pub fn address(&self) -> String {
        self.addr.expect("started").to_string()
    }

    /// Sets the status `/flip` answers with.
    pub fn set_flip(&self, status: u16) {
        self.flip.store(u64::from(status), Ordering::SeqCst);
    }

    pub fn big_bytes_sent(&self) -> u64 {
        self.big_sent.load(Ordering::SeqCst)
    }

    /// (path, arrival) of every request so far.
    pub fn requests(&self) -> Vec<(String, Instant)> {
        self.requests.lock().clone()
    }

    async fn serve_plain(&self, sock: TcpStream) {
        let _ = sock.set_nodelay(true);
        self.serve(sock).await;
    }

    /// Serves one HTTP/1.1 request on a plain or TLS connection.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut sock: S) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        self.requests.lock().push((path.clone(), Instant::now()));
        let respond = |status: u16, body: &str| {
            format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        // The query string only tells requests apart; it does not change the answer.
        let route = path.split('?').next().unwrap_or("/");
        if let Some(code) = route.strip_prefix("/status/") {
            let code: u16 = code.parse().unwrap_or(500);
            let _ = sock
                .write_all(respond(code, &format!("status {code}")).as_bytes())
                .await;
        } else if route == "/flip" {
            let code = match self.flip.load(Ordering::SeqCst) {
                0 => 200,
                c => c as u16,
            };
            let _ = sock.write_all(respond(code, "flip").as_bytes()).await;
        } else if route == "/body" {
            let _ = sock
                .write_all(respond(200, "hello trackwire world").as_bytes())
                .await;
        } else if route == "/slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let _ = sock.write_all(respond(200, "slow").as_bytes()).await;
        } else if route == "/big" {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG_BODY}\r\n\r\n");
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let block = vec![b'x'; 64 * 1024];
            let mut sent = 0u64;
            while sent < BIG_BODY {
                match sock.write(&block).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sent += n as u64;
                        self.big_sent.fetch_add(n as u64, Ordering::SeqCst);
                    }
                }
            }
        } else {
            let _ = sock.write_all(respond(200, "ok").as_bytes()).await;
        }
        let _ = sock.shutdown().await;
    }
}

/// A server that resets every connection after half a status line
/// (SO_LINGER 0, so the peer sees RST, not FIN).
pub async fn start_resetting() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut chunk = [0u8; 1024];
                let _ = sock.read(&mut chunk).await;
                let _ = sock.write_all(b"HTTP/1.1 2").await;
                #[allow(deprecated)]
                let _ = sock.set_linger(Some(Duration::ZERO));
                drop(sock);
            });
        }
    });
    addr
}
