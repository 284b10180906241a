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

use crate::status::View;
use trackwire_core::metrics::Registry;

#[derive(Clone)]
struct Ctx {
    view: View,
    registry: Arc<Registry>,
}

/// `registry`: the component's (see [`crate::metrics::Metrics::register`]).
pub fn router(view: View, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Ctx { view, registry })
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

/// The registry, as OpenMetrics or classic text by `Accept`.
async fn metrics_text(State(ctx): State<Ctx>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = trackwire_core::metrics::scrape(&ctx.registry, accept);
    ([(header::CONTENT_TYPE, content_type)], body)
}
