//! Serving an HTTP port (status page, `/metrics`, `/healthz`) so that slow
//! and idle clients cannot starve the health probes:
//!
//! - each request's headers must arrive within `header_read_timeout`, which
//!   is also the idle timeout between requests (slowloris);
//! - at the connection cap, or out of file descriptors, the oldest
//!   connection with no request in progress is closed to make room (see
//!   [`crate::slots`]), so a new probe is accepted at once rather than
//!   queued behind idle connections;
//! - graceful shutdown lets requests in progress finish (5 s at most).
//!
//! A connection is busy from a request's arrival until its response body
//! has been sent (a server-sent-events stream stays busy), so only idle
//! connections are ever taken back.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{Instrument, debug, warn};
use trackwire_core::limits::HttpLimits;

use crate::server::LogLimiter;
use crate::slots::{Slots, out_of_fds};

/// Serves `router` on `listener` until `shutdown`; open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Slots::new();
    let logs = LogLimiter::new(Duration::from_secs(1));
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    let made_room = out_of_fds(&e) && slots.evict_oldest_idle();
                    if let Some(suppressed) = logs.allow() {
                        warn!(error = %e, made_room, suppressed, "HTTP accept failed");
                    }
                    if !made_room {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        if slots.len() >= limits.max_connections && !slots.evict_oldest_idle() {
            // Every connection is busy with a request: refuse this one.
            debug!(peer = %addr, "HTTP port full; connection refused");
            continue;
        }
        let slot = slots.take();
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        conns.spawn(
            async move {
                let busy = std::sync::Arc::clone(&slot.busy);
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (router, busy) = (router.clone(), std::sync::Arc::clone(&busy));
                        busy.fetch_add(1, Relaxed);
                        let guard = Busy(busy);
                        async move {
                            let r = router.oneshot(req.map(axum::body::Body::new)).await;
                            // Busy until the body is sent (or dropped).
                            r.map(|resp| {
                                resp.map(|body| {
                                    axum::body::Body::new(Guarded {
                                        body,
                                        _guard: guard,
                                    })
                                })
                            })
                        }
                    });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tcp), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            debug!(peer = %addr, error = %e, "HTTP connection ended");
                        }
                    }
                    () = slot.evicted.cancelled() => {
                        debug!(peer = %addr, "idle HTTP connection closed to make room");
                    }
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
                drop(slot);
            }
            .in_current_span(),
        );
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
    Ok(())
}

/// Counts a request in progress until dropped.
struct Busy(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its connection busy while it is sent.
struct Guarded {
    body: axum::body::Body,
    _guard: Busy,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
