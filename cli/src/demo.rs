//! Demo HTTP backends for `trackwire dev` (and the end-to-end tests).
//!
//! Each answers `GET /readyz` with 200 or 503, flipped by `POST /toggle`,
//! `POST /down` and `POST /up`, and answers every other request with
//! `hello from NAME`, so a user sees which backend a connection reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Clone)]
pub struct DemoBackend {
    pub name: String,
    pub addr: SocketAddr,
    ready: Arc<AtomicBool>,
}

impl DemoBackend {
    /// Serves on `listener` until `shutdown`.
    pub fn spawn(
        name: &str,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let backend = DemoBackend {
            name: name.to_string(),
            addr,
            ready: Arc::new(AtomicBool::new(true)),
        };
        let app = Router::new()
            .route("/readyz", get(readyz))
            .route("/toggle", post(toggle))
            .route("/down", post(down))
            .route("/up", post(up))
            .fallback(hello)
            .with_state(backend.clone());
        tokio::spawn(
            async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await;
            }
            .instrument(tracing::info_span!("demo_backend", name = %backend.name)),
        );
        Ok(backend)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

fn state_line(b: &DemoBackend) -> String {
    format!(
        "{} /readyz now answers {}\n",
        b.name,
        if b.is_ready() { 200 } else { 503 }
    )
}

async fn readyz(State(b): State<DemoBackend>) -> (StatusCode, &'static str) {
    if b.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn toggle(State(b): State<DemoBackend>) -> String {
    b.set_ready(!b.is_ready());
    state_line(&b)
}

async fn down(State(b): State<DemoBackend>) -> String {
    b.set_ready(false);
    state_line(&b)
}

async fn up(State(b): State<DemoBackend>) -> String {
    b.set_ready(true);
    state_line(&b)
}

async fn hello(State(b): State<DemoBackend>) -> String {
    format!("hello from {}\n", b.name)
}
