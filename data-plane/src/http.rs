//! The data plane's HTTP port: `/healthz`, `/readyz`, `/metrics`.
//!
//! `/readyz` answers 200 once a health map is held (from the control plane
//! or the cache) and it has every listener's pool; otherwise 503 with a
//! body saying why (no map yet, or which pools are missing). Stale pools
//! (kept from a previous store epoch) are listed in the body either way;
//! see [`crate::status`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::status::View;
use trackwire_transport::Tls;

#[derive(Clone)]
struct Ctx {
    view: View,
    metrics: Arc<Metrics>,
    tls: Option<Tls>,
}

pub fn router(view: View, metrics: Arc<Metrics>, tls: Option<Tls>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Ctx { view, metrics, tls })
}

async fn readyz(State(ctx): State<Ctx>) -> impl IntoResponse {
    let r = ctx.view.readiness();
    let code = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, r.body())
}

async fn metrics_text(State(ctx): State<Ctx>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut body = ctx.metrics.render();
        if let Some(tls) = &ctx.tls {
            tls.render_metrics(&mut body);
        }
        body
    })
}
