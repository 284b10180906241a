//! The data plane's HTTP port: `/healthz`, `/readyz` (a health map is held,
//! from the control plane or the cache), `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;
use trackwire_core::HealthMap;

use crate::metrics::Metrics;

#[derive(Clone)]
struct Ctx {
    map: watch::Receiver<Arc<HealthMap>>,
    metrics: Arc<Metrics>,
}

pub fn router(map: watch::Receiver<Arc<HealthMap>>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Ctx { map, metrics })
}

async fn readyz(State(ctx): State<Ctx>) -> impl IntoResponse {
    if ctx.map.borrow().received() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no health map yet\n")
    }
}

async fn metrics_text(State(ctx): State<Ctx>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
}
