//! Demo HTTP backends for `trackwire dev` (and the end-to-end tests).
//!
//! Each answers `GET /readyz` with 200 or 503, flipped by `POST /toggle`,
//! `POST /down` and `POST /up`, `GET /healthz` with 200, and every other
//! request with `hello from NAME`, so a user sees which backend a
//! connection reached. `trackwire demo-backend` runs one on its own (the
//! compose file's backends).

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
            // The process is alive (a container HEALTHCHECK), whatever /readyz says.
            .route("/healthz", get(|| async { "ok\n" }))
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

/// `trackwire demo-backend`: one demo backend until SIGINT/SIGTERM (the
/// compose file's backends).
pub async fn serve(args: crate::args::DemoBackendArgs) -> anyhow::Result<()> {
    let listener = crate::run::bind(args.bind, "--bind").await?;
    let token = CancellationToken::new();
    crate::run::cancel_on_signal(&token);
    let b = DemoBackend::spawn(&args.name, listener, token.clone())?;
    tracing::info!(name = %b.name, addr = %b.addr, "demo backend serving");
    token.cancelled().await;
    Ok(())
}

/// `trackwire healthcheck`: GET /healthz on the local process's HTTP port.
pub async fn healthcheck(args: crate::args::HealthcheckArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = args.http_bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let check = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = Vec::new();
        s.take(64).read_to_end(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(args.timeout, check)
        .await
        .with_context(|| format!("http://{addr}/healthz: no answer within {:?}", args.timeout))?
        .with_context(|| format!("http://{addr}/healthz"))?;
    let line = String::from_utf8_lossy(&head);
    let status = line.split(' ').nth(1).unwrap_or_default();
    anyhow::ensure!(
        status == "200",
        "http://{addr}/healthz answered {:?}",
        line.lines().next().unwrap_or_default()
    );
    Ok(())
}
