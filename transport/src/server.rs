//! The gRPC port's accept loop: a cap on open connections, a cap on
//! connections still in their handshake, a deadline for the TLS handshake
//! and one for the HTTP/2 preface. Each connection is established on a task
//! of its own, so a silent peer holds one pending slot for at most the
//! deadlines and never delays anyone else's handshake; when the pending
//! slots are all taken (or file descriptors run out) the oldest pending
//! connection is dropped to make room (see [`crate::slots`]). Established
//! connections reach tonic through [`incoming`] carrying a [`Peer`] (address
//! and verified identity) as their connect info.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::slots::{Slots, out_of_fds};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};
use trackwire_core::limits::ServerLimits;

use crate::identity::Identity;
use crate::material::Tls;

/// The client preface every HTTP/2 connection starts with (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The verified identity; `None` on a plaintext port or for a TLS client
    /// that presented no certificate (allowed only with a bearer token).
    pub identity: Option<Identity>,
}

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    /// Connections dropped before they were established: TLS handshake
    /// failed or timed out, or no HTTP/2 preface in time.
    pub handshake_failures: AtomicU64,
    pub preface_timeouts: AtomicU64,
    /// Pending connections dropped to make room for newer ones.
    pub evicted: AtomicU64,
}

/// At most one log line per interval, with the count of lines held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock();
        match s.0 {
            Some(t) if t.elapsed() < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(Instant::now()), 0);
                Some(suppressed)
            }
        }
    }
}

/// An established connection: plaintext or TLS, with the preface bytes
/// already read put back in front.
pub struct Conn {
    io: Io,
    preface: [u8; 24],
    replayed: usize,
    peer: Peer,
    stats: Arc<ListenerStats>,
    _permit: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Relaxed);
    }
}

impl Conn {
    pub fn peer(&self) -> &Peer {
        &self.peer
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.replayed < this.preface.len() {
            let rest = &this.preface[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts on `listener` until `shutdown`; yields established connections.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Tls>,
    limits: ServerLimits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(
        accept_loop(listener, tls, limits, stats, tx, shutdown)
            .instrument(tracing::info_span!("grpc_accept")),
    );
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Tls>,
    limits: ServerLimits,
    stats: Arc<ListenerStats>,
    tx: mpsc::Sender<io::Result<Conn>>,
    shutdown: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let pending = Slots::new();
    let failures = Arc::new(LogLimiter::new(Duration::from_secs(1)));
    let accept_errors = LogLimiter::new(Duration::from_secs(1));
    loop {
        // At the connection cap, stop accepting: new peers wait in the
        // kernel's backlog instead of being accepted and starved.
        let permit = tokio::select! {
            p = Arc::clone(&open).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = shutdown.cancelled() => return,
        };
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors: drop the oldest connection still
                    // handshaking; otherwise back off instead of spinning.
                    let made_room = out_of_fds(&e) && pending.evict_oldest_idle();
                    if let Some(suppressed) = accept_errors.allow() {
                        warn!(error = %e, made_room, suppressed, "accept failed");
                    }
                    if !made_room {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        if pending.len() >= limits.max_pending_handshakes {
            pending.evict_oldest_idle();
        }
        let slot = pending.take();
        stats.accepted.fetch_add(1, Relaxed);
        let _ = tcp.set_nodelay(true);
        let (tls, stats, tx, failures) = (
            tls.clone(),
            Arc::clone(&stats),
            tx.clone(),
            Arc::clone(&failures),
        );
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                r = establish(tcp, tls.as_ref(), &limits) => r,
                () = slot.evicted.cancelled() => Err(Failure::Evicted),
            };
            drop(slot);
            match result {
                Ok((io, preface, identity)) => {
                    stats.active.fetch_add(1, Relaxed);
                    let conn = Conn {
                        io,
                        preface,
                        replayed: 0,
                        peer: Peer { addr, identity },
                        stats,
                        _permit: permit,
                    };
                    let _ = tx.send(Ok(conn)).await;
                }
                Err(Failure::Handshake(reason)) => {
                    stats.handshake_failures.fetch_add(1, Relaxed);
                    if let Some(t) = &tls {
                        t.stats().handshake_failures.fetch_add(1, Relaxed);
                    }
                    if let Some(suppressed) = failures.allow() {
                        warn!(peer = %addr, %reason, suppressed, elapsed_ms = started.elapsed().as_millis() as u64, "TLS handshake failed");
                    }
                }
                Err(Failure::Preface(reason)) => {
                    stats.preface_timeouts.fetch_add(1, Relaxed);
                    debug!(peer = %addr, %reason, "connection dropped before HTTP/2 started");
                }
                Err(Failure::Evicted) => {
                    stats.evicted.fetch_add(1, Relaxed);
                    debug!(peer = %addr, "pending connection dropped to make room for a new one");
                }
            }
        }.in_current_span());
    }
}

enum Failure {
    Handshake(String),
    Preface(String),
    Evicted,
}

async fn establish(
    tcp: TcpStream,
    tls: Option<&Tls>,
    limits: &ServerLimits,
) -> Result<(Io, [u8; 24], Option<Identity>), Failure> {
    let (mut io, identity) = match tls {
        None => (Io::Plain(tcp), None),
        Some(tls) => {
            // One snapshot of the material: the config and the trust domain
            // the identity is read against come from the same load.
            let material = tls.current();
            let config = material.server.clone().ok_or_else(|| {
                Failure::Handshake("TLS material was loaded for a client, not a server".into())
            })?;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let stream = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp))
                .await
                .map_err(|_| {
                    Failure::Handshake(format!(
                        "no completed handshake within {:?}",
                        limits.handshake_timeout
                    ))
                })?
                .map_err(|e| Failure::Handshake(e.to_string()))?;
            let (_, session) = stream.get_ref();
            // The verifier already checked the identity; read it back.
            let identity = session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|der| Identity::from_cert(der, &material.identity.trust_domain))
                .transpose()
                .map_err(|e| Failure::Handshake(e.to_string()))?;
            (Io::Tls(Box::new(stream)), identity)
        }
    };
    let mut preface = [0u8; 24];
    let read = async {
        match &mut io {
            Io::Plain(s) => s.read_exact(&mut preface).await,
            Io::Tls(s) => s.read_exact(&mut preface).await,
        }
    };
    match tokio::time::timeout(limits.preface_timeout, read).await {
        Err(_) => {
            return Err(Failure::Preface(format!(
                "no HTTP/2 preface within {:?}",
                limits.preface_timeout
            )));
        }
        Ok(Err(e)) => return Err(Failure::Preface(e.to_string())),
        Ok(Ok(_)) => {}
    }
    if &preface != H2_PREFACE {
        return Err(Failure::Preface("not HTTP/2 (no preface)".into()));
    }
    Ok((io, preface, identity))
}
